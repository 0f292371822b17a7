package kafka_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// TestDelayedEndTxnFromDeposedNodeCommitsNothingLater is the invariant
// behind Jepsen's 2024 finding in Kafka's transaction protocol, for our
// slot reuse: a commit (EndTxn) of an old branch that a deposed node sent
// and the network delayed must never commit a later transaction of the same
// transactional id.
//
// Two nodes share one journal and one Kafka; each has its own sink (its own
// clients, as two processes would). Node a prepares x on slot 0 of writer
// w. The app moves w to node b: b finishes x from its journaled handle and
// fences the free slots, then writes y, which takes slot 0 again (same
// transactional id). Now a's EndTxn(commit) for x arrives, with x's
// producer id and epoch: it must be refused, and y must stay invisible to
// read_committed readers until b commits it.
func TestDelayedEndTxnFromDeposedNodeCommitsNothingLater(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(1, "events"))
	addr := kafkatest.Addr(c)
	j := twopctest.NewJournal(twopc.NewMachine())
	coord := map[string]*twopc.Coordinator{}
	for _, id := range []string{"a", "b"} {
		co, err := twopc.NewCoordinator(twopc.Config{Node: id, Journal: j, Machine: j.Machine(),
			Sinks: map[string]twopc.Sink{"events": newSink(t, addr)}, Logger: testLogger(t),
			HandoverWait: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		coord[id] = co
	}
	ctx := ctxT(t)
	if _, err := coord["a"].PutJob(ctx, twopc.JobSpec{Name: "job", Commit: twopc.ModeExternal, Sinks: []string{"events"}}); err != nil {
		t.Fatal(err)
	}
	rec := func(v string) []*twopc.Record {
		b, _ := json.Marshal(v)
		return []*twopc.Record{{Sink: "events", Topic: "events", Value: b}}
	}

	sa, err := coord["a"].OpenSession(ctx, "job", "w", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := coord["a"].Write(ctx, "job", "w", sa.Epoch, nil, rec("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := coord["a"].Checkpoint(ctx, "job", "w", sa.Epoch, 1, nil, twopc.WaitPrepared); err != nil {
		t.Fatal(err)
	}
	x := j.Machine().Pending("job")
	if len(x) != 1 {
		t.Fatalf("pending after prepare: %v", x)
	}
	var hx struct {
		TxnID      string `json:"transactional_id"`
		ProducerID int64  `json:"producer_id"`
		Epoch      int16  `json:"epoch"`
	}
	if err := json.Unmarshal(x[0].Branch.Handle, &hx); err != nil {
		t.Fatal(err)
	}

	// The app restored checkpoint 1 and reopens on b: x is decided and
	// finished by b from its handle; b fences the writer's free slots.
	restore := int64(1)
	sb, err := coord["b"].OpenSession(ctx, "job", "w", &restore)
	if err != nil {
		t.Fatal(err)
	}
	if got := values(t, addr, "events", 1); len(got) != 1 || got[0] != `x` {
		t.Fatalf("after the move: %v, want x once", got)
	}
	if _, err := coord["b"].Write(ctx, "job", "w", sb.Epoch, nil, rec("y")); err != nil {
		t.Fatal(err)
	}
	// y is open on slot 0 again: prepare it to see its handle (still
	// undecided, so invisible).
	if _, err := coord["b"].Checkpoint(ctx, "job", "w", sb.Epoch, 2, nil, twopc.WaitPrepared); err != nil {
		t.Fatal(err)
	}
	var hy struct {
		TxnID      string `json:"transactional_id"`
		ProducerID int64  `json:"producer_id"`
		Epoch      int16  `json:"epoch"`
	}
	y := j.Machine().Pending("job")
	if len(y) != 1 {
		t.Fatalf("pending after y's prepare: %v", y)
	}
	if err := json.Unmarshal(y[0].Branch.Handle, &hy); err != nil {
		t.Fatal(err)
	}
	if hy.TxnID != hx.TxnID {
		t.Fatalf("y took %s, x had %s: the test needs the slot reused", hy.TxnID, hx.TxnID)
	}
	if hy.ProducerID == hx.ProducerID && hy.Epoch == hx.Epoch {
		t.Fatalf("y runs with x's producer id and epoch (%d/%d): a delayed EndTxn for x would commit y", hx.ProducerID, hx.Epoch)
	}
	t.Logf("x: %s pid %d epoch %d; y: pid %d epoch %d", hx.TxnID, hx.ProducerID, hx.Epoch, hy.ProducerID, hy.Epoch)

	// The deposed node's delayed EndTxn(commit) for x arrives now.
	req := kmsg.NewPtrEndTxnRequest()
	req.TransactionalID, req.ProducerID, req.ProducerEpoch, req.Commit = hx.TxnID, hx.ProducerID, hx.Epoch, true
	resp, err := req.RequestWith(ctx, mustClient(t, addr))
	if err != nil {
		t.Fatal(err)
	}
	rerr := kerr.ErrorForCode(resp.ErrorCode)
	if rerr == nil {
		t.Fatalf("the delayed EndTxn for x was accepted; it must be refused as fenced")
	}
	if !errors.Is(rerr, kerr.ProducerFenced) && !errors.Is(rerr, kerr.InvalidProducerEpoch) {
		t.Errorf("delayed EndTxn refused with %v; want a fencing error (PRODUCER_FENCED or INVALID_PRODUCER_EPOCH)", rerr)
	}
	t.Logf("delayed EndTxn refused: %v", rerr)
	// y is still prepared, not committed: a read_committed reader sees x only.
	if got := kafkatest.ReadCommittedWith(ctx, t, addr, "events", 2, kafkatest.ReadOptions{Timeout: 1500 * time.Millisecond}); len(got) != 1 {
		t.Fatalf("after the delayed EndTxn a read_committed reader sees %d records, want x only", len(got))
	}
	// b commits y: both exactly once.
	if r, err := coord["b"].Commit(ctx, "job", 2); err != nil || r.Status != twopc.StatusCommitted {
		t.Fatalf("commit 2: %+v, %v", r, err)
	}
	expectExactly(t, values(t, addr, "events", 2), []string{"x", "y"})
}
