package twopc_test

import (
	"context"
	"errors"
	"testing"

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
