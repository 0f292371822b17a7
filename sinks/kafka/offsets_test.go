package kafka_test

import (
	"errors"
	"testing"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/sinks/kafka"
	"github.com/txsink/txsink/twopc"
)

// groupOffsets reads a group's committed offsets of topic (partition →
// offset; absent: none committed), as a consumer of the group would.
func groupOffsets(t testing.TB, addr, group, topic string) map[int32]int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	resp, err := kadm.NewClient(cl).FetchOffsets(ctxT(t), group)
	if errors.Is(err, kerr.GroupIDNotFound) {
		return map[int32]int64{} // nothing ever committed
	}
	if err != nil {
		t.Fatalf("FetchOffsets %s: %v", group, err)
	}
	out := map[int32]int64{}
	for p, o := range resp[topic] {
		if o.Err != nil {
			t.Fatalf("FetchOffsets %s %s/%d: %v", group, topic, p, o.Err)
		}
		out[p] = o.At
	}
	return out
}

func sameOffsets(t testing.TB, what string, got, want map[int32]int64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: group offsets %v, want %v", what, got, want)
	}
	for p, o := range want {
		if got[p] != o {
			t.Fatalf("%s: group offsets %v, want %v", what, got, want)
		}
	}
}

func offsets(group string, parts map[int32]int64) *twopc.Offsets {
	return &twopc.Offsets{Sink: "events", Group: group, Topics: map[string]map[int32]int64{"input": parts}}
}

// withOffsets begins a branch, writes n records (none when n is 0), adds
// o and prepares.
func withOffsets(t testing.TB, s *kafka.Sink, id twopc.BranchID, o *twopc.Offsets, prefix string, n int) (twopc.Branch, twopc.Handle) {
	t.Helper()
	ctx := ctxT(t)
	b, err := s.Begin(ctx, id)
	if err != nil {
		t.Fatalf("Begin %v: %v", id, err)
	}
	if n > 0 {
		if err := b.Write(ctx, records(t, s, "events", prefix, n)); err != nil {
			t.Fatalf("Write: %v", err)
		}
	}
	if err := s.ValidateOffsets(o); err != nil {
		t.Fatalf("ValidateOffsets: %v", err)
	}
	if err := b.(twopc.OffsetBranch).AddOffsets(ctx, o); err != nil {
		t.Fatalf("AddOffsets: %v", err)
	}
	h, err := b.Prepare(ctx)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	return b, h
}

func TestOffsetsCommitWithRecords(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(2, "events", "input"))
	addr := kafkatest.Addr(c)
	s := newSink(t, addr)
	ctx := ctxT(t)

	b, h := withOffsets(t, s, bid("w0", 1, 0), offsets("g1", map[int32]int64{0: 10, 1: 7}), "a", 20)
	th, err := kafka.ParseHandle(h)
	if err != nil {
		t.Fatal(err)
	}
	if th.Group != "g1" || len(th.Partitions) == 0 || th.ProducerID < 0 {
		t.Fatalf("handle %+v: want group g1, partitions and a producer id", th)
	}
	sameOffsets(t, "prepared", groupOffsets(t, addr, "g1", "input"), nil)
	if err := b.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	sameOffsets(t, "committed", groupOffsets(t, addr, "g1", "input"), map[int32]int64{0: 10, 1: 7})
	expectExactly(t, values(t, addr, "events", 20), names("a", 20))

	// The slot's client is reused by the next branch: offsets again.
	b2, _ := withOffsets(t, s, bid("w0", 2, 0), offsets("g1", map[int32]int64{0: 30}), "b", 5)
	if err := b2.Commit(ctx); err != nil {
		t.Fatalf("Commit 2: %v", err)
	}
	sameOffsets(t, "second commit", groupOffsets(t, addr, "g1", "input"), map[int32]int64{0: 30, 1: 7})
	expectExactly(t, values(t, addr, "events", 25), append(names("a", 20), names("b", 5)...))
}

