package twopc_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// TestStartupFenceInBackground: a process dies with 50 writers holding open
// transactions. RecoverDecided (what the sidecar runs before it listens)
// fences nobody; a session opened right away fences its own writer and
// keeps working; Run fences the rest promptly, retrying a failing sink
// until it succeeds, and never aborts the new session's transaction.
func TestStartupFenceInBackground(t *testing.T) {
	const writers = 50
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	j := twopctest.NewJournal(twopc.NewMachine())
	a := twopctest.NewSink("a", 2)
	newCoord := func() *twopc.Coordinator {
		c, err := twopc.NewCoordinator(twopc.Config{Node: "n1", Journal: j, Machine: j.Machine(),
			Sinks: map[string]twopc.Sink{"a": a}, RetryInterval: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	old := newCoord()
	if _, err := old.PutJob(ctx, twopc.JobSpec{Name: "j", Commit: twopc.ModeAuto}); err != nil {
		t.Fatal(err)
	}
	for i := range writers {
		w := fmt.Sprintf("w%d", i)
		s, err := old.OpenSession(ctx, "j", w, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := old.Write(ctx, "j", w, s.Epoch, nil, recs("a", "lost-"+w)); err != nil {
			t.Fatal(err)
		}
	}
	// The old process dies without Close: its transactions stay open.

	a.SetFailFence(errors.New("broker unreachable"))
	c := newCoord()
	t.Cleanup(c.Close)
	c.RecoverDecided(ctx)
	if got := a.States()[twopctest.Open]; got != writers {
		t.Fatalf("open transactions after RecoverDecided: got %d, want %d (nothing fenced before serving)", got, writers)
	}
	if got := c.Unfenced(); got != writers {
		t.Fatalf("unfenced writers: got %d, want %d", got, writers)
	}
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	// Failing fences are retried every round.
	deadline := time.Now().Add(5 * time.Second)
	for a.Fences() <= 2*writers {
		if time.Now().After(deadline) {
			t.Fatalf("fence attempts: got %d, want retries beyond the first %d", a.Fences(), writers)
		}
		time.Sleep(time.Millisecond)
	}
	if got := c.Unfenced(); got != writers {
		t.Fatalf("unfenced writers while the sink fails: got %d, want %d", got, writers)
	}
	a.SetFailFence(nil)

	// A session opened now fences its writer itself and keeps its branch.
	s, err := c.OpenSession(ctx, "j", "w0", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(ctx, "j", "w0", s.Epoch, nil, recs("a", "kept")); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for c.Unfenced() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("unfenced writers: got %d, want 0", c.Unfenced())
		}
		time.Sleep(time.Millisecond)
	}
	st := a.States()
	if st[twopctest.Open] != 1 || st[twopctest.Aborted] != writers {
		t.Fatalf("sink states after the background fence: got %v, want 1 open (the new session's) and %d aborted", st, writers)
	}
	if _, err := c.Checkpoint(ctx, "j", "w0", s.Epoch, 1, nil, ""); err != nil {
		t.Fatalf("checkpoint of the session opened during the background fence: %v", err)
	}
	wantValues(t, a, "kept")
	cancel()
	<-done
}

// TestHungStartupFenceDoesNotStopRecovery: the background fence of a
// writer whose sink does not answer gives up after the session timeout (the
// bound a session open's fence has), so the recovery loop goes on finishing
// decided branches instead of waiting for the sink forever.
func TestHungStartupFenceDoesNotStopRecovery(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	j := twopctest.NewJournal(twopc.NewMachine())
	a := twopctest.NewSink("a", 2)
	newCoord := func() *twopc.Coordinator {
		c, err := twopc.NewCoordinator(twopc.Config{Node: "n1", Journal: j, Machine: j.Machine(),
			Sinks: map[string]twopc.Sink{"a": a}, RetryInterval: 5 * time.Millisecond,
			Timeouts: twopc.Timeouts{Session: 200 * time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	old := newCoord()
	if _, err := old.PutJob(ctx, twopc.JobSpec{Name: "j", Commit: twopc.ModeAuto}); err != nil {
		t.Fatal(err)
	}
	s, err := old.OpenSession(ctx, "j", "w", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Write(ctx, "j", "w", s.Epoch, nil, recs("a", "x")); err != nil {
		t.Fatal(err)
	}
	a.FailCommit = twopctest.ErrInjected
	if r, err := old.Checkpoint(ctx, "j", "w", s.Epoch, 1, nil, ""); err != nil || r.Status != twopc.StatusCommitting {
		t.Fatalf("checkpoint with a failing commit: got %+v %v, want committing", r, err)
	}
	// The old process dies; the new one cannot finish at start-up either.
	a.FailResolve = twopctest.ErrInjected
	c := newCoord()
	t.Cleanup(c.Close)
	c.RecoverDecided(ctx)
	a.FailCommit, a.FailResolve = nil, nil
	a.SetHang("fence", true)
	t.Cleanup(func() { a.SetHang("fence", false) })
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for len(a.Committed()) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("decided branch not finished while a start-up fence hangs (fences hanging: %d)", a.Hanging("fence"))
		}
		time.Sleep(time.Millisecond)
	}
	wantValues(t, a, "x")
	if c.Unfenced() != 1 {
		t.Fatalf("unfenced writers: got %d, want 1 (its fence keeps failing)", c.Unfenced())
	}
	cancel()
	<-done
}
