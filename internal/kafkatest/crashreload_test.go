package kafkatest_test

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/internal/kafkatest"
)

// TestKfakeCrashReloadResurrectsAbortedTxn documents what kfake does with a
// transaction that was open when its process was SIGKILLed (why `sidecar
// dev` keeps its broker in a process of its own, so that a kill of the
// sidecar is never a kill of the broker):
//
//  1. At reload kfake aborts it in memory only: read_committed readers do
//     not see its records, but no ABORT marker is written to the log.
//  2. The next transaction of the same producer id (same transactional id,
//     epoch bumped) commits; its COMMIT marker is the first control record
//     of that producer after the orphaned records. Readers skip the
//     producer's records from the aborted range's first offset to its next
//     control record, so the committed record is invisible as well.
//  3. After a second SIGKILL, the full log replay pairs the orphaned records
//     with that COMMIT marker: the aborted records become committed and
//     read_committed readers see them — duplicates or resurrected data.
//
// Kafka differs: it keeps an open transaction across a broker crash until
// its timeout and then writes an ABORT marker, so aborted records never
// come back. The assertions are on what kfake really does; if a kfake update
// fixes step 3, this test fails and the dev-mode notes can be revisited.
func TestKfakeCrashReloadResurrectsAbortedTxn(t *testing.T) {
	dir := t.TempDir()
	b := kafkatest.StartBrokerWith(t, dir, kafkatest.BrokerOptions{Topics: []string{"t"}})
	addr := b.Addr
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// 1. An open transaction, flushed but not committed, then SIGKILL.
	p1 := txnClient(t, addr, "crash")
	if err := p1.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := p1.ProduceSync(ctx, &kgo.Record{Value: []byte("open-1")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	b.Kill()
	p1.Close()
	b = kafkatest.StartBrokerWith(t, dir, kafkatest.BrokerOptions{Addr: addr})
	if got := committedValues(ctx, t, addr, 0); len(got) != 0 {
		t.Fatalf("after the first crash: got %q, want nothing (kfake aborts the open transaction at reload)", got)
	}

	// 2. The same transactional id commits a new transaction.
	p2 := txnClient(t, addr, "crash")
	if err := p2.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := p2.ProduceSync(ctx, &kgo.Record{Value: []byte("committed-2")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if err := p2.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
	p2.Close()
	// The committed record is invisible too: the fetch response lists the
	// crash-aborted range (producer id, first offset) and, lacking an ABORT
	// marker, readers skip that producer's records up to its next control
	// record, the COMMIT of committed-2.
	if got := committedValues(ctx, t, addr, 0); len(got) != 0 {
		t.Fatalf("after the commit: got %q, want nothing (the crash-aborted range hides the next transaction)", got)
	}
	if got := kcat(ctx, t, addr, "read_committed"); len(got) != 0 {
		t.Fatalf("kcat read_committed after the commit: got %q, want nothing", got)
	}
	if got, want := kcat(ctx, t, addr, "read_uncommitted"), []string{"open-1", "committed-2"}; !slices.Equal(got, want) {
		t.Fatalf("kcat read_uncommitted after the commit: got %q, want %q", got, want)
	}

	// 3. A second SIGKILL: the aborted record comes back as committed.
	b.Kill()
	kafkatest.StartBrokerWith(t, dir, kafkatest.BrokerOptions{Addr: addr})
	want := []string{"open-1", "committed-2"}
	if got := committedValues(ctx, t, addr, 2); !slices.Equal(got, want) {
		t.Fatalf("after the second crash: got %q, want %q (kfake's replay commits the crash-aborted records)", got, want)
	}
	if got := kcat(ctx, t, addr, "read_committed"); !slices.Equal(got, want) {
		t.Fatalf("kcat read_committed after the second crash: got %q, want %q", got, want)
	}
}

// kcat reads topic t to its end with the given isolation level and returns
// the values (one word each).
func kcat(ctx context.Context, t *testing.T, addr, isolation string) []string {
	t.Helper()
	if _, err := exec.LookPath("kcat"); err != nil {
		t.Fatalf("this test reads with kcat too: apt-get install -y kcat")
	}
	out, err := exec.CommandContext(ctx, "kcat", "-C", "-b", addr, "-t", "t", "-X", "isolation.level="+isolation,
		"-e", "-q", "-f", "%s\n").CombinedOutput()
	if err != nil {
		t.Fatalf("kcat: %v\n%s", err, out)
	}
	return strings.Fields(string(out))
}

// txnClient is a transactional producer to topic t.
func txnClient(t *testing.T, addr, txnID string) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.TransactionalID(txnID), kgo.DefaultProduceTopic("t"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// committedValues reads topic t with read_committed (waiting for want
// records, then lingering for extras) and returns the values.
func committedValues(ctx context.Context, t *testing.T, addr string, want int) []string {
	t.Helper()
	o := kafkatest.ReadOptions{Linger: 500 * time.Millisecond}
	if want == 0 {
		o.Timeout = 2 * time.Second
	}
	var vs []string
	for _, r := range kafkatest.ReadCommittedWith(ctx, t, addr, "t", want, o) {
		vs = append(vs, string(r.Value))
	}
	return vs
}
