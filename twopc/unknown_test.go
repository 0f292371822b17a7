package twopc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// lateJournal stands for a journal whose proposer stops waiting before the
// entry is applied (raftlog answers when ctx ends, but raft keeps the entry):
// while holding, the next "prepared" entry is kept back and the proposer gets
// ErrUnavailable; apply then applies it late, or drop loses it.
type lateJournal struct {
	*twopctest.Journal
	mu   sync.Mutex
	hold bool
	held []byte
	// op is the kind of entry held back ("": OpPrepared).
	op twopc.Op
}

func (j *lateJournal) Propose(ctx context.Context, cmd []byte) (twopc.ApplyResult, error) {
	var c twopc.Command
	if err := json.Unmarshal(cmd, &c); err != nil {
		return twopc.ApplyResult{}, err
	}
	j.mu.Lock()
	op := j.op
	if op == "" {
		op = twopc.OpPrepared
	}
	if j.hold && c.Op == op {
		j.hold, j.held = false, cmd
		j.mu.Unlock()
		return twopc.ApplyResult{}, errors.Join(twopc.ErrUnavailable, context.DeadlineExceeded)
	}
	j.mu.Unlock()
	return j.Journal.Propose(ctx, cmd)
}

// waitHeld waits (at most 10 s) until an entry was held back: one that a
// background goroutine proposes after the call that caused it answered.
func (j *lateJournal) waitHeld(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		j.mu.Lock()
		held := j.held != nil
		j.mu.Unlock()
		if held {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no entry was held back within 10s")
		}
	}
}

func (j *lateJournal) apply(t *testing.T) {
	t.Helper()
	j.mu.Lock()
	cmd := j.held
	j.held = nil
	j.mu.Unlock()
	if cmd == nil {
		t.Fatal("no entry was held back")
	}
	v, err := j.Journal.Propose(context.Background(), cmd)
	if err != nil || v.Err() != nil {
		t.Fatalf("late apply: %v %v", v, err)
	}
}

func lateEnv(t *testing.T) (*env, *lateJournal) {
	t.Helper()
	e := newEnv(t, 1)
	lj := &lateJournal{Journal: e.j}
	e.withJournal(lj)
	return e, lj
}

// unknownCheckpoint writes a record for writer j/w and checkpoints it while
// the journal holds the entry back, so the call ends with an unknown
// outcome (ErrUnavailable).
func unknownCheckpoint(t *testing.T) (*env, *lateJournal, twopc.SessionInfo) {
	t.Helper()
	e, lj := lateEnv(t)
	e.job("j", twopc.ModeAuto, "a")
	s := e.open("j", "w", nil)
	e.write("j", "w", s.Epoch, recs("a", "x"))
	lj.mu.Lock()
	lj.hold = true
	lj.mu.Unlock()
	if _, err := e.c.Checkpoint(context.Background(), "j", "w", s.Epoch, 1, []byte("s1"), ""); !errors.Is(err, twopc.ErrUnavailable) {
		t.Fatalf("checkpoint with an unknown outcome: got %v, want ErrUnavailable", err)
	}
	return e, lj, s
}

// TestCheckpointUnknownOutcomeAppliedLate: a checkpoint whose journal entry
// was applied after its proposer gave up must commit, not be aborted by the
// call and then reported as data_loss.
func TestCheckpointUnknownOutcomeAppliedLate(t *testing.T) {
	ctx := context.Background()
	e, lj, s := unknownCheckpoint(t)
	lj.apply(t)
	// The app was told to retry; its retry says reopen, and the reopen
	// restores what the journal has.
	if _, err := e.c.Checkpoint(ctx, "j", "w", s.Epoch, 1, []byte("s1"), ""); err == nil {
		t.Fatal("retry on the session: got success, want an error that says reopen")
	}
	s2 := e.open("j", "w", nil)
	if s2.Checkpoint != 1 || s2.Status != twopc.StatusCommitted || len(s2.DataLoss) != 0 {
		t.Fatalf("reopen: got checkpoint %d status %s data_loss %v, want 1 committed none", s2.Checkpoint, s2.Status, s2.DataLoss)
	}
	wantValues(t, e.a, "x")
	if n := e.lost.Load(); n != 0 {
		t.Fatalf("%d branches counted as data loss, want 0", n)
	}
}

