package twopc_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

func TestRecordRejected(t *testing.T) {
	t.Run("call changed nothing, session goes on", func(t *testing.T) {
		e := newEnv(t, 2)
		e.job("j", twopc.ModeAuto, "a", "b")
		e.open("j", "0", nil)
		e.write("j", "0", 1, recs("a", "a1"))
		e.a.RejectValue("bad")
		// The rejecting sink's records come first in the call: no other
		// sink has taken any of it.
		call := append(recs("a", "a2", "bad", "a3"), recs("b", "b1")...)
		_, err := e.c.Write(context.Background(), "j", "0", 1, nil, call)
		re, ok := errors.AsType[*twopc.RecordError](err)
		if !errors.Is(err, twopc.ErrRecordRejected) || !ok || re.Line != 2 {
			t.Fatalf("write with a rejected record: got %v, want ErrRecordRejected naming record 2", err)
		}
		if errors.Is(err, twopc.ErrSinkFailure) {
			t.Fatalf("got %v, want no ErrSinkFailure (the session goes on)", err)
		}
		e.a.RejectValue("")
		// The app skips the record and goes on in the same session.
		e.write("j", "0", 1, append(recs("a", "a2", "a3"), recs("b", "b1")...))
		if r := e.checkpoint("j", "0", 1, 1, "s1"); r.Status != twopc.StatusCommitted {
			t.Fatalf("checkpoint: got %s, want committed", r.Status)
		}
		wantValues(t, e.a, "a1", "a2", "a3")
		wantValues(t, e.b, "b1")
	})
	t.Run("another sink took records of the call, session fails", func(t *testing.T) {
		e := newEnv(t, 2)
		e.job("j", twopc.ModeAuto, "a", "b")
		e.open("j", "0", nil)
		e.write("j", "0", 1, recs("a", "a1"))
		e.b.RejectValue("bad")
		call := append(recs("a", "a2"), recs("b", "b1", "bad")...)
		_, err := e.c.Write(context.Background(), "j", "0", 1, nil, call)
		re, ok := errors.AsType[*twopc.RecordError](err)
		if !errors.Is(err, twopc.ErrRecordRejected) || !ok || re.Line != 3 || !strings.Contains(err.Error(), "session failed") {
			t.Fatalf("got %v, want ErrRecordRejected naming record 3 and saying the session failed", err)
		}
		e.b.RejectValue("")
		if n := len(e.a.Branches(twopctest.Aborted)); n != 1 {
			t.Fatalf("sink a: %d aborted branches, want 1", n)
		}
		if _, err := e.c.Write(context.Background(), "j", "0", 1, nil, recs("a", "a3")); !errors.Is(err, twopc.ErrSinkFailure) {
			t.Fatalf("next write: got %v, want ErrSinkFailure (reopen)", err)
		}
		s := e.open("j", "0", nil)
		e.write("j", "0", s.Epoch, append(recs("a", "a1", "a2"), recs("b", "b1")...))
		e.checkpoint("j", "0", s.Epoch, 1, "")
		wantValues(t, e.a, "a1", "a2")
		wantValues(t, e.b, "b1")
	})
	t.Run("invalid record names its line", func(t *testing.T) {
		e := newEnv(t, 2)
		e.job("j", twopc.ModeAuto, "a")
		e.open("j", "0", nil)
		_, err := e.c.Write(context.Background(), "j", "0", 1, nil, append(recs("a", "x"), &twopc.Record{Sink: "a"}))
		re, ok := errors.AsType[*twopc.RecordError](err)
		if !errors.Is(err, twopc.ErrInvalid) || !ok || re.Line != 2 {
			t.Fatalf("got %v, want ErrInvalid naming record 2", err)
		}
	})
}

// A sink that finds a poison record only at prepare (Kafka: the broker
// refused a produce) fails the checkpoint as a rejection: nothing is
// journaled, every branch is aborted, the session must reopen.
func TestRecordRejectedAtPrepare(t *testing.T) {
	e := newEnv(t, 2)
	e.job("j", twopc.ModeAuto, "a", "b")
	e.open("j", "0", nil)
	e.write("j", "0", 1, append(recs("a", "a1"), recs("b", "b1")...))
	e.b.FailPrepare = fmt.Errorf("%w: %w: fake: broker refused a record", twopc.ErrRecordRejected, twopc.ErrSinkFailure)
	_, err := e.c.Checkpoint(context.Background(), "j", "0", 1, 1, nil, "")
	e.b.FailPrepare = nil
	if !errors.Is(err, twopc.ErrRecordRejected) {
		t.Fatalf("checkpoint: got %v, want ErrRecordRejected", err)
	}
	if _, ok := e.j.Machine().CheckpointStatus("j", "0", 1); ok {
		t.Fatal("checkpoint 1 was journaled")
	}
	if n := len(e.a.Branches(twopctest.Aborted)) + len(e.b.Branches(twopctest.Aborted)); n != 2 {
		t.Fatalf("aborted branches: got %d, want 2", n)
	}
	if _, err := e.c.Write(context.Background(), "j", "0", 1, nil, recs("a", "a2")); !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("write after the failed checkpoint: got %v, want ErrSinkFailure (reopen)", err)
	}
}
