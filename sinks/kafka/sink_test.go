package kafka_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/sinks/kafka"
	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("TXSINK_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) { w.t.Logf("%s", p); return len(p), nil }

func newSink(t testing.TB, addr string, mod ...func(*kafka.Config)) *kafka.Sink {
	t.Helper()
	cfg := kafka.DefaultConfig()
	cfg.Name = "events"
	cfg.Brokers = []string{addr}
	cfg.DefaultTopic = "events"
	cfg.Topics = []string{"*"}
	cfg.TransactionTimeout = time.Minute
	cfg.Logger = testLogger(t)
	for _, m := range mod {
		m(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := kafka.New(ctx, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

func bid(writer string, seq uint64, slot int) twopc.BranchID {
	return twopc.BranchID{Job: "job", Writer: writer, Sink: "events", Epoch: 1, Seq: seq, Slot: slot}
}

// records makes n validated records with values "<prefix>-<i>".
func records(t testing.TB, s *kafka.Sink, topic, prefix string, n int) []*twopc.Record {
	t.Helper()
	rs := make([]*twopc.Record, n)
	for i := range rs {
		v, _ := json.Marshal(fmt.Sprintf("%s-%d", prefix, i))
		rs[i] = &twopc.Record{Sink: "events", Topic: topic, Value: v}
		if err := s.Validate(rs[i]); err != nil {
			t.Fatalf("Validate: %v", err)
		}
	}
	return rs
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// prepared begins a branch, writes n records and prepares it.
func prepared(t testing.TB, s *kafka.Sink, id twopc.BranchID, topic, prefix string, n int) (twopc.Branch, twopc.Handle) {
	t.Helper()
	ctx := ctxT(t)
	b, err := s.Begin(ctx, id)
	if err != nil {
		t.Fatalf("Begin %v: %v", id, err)
	}
	if err := b.Write(ctx, records(t, s, topic, prefix, n)); err != nil {
		t.Fatalf("Write %v: %v", id, err)
	}
	h, err := b.Prepare(ctx)
	if err != nil {
		t.Fatalf("Prepare %v: %v", id, err)
	}
	return b, h
}

// values reads topic read_committed and returns the values as strings.
func values(t testing.TB, addr, topic string, want int) []string {
	t.Helper()
	var out []string
	for _, r := range kafkatest.ReadCommitted(ctxT(t), t, addr, topic, want) {
		out = append(out, string(r.Value))
	}
	return out
}

// expectExactly checks got holds each of want exactly once and nothing else.
func expectExactly(t testing.TB, got []string, want []string) {
	t.Helper()
	g, w := slices.Clone(got), slices.Clone(want)
	slices.Sort(g)
	slices.Sort(w)
	if !slices.Equal(g, w) {
		t.Fatalf("read committed: got %d records %v, want %d records %v", len(g), g, len(w), w)
	}
}

func names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return out
}

func TestCommitIsAtomicAndAbortInvisible(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(3, "events"))
	addr := kafkatest.Addr(c)
	s := newSink(t, addr)
	ctx := ctxT(t)

	b, _ := prepared(t, s, bid("w0", 1, 0), "", "a", 30)
	if got := values(t, addr, "events", 0); len(got) != 0 {
		t.Fatalf("before commit: got %d records, want 0", len(got))
	}
	ab, _ := prepared(t, s, bid("w0", 2, 1), "", "x", 10)
	if err := ab.Abort(ctx); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatalf("second Commit: %v", err)
	}
	// An open (never prepared) branch that is aborted is invisible too.
	ob, err := s.Begin(ctx, bid("w0", 3, 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.Write(ctx, records(t, s, "", "y", 5)); err != nil {
		t.Fatal(err)
	}
	if err := ob.Abort(ctx); err != nil {
		t.Fatalf("Abort open: %v", err)
	}
	expectExactly(t, values(t, addr, "events", 30), names("a", 30))
}

func TestTwoWritersMaxInflightPrepared(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(2, "events"))
	addr := kafkatest.Addr(c)
	s := newSink(t, addr)
	ctx := ctxT(t)

	type prep struct {
		b twopc.Branch
		h twopc.Handle
	}
	var (
		mu    sync.Mutex
		preps []prep
		want  []string
		wg    sync.WaitGroup
	)
	for _, w := range []string{"w0", "w1"} {
		for slot := range s.MaxInflight() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				prefix := fmt.Sprintf("%s.%d", w, slot)
				b, h := prepared(t, s, bid(w, uint64(slot+1), slot), "events", prefix, 25)
				mu.Lock()
				preps = append(preps, prep{b, h})
				want = append(want, names(prefix, 25)...)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// Every handle names a distinct transactional id.
	seen := map[string]bool{}
	for _, p := range preps {
		th, err := kafka.ParseHandle(p.h)
		if err != nil {
			t.Fatal(err)
		}
		if seen[th.TransactionalID] {
			t.Fatalf("transactional id %s used twice", th.TransactionalID)
		}
		seen[th.TransactionalID] = true
	}
	if got := values(t, addr, "events", 0); len(got) != 0 {
		t.Fatalf("before commit: got %d records, want 0", len(got))
	}
	// A writer's fifth branch has no free slot.
	if _, err := s.Begin(ctx, bid("w0", 99, 0)); !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("Begin on a held slot: got %v, want ErrSinkFailure", err)
	}
	for _, p := range preps {
		if err := p.b.Commit(ctx); err != nil {
			t.Fatalf("Commit: %v", err)
		}
	}
	expectExactly(t, values(t, addr, "events", len(want)), want)
}

func TestSlotReuseKeepsProducerID(t *testing.T) {
	c := kafkatest.NewCluster(t)
	addr := kafkatest.Addr(c)
	s := newSink(t, addr)
	ctx := ctxT(t)

	var want []string
	var first kafka.TxnHandle
	for i := range 5 {
		prefix := fmt.Sprintf("r%d", i)
		b, h := prepared(t, s, bid("w0", uint64(i+1), 0), "", prefix, 7)
		th, err := kafka.ParseHandle(h)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = th
		} else if th.ProducerID != first.ProducerID || th.Epoch != first.Epoch {
			t.Fatalf("branch %d: producer %d/%d, want the slot's %d/%d (no re-init on reuse)", i, th.ProducerID, th.Epoch, first.ProducerID, first.Epoch)
		}
		if i == 2 {
			if err := b.Abort(ctx); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := b.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		want = append(want, names(prefix, 7)...)
	}
	expectExactly(t, values(t, addr, "events", len(want)), want)
}

func TestEmptyBranch(t *testing.T) {
	c := kafkatest.NewCluster(t)
	s := newSink(t, kafkatest.Addr(c))
	ctx := ctxT(t)
	b, h := prepared(t, s, bid("w0", 1, 0), "", "none", 0)
	th, err := kafka.ParseHandle(h)
	if err != nil {
		t.Fatal(err)
	}
	if len(th.Partitions) != 0 || th.ProducerID != -1 {
		t.Fatalf("empty branch handle: got %+v, want no partitions and producer -1", th)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if err := s.Resolve(ctx, bid("w0", 1, 0), h, true); err != nil {
		t.Fatalf("Resolve: %v", err)
	}
}

// TestRecoveryFromFreshSink is the recovery path: the process that
// prepared is gone; another one fences the writer keeping the journaled
// branches, then commits one and aborts the other from their handles.
func TestRecoveryFromFreshSink(t *testing.T) {
	c := kafkatest.NewCluster(t)
	addr := kafkatest.Addr(c)
	ctx := ctxT(t)

	a := newSink(t, addr)
	commitID, abortID, openID := bid("w0", 1, 0), bid("w0", 2, 1), bid("w0", 3, 2)
	_, hc := prepared(t, a, commitID, "", "keep", 20)
	_, ha := prepared(t, a, abortID, "", "drop", 20)
	ob, err := a.Begin(ctx, openID)
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.Write(ctx, records(t, a, "", "open", 20)); err != nil {
		t.Fatal(err)
	}
	// Flush the open branch's records so the broker has an open txn, then
	// "crash": Close does not end transactions.
	if _, err := ob.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	a.Close()

	b := newSink(t, addr)
	if err := b.Fence(ctx, "job", "w0", []twopc.BranchID{commitID, abortID}); err != nil {
		t.Fatalf("Fence: %v", err)
	}
	if err := b.Resolve(ctx, commitID, hc, true); err != nil {
		t.Fatalf("Resolve commit: %v", err)
	}
	if err := b.Resolve(ctx, commitID, hc, true); err != nil {
		t.Fatalf("repeated Resolve commit: %v", err)
	}
	if err := b.Resolve(ctx, abortID, ha, false); err != nil {
		t.Fatalf("Resolve abort: %v", err)
	}
	if err := b.Resolve(ctx, abortID, ha, false); err != nil {
		t.Fatalf("repeated Resolve abort: %v", err)
	}
	// A third process repeating the commit is harmless too.
	c3 := newSink(t, addr)
	if err := c3.Resolve(ctx, commitID, hc, true); err != nil {
		t.Fatalf("Resolve commit from a third sink: %v", err)
	}
	expectExactly(t, values(t, addr, "events", 20), names("keep", 20))

	// The fenced and resolved slots are usable again.
	var want []string
	want = append(want, names("keep", 20)...)
	for slot := range 3 {
		prefix := fmt.Sprintf("after%d", slot)
		nb, _ := prepared(t, b, bid("w0", uint64(10+slot), slot), "", prefix, 5)
		if err := nb.Commit(ctx); err != nil {
			t.Fatalf("Commit after recovery on slot %d: %v", slot, err)
		}
		want = append(want, names(prefix, 5)...)
	}
	expectExactly(t, values(t, addr, "events", len(want)), want)
}

func TestFenceAbortsOpenKeepsPrepared(t *testing.T) {
	c := kafkatest.NewCluster(t)
	addr := kafkatest.Addr(c)
	ctx := ctxT(t)
	s := newSink(t, addr)

	// Slot 0: open, never prepared, records flushed to the broker through
	// another sink instance (a dead session). Slot 1: prepared and kept.
	dead := newSink(t, addr)
	ob, err := dead.Begin(ctx, bid("w0", 1, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.Write(ctx, records(t, dead, "", "open", 10)); err != nil {
		t.Fatal(err)
	}
	kept, hk := prepared(t, s, bid("w0", 2, 1), "", "kept", 10)

	adm := kadm.NewClient(mustClient(t, addr))
	waitState(t, adm, kafka.TransactionalID("txsink", "job", "w0", 0), "Ongoing")

	if err := s.Fence(ctx, "job", "w0", []twopc.BranchID{bid("w0", 2, 1)}); err != nil {
		t.Fatalf("Fence: %v", err)
	}
	if st := txnState(t, adm, kafka.TransactionalID("txsink", "job", "w0", 0)); st == "Ongoing" {
		t.Fatalf("slot 0 after fence: got state %s, want not Ongoing", st)
	}
	if st := txnState(t, adm, kafka.TransactionalID("txsink", "job", "w0", 1)); st != "Ongoing" {
		t.Fatalf("kept slot 1 after fence: got state %s, want Ongoing", st)
	}
	// The kept branch commits on its own client (fence never touched it).
	if err := kept.Commit(ctx); err != nil {
		t.Fatalf("Commit of kept branch: %v", err)
	}
	if err := s.Resolve(ctx, bid("w0", 2, 1), hk, true); err != nil {
		t.Fatalf("Resolve after Commit: %v", err)
	}
	// The dead session's branch can no longer commit (its prepare may
	// still succeed: only the broker knows it was fenced).
	if _, err := ob.Prepare(ctx); err == nil {
		if err := ob.Commit(ctx); err == nil {
			t.Fatal("Commit of a fenced branch: got nil error")
		}
	}
	expectExactly(t, values(t, addr, "events", 10), names("kept", 10))
}

func mustClient(t testing.TB, addr string) *kgo.Client {
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

func txnState(t testing.TB, adm *kadm.Client, txnID string) string {
	t.Helper()
	d, err := adm.DescribeTransactions(ctxT(t), txnID)
	if err != nil {
		t.Fatalf("DescribeTransactions: %v", err)
	}
	for _, tx := range d {
		if tx.TxnID == txnID {
			return tx.State
		}
	}
	return ""
}

// waitState polls until txnID is in state want.
func waitState(t testing.TB, adm *kadm.Client, txnID, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := txnState(t, adm, txnID)
		if st == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: got state %q, want %q", txnID, st, want)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not a wait for an event
	}
}

func TestDataLossWhenBrokerTimedOut(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.BrokerConfigs(map[string]string{"transaction.max.timeout.ms": "1000"}))
	addr := kafkatest.Addr(c)
	ctx := ctxT(t)
	s := newSink(t, addr, func(c *kafka.Config) { c.TransactionTimeout = 0 })
	if got := s.TransactionTimeout(); got != time.Second {
		t.Fatalf("TransactionTimeout: got %v, want the broker's 1s", got)
	}
	id := bid("w0", 1, 0)
	b, h := prepared(t, s, id, "", "lost", 5)

	adm := kadm.NewClient(mustClient(t, addr))
	deadline := time.Now().Add(10 * time.Second)
	for txnState(t, adm, kafka.TransactionalID("txsink", "job", "w0", 0)) == "Ongoing" {
		if time.Now().After(deadline) {
			t.Fatal("the broker did not time the transaction out")
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
	other := newSink(t, addr)
	if err := other.Resolve(ctx, id, h, true); !errors.Is(err, twopc.ErrDataLoss) {
		t.Fatalf("Resolve commit after timeout: got %v, want ErrDataLoss", err)
	}
	if err := b.Commit(ctx); !errors.Is(err, twopc.ErrDataLoss) {
		t.Fatalf("Commit after timeout: got %v, want ErrDataLoss", err)
	}
	// Aborting what the broker aborted is fine.
	if err := other.Resolve(ctx, id, h, false); err != nil {
		t.Fatalf("Resolve abort after timeout: %v", err)
	}
	if got := values(t, addr, "events", 0); len(got) != 0 {
		t.Fatalf("got %d records, want 0", len(got))
	}
}

func TestRoundTrip(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(3, "events", "other"))
	addr := kafkatest.Addr(c)
	ctx := ctxT(t)
	s := newSink(t, addr, func(c *kafka.Config) { c.Topics = []string{"other"} })

	p2 := int32(2)
	in := []*twopc.Record{
		{Key: json.RawMessage(`"k\u00e9\n"`), Value: json.RawMessage(`{"a": [1, 2]}`), Headers: map[string]string{"h1": "v1", "h2": ""}, Partition: &p2},
		{Topic: "other", KeyB64: []byte{0, 1, 2}, ValueB64: []byte{0xff, 0}},
		{Key: json.RawMessage(`"plain"`), Value: json.RawMessage(`null`)},
		{Value: json.RawMessage(`42`), Partition: &p2},
	}
	for _, r := range in {
		if err := s.Validate(r); err != nil {
			t.Fatalf("Validate: %v", err)
		}
	}
	if err := twopctest.CommitBranch(ctx, s, bid("w0", 1, 0), in); err != nil {
		t.Fatal(err)
	}
	got := kafkatest.ReadCommitted(ctx, t, addr, "events", 3)
	if len(got) != 3 {
		t.Fatalf("events: got %d records, want 3", len(got))
	}
	slices.SortFunc(got, func(x, y *kgo.Record) int { return len(y.Value) - len(x.Value) })
	r0 := got[0]
	if string(r0.Key) != "ké\n" || string(r0.Value) != `{"a": [1, 2]}` || r0.Partition != 2 {
		t.Fatalf("record 0: got key %q value %q partition %d, want %q %q 2", r0.Key, r0.Value, r0.Partition, "ké\n", `{"a": [1, 2]}`)
	}
	hs := map[string]string{}
	for _, h := range r0.Headers {
		hs[h.Key] = string(h.Value)
	}
	if len(hs) != 2 || hs["h1"] != "v1" || hs["h2"] != "" {
		t.Fatalf("headers: got %v, want h1=v1 h2=", hs)
	}
	if string(got[1].Value) != "42" || got[1].Key != nil || got[1].Partition != 2 {
		t.Fatalf("record 3: got key %q value %q partition %d, want no key, 42, partition 2", got[1].Key, got[1].Value, got[1].Partition)
	}
	if string(got[2].Key) != "plain" || got[2].Value != nil {
		t.Fatalf("record 2: got key %q value %q, want plain and a nil value (tombstone)", got[2].Key, got[2].Value)
	}
	o := kafkatest.ReadCommitted(ctx, t, addr, "other", 1)
	if len(o) != 1 || string(o[0].Key) != "\x00\x01\x02" || string(o[0].Value) != "\xff\x00" {
		t.Fatalf("other: got %v, want one record with raw key and value", o)
	}
}

func TestPartitionOutOfRangeFailsPrepare(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(2, "events"))
	s := newSink(t, kafkatest.Addr(c))
	ctx := ctxT(t)
	p := int32(7)
	r := &twopc.Record{Value: json.RawMessage(`"v"`), Partition: &p}
	// Validate knows the topic's partitions and refuses it (400) ...
	if err := s.Validate(r); !errors.Is(err, twopc.ErrInvalid) || !strings.Contains(err.Error(), "no partition 7") {
		t.Fatalf("Validate: got %v, want ErrInvalid naming partition 7", err)
	}
	// ... and a record that gets past it (a stale cache: the topic was
	// recreated with fewer partitions) still fails the prepare.
	r = &twopc.Record{Topic: "events", ValueB64: []byte("v"), Partition: &p}
	b, err := s.Begin(ctx, bid("w0", 1, 0))
	if err != nil {
		t.Fatal(err)
	}
	_ = b.Write(ctx, []*twopc.Record{r})
	_, err = b.Prepare(ctx)
	if !errors.Is(err, twopc.ErrSinkFailure) || !strings.Contains(err.Error(), "partitioning") {
		t.Fatalf("Prepare: got %v, want ErrSinkFailure about the partition", err)
	}
	if err := b.Abort(ctx); err != nil {
		t.Fatalf("Abort: %v", err)
	}
}

func TestNewUnreachable(t *testing.T) {
	cfg := kafka.Config{Name: "events", Brokers: []string{"127.0.0.1:1"}, DefaultTopic: "events"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := kafka.New(ctx, cfg); !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("New: got %v, want ErrSinkFailure", err)
	}
}

// TestBrokerProcessKeepsPrepared prepares against a broker process, stops
// it gracefully, restarts it on the same data dir and address, and commits
// from a fresh sink.
func TestBrokerProcessKeepsPrepared(t *testing.T) {
	dir := t.TempDir()
	br := kafkatest.StartBrokerWith(t, dir, kafkatest.BrokerOptions{Topics: []string{"events"}})
	ctx := ctxT(t)
	a := newSink(t, br.Addr)
	id := bid("w0", 1, 0)
	_, h := prepared(t, a, id, "", "survivor", 15)
	a.Close()
	br.Stop()

	br2 := kafkatest.StartBrokerWith(t, dir, kafkatest.BrokerOptions{Addr: br.Addr})
	b := newSink(t, br2.Addr)
	if err := b.Fence(ctx, "job", "w0", []twopc.BranchID{id}); err != nil {
		t.Fatalf("Fence: %v", err)
	}
	if err := b.Resolve(ctx, id, h, true); err != nil {
		t.Fatalf("Resolve after broker restart: %v", err)
	}
	expectExactly(t, values(t, br2.Addr, "events", 15), names("survivor", 15))
}

// TestCreateTopics: with CreateTopics the sink creates a topic the broker
// does not auto-create, on its first record; without it the broker's
// refusal fails the branch.
func TestCreateTopics(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	addr := c.ListenAddrs()[0]

	s := newSink(t, addr, func(c *kafka.Config) { c.CreateTopics = true })
	b, _ := prepared(t, s, bid("0", 1, 0), "created-on-use", "v", 3)
	if err := b.Commit(ctxT(t)); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	expectExactly(t, values(t, addr, "created-on-use", 3), names("v", 3))

	plain := newSink(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pb, err := plain.Begin(ctx, bid("1", 1, 0))
	if err != nil {
		t.Fatal(err)
	}
	werr := pb.Write(ctx, records(t, plain, "never-created", "v", 1))
	if _, perr := pb.Prepare(ctx); werr == nil && perr == nil {
		t.Fatal("Write+Prepare to a topic the broker does not auto-create: got no error, want one")
	}
	_ = pb.Abort(context.Background())
}