// TestCheckpointUnknownOutcomeNeverApplied: when the entry never applies,
// the branch left prepared is aborted by the writer's next open, and the
// writer goes on from its previous checkpoint.
func TestCheckpointUnknownOutcomeNeverApplied(t *testing.T) {
	e, lj, _ := unknownCheckpoint(t)
	lj.mu.Lock()
	lj.held = nil // lost: never applied
	lj.mu.Unlock()
	s2 := e.open("j", "w", nil)
	if s2.Checkpoint != 0 || s2.Status != twopc.StatusNone {
		t.Fatalf("reopen: got checkpoint %d status %s, want 0 none", s2.Checkpoint, s2.Status)
	}
	if p := e.a.Branches(twopctest.Prepared); len(p) != 0 {
		t.Fatalf("branches still prepared after the reopen's fence: %v", p)
	}
	e.write("j", "w", s2.Epoch, recs("a", "y"))
	e.checkpoint("j", "w", s2.Epoch, 1, "s1")
	wantValues(t, e.a, "y")
	if n := e.lost.Load(); n != 0 {
		t.Fatalf("%d branches counted as data loss, want 0", n)
	}
}

// staleResolveSink answers every Resolve with data loss, as a Kafka EndTxn
// with a stale epoch does once the slot was reused; before answering it lets
// the held RESOLVED entry apply, as a late raft apply would.
type staleResolveSink struct {
	*twopctest.Sink
	lj *lateJournal
	t  *testing.T
}

func (s staleResolveSink) Resolve(context.Context, twopc.BranchID, twopc.Handle, bool) error {
	s.lj.apply(s.t)
	return fmt.Errorf("%w: producer fenced (stale epoch)", twopc.ErrDataLoss)
}

// TestResolveAfterLateResolvedIsNoDataLoss: a RESOLVED entry with an unknown
// outcome that applies while the branch is finished again must not make the
// second attempt's "already ended" answer count as data loss.
func TestResolveAfterLateResolvedIsNoDataLoss(t *testing.T) {
	e := newEnv(t, 1)
	lj := &lateJournal{Journal: e.j, op: twopc.OpResolved}
	c, err := twopc.NewCoordinator(twopc.Config{
		Node: "n1", Journal: lj, Machine: e.j.Machine(),
		Sinks:         map[string]twopc.Sink{"a": staleResolveSink{Sink: e.a, lj: lj, t: t}},
		RetryInterval: 5 * time.Millisecond, Metrics: countMetrics{e},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	e.c = c
	e.job("j", twopc.ModeAuto, "a")
	s := e.open("j", "w", nil)
	e.write("j", "w", s.Epoch, recs("a", "x"))
	lj.mu.Lock()
	lj.hold = true
	lj.mu.Unlock()
	// The commit succeeds, so the answer says committed without waiting
	// for RESOLVED, whose journaling then has an unknown outcome.
	if r := e.checkpoint("j", "w", s.Epoch, 1, "s1"); r.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint: got %s, want committed (the sink committed; RESOLVED follows)", r.Status)
	}
	lj.waitHeld(t)
	// The reopen finishes the decided branch again through Resolve.
	s2 := e.open("j", "w", nil)
	if s2.Status != twopc.StatusCommitted || len(s2.DataLoss) != 0 {
		t.Fatalf("reopen: got status %s data_loss %v, want committed and none", s2.Status, s2.DataLoss)
	}
	if n := e.lost.Load(); n != 0 {
		t.Fatalf("%d data-loss events counted for a branch the journal has as committed, want 0", n)
	}
	wantValues(t, e.a, "x")
}