func TestOffsetsOnlyBranch(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(2, "events", "input"))
	addr := kafkatest.Addr(c)
	s := newSink(t, addr)
	ctx := ctxT(t)

	b, h := withOffsets(t, s, bid("w0", 1, 0), offsets("g1", map[int32]int64{1: 42}), "", 0)
	th, err := kafka.ParseHandle(h)
	if err != nil {
		t.Fatal(err)
	}
	if th.Group != "g1" || len(th.Partitions) != 0 || th.ProducerID < 0 || th.Epoch < 0 {
		t.Fatalf("handle %+v: want group g1, no partitions, a producer id and epoch", th)
	}
	sameOffsets(t, "prepared", groupOffsets(t, addr, "g1", "input"), nil)
	if err := b.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	sameOffsets(t, "committed", groupOffsets(t, addr, "g1", "input"), map[int32]int64{1: 42})

	// The slot's client goes on working: records, then offsets only again
	// (an abandoned transaction on the slot would show up here as offsets
	// or records that move with the wrong commit).
	pb, _ := prepared(t, s, bid("w0", 2, 0), "events", "r", 3)
	if err := pb.Commit(ctx); err != nil {
		t.Fatalf("Commit records: %v", err)
	}
	b3, _ := withOffsets(t, s, bid("w0", 3, 0), offsets("g1", map[int32]int64{1: 50}), "", 0)
	if err := b3.Commit(ctx); err != nil {
		t.Fatalf("Commit 3: %v", err)
	}
	sameOffsets(t, "third", groupOffsets(t, addr, "g1", "input"), map[int32]int64{1: 50})
	expectExactly(t, values(t, addr, "events", 3), names("r", 3))
}

func TestOffsetsAbortLeavesGroupUnchanged(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(2, "events", "input"))
	addr := kafkatest.Addr(c)
	s := newSink(t, addr)
	ctx := ctxT(t)

	b, _ := withOffsets(t, s, bid("w0", 1, 0), offsets("g1", map[int32]int64{0: 5}), "a", 4)
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// Prepared with records, prepared offsets only, and open offsets only:
	// each aborted, none moves the group.
	pa, _ := withOffsets(t, s, bid("w0", 2, 0), offsets("g1", map[int32]int64{0: 99}), "x", 4)
	if err := pa.Abort(ctx); err != nil {
		t.Fatalf("Abort prepared: %v", err)
	}
	po, _ := withOffsets(t, s, bid("w0", 3, 1), offsets("g1", map[int32]int64{0: 98, 1: 3}), "", 0)
	if err := po.Abort(ctx); err != nil {
		t.Fatalf("Abort prepared offsets-only: %v", err)
	}
	ob, err := s.Begin(ctx, bid("w0", 4, 2))
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.(twopc.OffsetBranch).AddOffsets(ctx, offsets("g1", map[int32]int64{0: 97})); err != nil {
		t.Fatal(err)
	}
	if err := ob.Abort(ctx); err != nil {
		t.Fatalf("Abort open offsets-only: %v", err)
	}
	sameOffsets(t, "after aborts", groupOffsets(t, addr, "g1", "input"), map[int32]int64{0: 5})
	// The aborted slots take new branches whose commit carries only their
	// own offsets.
	for slot := range 3 {
		nb, _ := withOffsets(t, s, bid("w0", uint64(5+slot), slot), offsets("g1", map[int32]int64{1: int64(100 + slot)}), "", 0)
		if err := nb.Commit(ctx); err != nil {
			t.Fatalf("Commit on slot %d: %v", slot, err)
		}
	}
	sameOffsets(t, "after new commits", groupOffsets(t, addr, "g1", "input"), map[int32]int64{0: 5, 1: 102})
	expectExactly(t, values(t, addr, "events", 4), names("a", 4))
}

