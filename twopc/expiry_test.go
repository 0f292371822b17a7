package twopc_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

var errExpired = fmt.Errorf("%w: fake: transaction open too long", twopc.ErrSinkFailure)

// A checkpoint whose branch expired is not journaled: every branch of the
// writer is aborted, the answer is the replayable ErrSinkFailure, and the
// reopened session restores the previous checkpoint, after which a replay
// commits exactly once.
func TestExpiredBranchFailsCheckpoint(t *testing.T) {
	e := newEnv(t, 2)
	e.job("j", twopc.ModeAuto, "a", "b")
	e.open("j", "0", nil)
	e.write("j", "0", 1, append(recs("a", "a1"), recs("b", "b1")...))
	e.checkpoint("j", "0", 1, 1, "s1")
	e.write("j", "0", 1, append(recs("a", "a2"), recs("b", "b2")...))
	e.a.ExpireOpen(errExpired)
	_, err := e.c.Checkpoint(context.Background(), "j", "0", 1, 2, []byte("s2"), "")
	if !errors.Is(err, twopc.ErrSinkFailure) || !errors.Is(err, errExpired) {
		t.Fatalf("checkpoint of an expired branch: got %v, want the expiry (ErrSinkFailure)", err)
	}
	e.a.ExpireOpen(nil)
	if n := len(e.a.Branches(twopctest.Aborted)) + len(e.b.Branches(twopctest.Aborted)); n != 2 {
		t.Fatalf("aborted branches: got %d, want 2 (both sinks of checkpoint 2)", n)
	}
	if _, ok := e.j.Machine().CheckpointStatus("j", "0", 2); ok {
		t.Fatal("checkpoint 2 was journaled")
	}
	s := e.open("j", "0", nil)
	if s.Checkpoint != 1 || string(s.State) != "s1" {
		t.Fatalf("reopen: got checkpoint %d state %q, want 1 %q", s.Checkpoint, s.State, "s1")
	}
	e.write("j", "0", s.Epoch, append(recs("a", "a2"), recs("b", "b2")...))
	if r := e.checkpoint("j", "0", s.Epoch, 2, "s2"); r.Status != twopc.StatusCommitted {
		t.Fatalf("replayed checkpoint: got %s, want committed", r.Status)
	}
	wantValues(t, e.a, "a1", "a2")
	wantValues(t, e.b, "b1", "b2")
}

// Run fails a session whose open branch expired without waiting for its next
// call: the branches are aborted (their slots free) and the next call
// answers the replayable ErrSinkFailure naming the expiry.
func TestRunFailsExpiredSession(t *testing.T) {
	e := newEnv(t, 2)
	e.job("j", twopc.ModeAuto, "a", "b")
	e.open("j", "0", nil)
	e.write("j", "0", 1, append(recs("a", "a1"), recs("b", "b1")...))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.c.Run(ctx); close(done) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not stop after cancel")
		}
	}()
	// Not expired: Run leaves the session alone.
	waitFor(t, func() bool { return len(e.a.Branches(twopctest.Open)) == 1 })
	e.a.ExpireOpen(errExpired)
	waitFor(t, func() bool {
		return len(e.a.Branches(twopctest.Aborted)) == 1 && len(e.b.Branches(twopctest.Aborted)) == 1
	})
	e.a.ExpireOpen(nil)
	_, err := e.c.Write(context.Background(), "j", "0", 1, nil, recs("a", "a2"))
	// The session's failure is kept as text (%v): its cause may be a
	// journal error that must not change the answer's code.
	if !errors.Is(err, twopc.ErrSinkFailure) || !strings.Contains(err.Error(), errExpired.Error()) {
		t.Fatalf("write after expiry: got %v, want ErrSinkFailure naming the expiry", err)
	}
	s := e.open("j", "0", nil)
	if s.Checkpoint != 0 {
		t.Fatalf("reopen: got checkpoint %d, want 0", s.Checkpoint)
	}
	e.write("j", "0", s.Epoch, recs("a", "a1"))
	e.checkpoint("j", "0", s.Epoch, 1, "")
	wantValues(t, e.a, "a1")
}

// TestExpiryAbortBounded: the recovery loop fails a session with an
// expired branch even when the sink does not answer the abort; the abort
// gives up after the write timeout instead of holding the session (and
// the loop) for as long as the sink stays silent.
func TestExpiryAbortBounded(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := boundedEnv(t, twopc.Timeouts{Write: 200 * time.Millisecond})
	e.job("j", twopc.ModeAuto, "a")
	s := e.open("j", "w", nil)
	e.write("j", "w", s.Epoch, recs("a", "x"))
	e.a.SetHang("abort", true)
	t.Cleanup(func() { e.a.SetHang("abort", false) })
	e.a.ExpireOpen(errExpired)
	done := make(chan struct{})
	go func() { defer close(done); e.c.Run(ctx) }()
	// A write without records touches no branch: it answers from the
	// session's state, and is busy (ErrUnavailable) while the loop holds it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := e.c.Write(ctx, "j", "w", s.Epoch, nil, nil)
		if errors.Is(err, twopc.ErrSinkFailure) {
			break
		}
		if err != nil && !errors.Is(err, twopc.ErrUnavailable) {
			t.Fatalf("write: got %v, want ErrSinkFailure once the loop failed the session", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("session not failed in time (last answer %v, aborts hanging %d)", err, e.a.Hanging("abort"))
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
}
