package twopc_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

func TestDeleteWriter(t *testing.T) {
	e := newEnv(t, 2)
	ctx := context.Background()
	e.job("auto", twopc.ModeAuto, "a")
	e.job("ext", twopc.ModeExternal, "a")

	s := e.open("auto", "w", nil)
	e.write("auto", "w", s.Epoch, recs("a", "one"))
	e.checkpoint("auto", "w", s.Epoch, 1, "st1")
	e.write("auto", "w", s.Epoch, recs("a", "open"))
	fences := e.a.Fences()
	if ok, err := e.c.DeleteWriter(ctx, "auto", "w"); err != nil || !ok {
		t.Fatalf("delete: got %v, %v, want true, nil", ok, err)
	}
	if got := e.a.Branches(twopctest.Open); len(got) != 0 {
		t.Fatalf("open branches after delete: %v, want none", got)
	}
	if e.a.Fences() == fences {
		t.Fatal("delete did not fence the writer's sink")
	}
	if _, err := e.c.Write(ctx, "auto", "w", s.Epoch, nil, recs("a", "late")); !errors.Is(err, twopc.ErrNoSession) && !errors.Is(err, twopc.ErrSessionFenced) {
		t.Fatalf("write of the deleted writer's session: got %v, want no_session or session_fenced", err)
	}
	if ok, err := e.c.DeleteWriter(ctx, "auto", "w"); err != nil || ok {
		t.Fatalf("second delete: got %v, %v, want false, nil", ok, err)
	}
	s2 := e.open("auto", "w", nil)
	if s2.Epoch <= s.Epoch || s2.Checkpoint != 0 || s2.State != nil {
		t.Fatalf("reopened: got epoch %d checkpoint %d state %q, want epoch > %d, 0, nil", s2.Epoch, s2.Checkpoint, s2.State, s.Epoch)
	}
	if _, err := e.c.Write(ctx, "auto", "w", s.Epoch, nil, recs("a", "late")); !errors.Is(err, twopc.ErrSessionFenced) {
		t.Fatalf("write with the deleted writer's epoch: got %v, want session_fenced", err)
	}
	wantValues(t, e.a, "one")

	x := e.open("ext", "w", nil)
	e.write("ext", "w", x.Epoch, recs("a", "x1"))
	e.checkpoint("ext", "w", x.Epoch, 1, "")
	if _, err := e.c.DeleteWriter(ctx, "ext", "w"); !errors.Is(err, twopc.ErrWriterInDoubt) {
		t.Fatalf("delete with a prepared checkpoint: got %v, want ErrWriterInDoubt", err)
	}
	if got := e.a.Branches(twopctest.Prepared); len(got) != 1 {
		t.Fatalf("prepared branches after a refused delete: got %d, want 1 (kept)", len(got))
	}
	if _, err := e.c.Commit(ctx, "ext", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.DeleteWriter(ctx, "ext", "w"); err != nil {
		t.Fatalf("delete after commit: %v", err)
	}
	if _, err := e.c.DeleteWriter(ctx, "nope", "w"); !errors.Is(err, twopc.ErrJobNotFound) {
		t.Fatalf("unknown job: got %v, want ErrJobNotFound", err)
	}
}

// TestDeleteWriterBusySessionChangesNothing: a delete that meets a call in
// progress on the writer's session waits for it only within its own
// deadline, and when it gives up (or is refused) the session is untouched:
// the refused delete must not fence it behind the app's back.
func TestDeleteWriterBusySessionChangesNothing(t *testing.T) {
	ctx := context.Background()
	e := boundedEnv(t, twopc.Timeouts{Session: 300 * time.Millisecond, Checkpoint: 5 * time.Second})
	e.job("ext", twopc.ModeExternal, "a")
	s := e.open("ext", "w", nil)
	e.write("ext", "w", s.Epoch, recs("a", "x1"))
	e.a.SetHang("prepare", true)
	t.Cleanup(func() { e.a.SetHang("prepare", false) })
	cp := make(chan error, 1)
	go func() {
		_, err := e.c.Checkpoint(ctx, "ext", "w", s.Epoch, 1, nil, "")
		cp <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for e.a.Hanging("prepare") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("checkpoint did not reach prepare")
		}
		time.Sleep(time.Millisecond)
	}
	within(t, 2*time.Second, "delete behind a busy session", func() {
		if _, err := e.c.DeleteWriter(ctx, "ext", "w"); !errors.Is(err, twopc.ErrUnavailable) {
			t.Errorf("delete while a checkpoint runs: got %v, want ErrUnavailable", err)
		}
	})
	e.a.SetHang("prepare", false)
	if err := <-cp; err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	// The session goes on; its checkpoint is in doubt, so a delete is refused.
	e.write("ext", "w", s.Epoch, recs("a", "x2"))
	if _, err := e.c.DeleteWriter(ctx, "ext", "w"); !errors.Is(err, twopc.ErrWriterInDoubt) {
		t.Fatalf("delete with a prepared checkpoint: got %v, want ErrWriterInDoubt", err)
	}
	e.write("ext", "w", s.Epoch, recs("a", "x3"))
	if got := e.a.Branches(twopctest.Open); len(got) != 1 {
		t.Fatalf("open branches after refused deletes: got %v, want the session's one", got)
	}
}