func TestOffsetsResolveFromHandle(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(2, "events", "input"))
	addr := kafkatest.Addr(c)
	ctx := ctxT(t)

	// One process prepares (with records, and offsets only) and dies
	// without ending; a fresh Sink resolves from the handles.
	s1 := newSink(t, addr)
	_, h1 := withOffsets(t, s1, bid("w0", 1, 0), offsets("g1", map[int32]int64{0: 11}), "a", 6)
	_, h2 := withOffsets(t, s1, bid("w1", 1, 0), offsets("g2", map[int32]int64{1: 22}), "", 0)
	_, h3 := withOffsets(t, s1, bid("w2", 1, 0), offsets("g3", map[int32]int64{0: 33}), "", 0)
	s1.Close()

	s2 := newSink(t, addr)
	if err := s2.Resolve(ctx, bid("w0", 1, 0), h1, true); err != nil {
		t.Fatalf("Resolve w0: %v", err)
	}
	if err := s2.Resolve(ctx, bid("w1", 1, 0), h2, true); err != nil {
		t.Fatalf("Resolve w1: %v", err)
	}
	if err := s2.Resolve(ctx, bid("w2", 1, 0), h3, false); err != nil {
		t.Fatalf("Resolve w2 (abort): %v", err)
	}
	// Repeats are success (another process, a lost answer).
	if err := s2.Resolve(ctx, bid("w1", 1, 0), h2, true); err != nil {
		t.Fatalf("Resolve w1 again: %v", err)
	}
	if err := s2.Resolve(ctx, bid("w2", 1, 0), h3, false); err != nil {
		t.Fatalf("Resolve w2 again: %v", err)
	}
	sameOffsets(t, "g1", groupOffsets(t, addr, "g1", "input"), map[int32]int64{0: 11})
	sameOffsets(t, "g2", groupOffsets(t, addr, "g2", "input"), map[int32]int64{1: 22})
	sameOffsets(t, "g3", groupOffsets(t, addr, "g3", "input"), nil)
	expectExactly(t, values(t, addr, "events", 6), names("a", 6))

	// Fence of a writer whose offsets-only branch was prepared in Kafka
	// but never journaled aborts it.
	_, _ = withOffsets(t, s2, bid("w3", 1, 0), offsets("g4", map[int32]int64{0: 44}), "", 0)
	s3 := newSink(t, addr)
	if err := s3.Fence(ctx, "job", "w3", nil); err != nil {
		t.Fatalf("Fence: %v", err)
	}
	sameOffsets(t, "g4 fenced", groupOffsets(t, addr, "g4", "input"), nil)
}

func TestOffsetsPartitionErrorsSurface(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(2, "events", "input"))
	addr := kafkatest.Addr(c)
	s := newSink(t, addr)
	ctx := ctxT(t)

	// Validation refuses what the metadata shows is wrong.
	for name, o := range map[string]*twopc.Offsets{
		"unknown topic":     {Sink: "events", Group: "g", Topics: map[string]map[int32]int64{"nope": {0: 1}}},
		"missing partition": offsets("g", map[int32]int64{0: 1, 5: 1}),
		"illegal topic":     {Sink: "events", Group: "g", Topics: map[string]map[int32]int64{"a/b": {0: 1}}},
	} {
		if err := s.ValidateOffsets(o); !errors.Is(err, twopc.ErrInvalid) {
			t.Errorf("%s: ValidateOffsets = %v, want ErrInvalid", name, err)
		}
	}

	// What only the group coordinator knows surfaces from AddOffsets: a
	// member generation for a group that does not exist (KIP-447), and a
	// partition the metadata check did not see (validation skipped).
	gen := int32(3)
	for name, o := range map[string]*twopc.Offsets{
		"generation":        {Sink: "events", Group: "g", Topics: map[string]map[int32]int64{"input": {0: 1}}, Generation: &gen, MemberID: "m-1"},
		"missing partition": offsets("g", map[int32]int64{0: 1, 9: 1}),
	} {
		b, err := s.Begin(ctx, bid("w-"+name, 1, 0))
		if err != nil {
			t.Fatal(err)
		}
		err = b.(twopc.OffsetBranch).AddOffsets(ctx, o)
		if !errors.Is(err, twopc.ErrSinkFailure) {
			t.Fatalf("%s: AddOffsets = %v, want ErrSinkFailure", name, err)
		}
		want := kerr.IllegalGeneration
		if name == "missing partition" {
			want = kerr.UnknownTopicOrPartition
		}
		if !errors.Is(err, want) {
			t.Fatalf("%s: AddOffsets = %v, want %v", name, err, want)
		}
		if err := b.Abort(ctx); err != nil {
			t.Fatalf("%s: Abort: %v", name, err)
		}
	}
	sameOffsets(t, "after failures", groupOffsets(t, addr, "g", "input"), nil)
}
