package twopc_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

func (e *env) jobG(name string, g twopc.Guarantee, sinks ...string) {
	e.t.Helper()
	info, err := e.c.PutJob(context.Background(), twopc.JobSpec{Name: name, Sinks: sinks, Guarantee: g})
	if err != nil {
		e.t.Fatal(err)
	}
	if info.Guarantee != g {
		e.t.Fatalf("PutJob %s: got guarantee %q, want %q", name, info.Guarantee, g)
	}
}

// TestAtLeastOnceCheckpoint: records reach the sink at the checkpoint's
// flush, the checkpoint is journaled committed with no branch and nothing
// pending, and no sink is fenced on open.
func TestAtLeastOnceCheckpoint(t *testing.T) {
	e := newEnv(t, 1)
	e.jobG("j", twopc.GuaranteeAtLeastOnce)
	fences := e.a.Fences() + e.b.Fences()
	s := e.open("j", "w", nil)
	if f := e.a.Fences() + e.b.Fences(); f != fences {
		t.Fatalf("open of a direct job fenced sinks %d times", f-fences)
	}
	e.write("j", "w", s.Epoch, append(recs("a", "a1", "a2"), recs("b", "b1")...))
	if got := e.a.Committed(); len(got) != 0 {
		t.Fatalf("durable before the checkpoint (fake keeps them until flush): %v", got)
	}
	r := e.checkpoint("j", "w", s.Epoch, 1, "st1")
	if r.Status != twopc.StatusCommitted || len(r.Branches) != 0 || r.Checkpoint != 1 || r.Guarantee != twopc.GuaranteeAtLeastOnce {
		t.Fatalf("checkpoint: got %+v, want committed, no branches, guarantee named", r)
	}
	wantValues(t, e.a, "a1", "a2")
	wantValues(t, e.b, "b1")
	if p := e.j.Machine().Pending("j"); len(p) != 0 {
		t.Fatalf("pending after a direct checkpoint: %+v", p)
	}
	// More writes go on the same direct branches (one per sink and session).
	e.write("j", "w", s.Epoch, recs("a", "a3"))
	if r := e.checkpoint("j", "w", s.Epoch, 2, "st2"); r.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint 2: %+v", r)
	}
	if e.a.Directs() != 1 || e.b.Directs() != 1 {
		t.Fatalf("direct branches: a %d b %d, want 1 each", e.a.Directs(), e.b.Directs())
	}
	// A repeat of the last checkpoint is idempotent; an empty one flushes.
	if r := e.checkpoint("j", "w", s.Epoch, 2, "st2"); r.Status != twopc.StatusCommitted || r.Guarantee != twopc.GuaranteeAtLeastOnce {
		t.Fatalf("repeat: %+v", r)
	}
	info, _ := e.c.Job("j")
	if info.Guarantee != twopc.GuaranteeAtLeastOnce || len(info.Writers) != 1 || info.Writers[0].LastCommitted != 2 || len(info.Writers[0].InDoubt) != 0 {
		t.Fatalf("job: %+v", info)
	}
	// Reopen restores and closes the old session's direct branches.
	s2 := e.open("j", "w", nil)
	if s2.Checkpoint != 2 || string(s2.State) != "st2" || s2.Status != twopc.StatusCommitted {
		t.Fatalf("reopen: %+v", s2)
	}
	if e.a.Directs() != 0 || e.b.Directs() != 0 {
		t.Fatalf("old session's direct branches not closed: a %d b %d", e.a.Directs(), e.b.Directs())
	}
	if _, err := e.c.Write(context.Background(), "j", "w", s.Epoch, nil, recs("a", "x")); !errors.Is(err, twopc.ErrSessionFenced) {
		t.Fatalf("write of the old epoch: got %v, want fenced", err)
	}
	wantValues(t, e.a, "a1", "a2", "a3")
	if st := e.a.States(); len(st) != 0 {
		t.Fatalf("transactions in a direct job's sink: %v", st)
	}
}

// TestAtLeastOnceFlushFailure: a failed flush journals nothing and fails
// the session; the reopen restores the last checkpoint, and the replay
// after it is the at-least-once duplicate.
func TestAtLeastOnceFlushFailure(t *testing.T) {
	e := newEnv(t, 1)
	e.jobG("j", twopc.GuaranteeAtLeastOnce, "a")
	s := e.open("j", "w", nil)
	e.write("j", "w", s.Epoch, recs("a", "r1"))
	e.checkpoint("j", "w", s.Epoch, 1, "after-r1")
	e.write("j", "w", s.Epoch, recs("a", "r2"))
	e.a.FailFlush = twopctest.ErrInjected
	_, err := e.c.Checkpoint(context.Background(), "j", "w", s.Epoch, 2, []byte("after-r2"), "")
	if !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("checkpoint with a failed flush: got %v, want sink failure", err)
	}
	if wv, _ := e.j.Machine().Writer("j", "w"); wv.LastCommitted != 1 || wv.MaxCheckpoint != 1 {
		t.Fatalf("journal after the failed flush: %+v, want checkpoint 1 only", wv)
	}
	if e.a.Directs() != 0 {
		t.Fatal("the failed session's direct branch is still open")
	}
	if _, err := e.c.Write(context.Background(), "j", "w", s.Epoch, nil, recs("a", "x")); !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("write after the failure: got %v, want the session failed", err)
	}
	e.a.FailFlush = nil
	s2 := e.open("j", "w", nil)
	if s2.Checkpoint != 1 || string(s2.State) != "after-r1" {
		t.Fatalf("reopen: %+v", s2)
	}
	e.write("j", "w", s2.Epoch, recs("a", "r2"))
	e.checkpoint("j", "w", s2.Epoch, 2, "after-r2")
	wantValues(t, e.a, "r1", "r2")
}

// TestAtLeastOnceCrash: a crash after the flush and before the journal
// entry restores the previous checkpoint; its replay duplicates, nothing
// is lost. A crash after the journal restores the new one.
func TestAtLeastOnceCrash(t *testing.T) {
	e := newEnv(t, 1)
	e.jobG("j", twopc.GuaranteeAtLeastOnce, "a")
	s := e.open("j", "w", nil)
	e.write("j", "w", s.Epoch, recs("a", "r1"))
	e.crashAt("after-flush", func() { e.checkpoint("j", "w", s.Epoch, 1, "after-r1") })
	s = e.open("j", "w", nil)
	if s.Checkpoint != 0 {
		t.Fatalf("restored %+v, want nothing", s)
	}
	e.write("j", "w", s.Epoch, recs("a", "r1"))
	e.crashAt("after-journal", func() { e.checkpoint("j", "w", s.Epoch, 1, "after-r1") })
	s = e.open("j", "w", nil)
	if s.Checkpoint != 1 || string(s.State) != "after-r1" {
		t.Fatalf("restored %+v, want checkpoint 1", s)
	}
	wantValues(t, e.a, "r1", "r1") // the duplicate of the replay
	if p := e.j.Machine().Pending("j"); len(p) != 0 {
		t.Fatalf("pending: %+v", p)
	}
}

// TestGuaranteeNone: records are in the sink on the write; failures are
// counted, not returned; the checkpoint journals at once.
func TestGuaranteeNone(t *testing.T) {
	e := newEnv(t, 1)
	e.jobG("j", twopc.GuaranteeNone, "a")
	s := e.open("j", "w", nil)
	e.write("j", "w", s.Epoch, recs("a", "n1", "n2"))
	wantValues(t, e.a, "n1", "n2")
	e.a.FailWrite = twopctest.ErrInjected
	e.write("j", "w", s.Epoch, recs("a", "lost1", "lost2", "lost3"))
	e.a.FailWrite = nil
	e.a.RejectValue("poison")
	e.write("j", "w", s.Epoch, recs("a", "n3", "poison"))
	if got := e.failedA.Load(); got != 4 {
		t.Fatalf("records failed: %d, want 4", got)
	}
	r := e.checkpoint("j", "w", s.Epoch, 1, "st")
	if r.Status != twopc.StatusCommitted || r.Guarantee != twopc.GuaranteeNone {
		t.Fatalf("checkpoint: %+v", r)
	}
	wantValues(t, e.a, "n1", "n2", "n3")
	if s2 := e.open("j", "w", nil); s2.Checkpoint != 1 || string(s2.State) != "st" {
		t.Fatalf("reopen: %+v", s2)
	}
}

// TestGuaranteeSpec: the guarantee is checked, fixed, and needs commit
// auto and sinks that serve it.
func TestGuaranteeSpec(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	for _, tc := range []struct {
		spec twopc.JobSpec
		want error
	}{
		{twopc.JobSpec{Name: "x", Guarantee: "maybe"}, twopc.ErrInvalid},
		{twopc.JobSpec{Name: "x", Guarantee: twopc.GuaranteeAtLeastOnce, Commit: twopc.ModeExternal}, twopc.ErrInvalid},
		{twopc.JobSpec{Name: "x", Guarantee: twopc.GuaranteeNone, Commit: twopc.ModeExternal}, twopc.ErrInvalid},
	} {
		if _, err := e.c.PutJob(ctx, tc.spec); !errors.Is(err, tc.want) {
			t.Errorf("PutJob %+v: got %v, want %v", tc.spec, err, tc.want)
		}
	}
	if _, err := e.c.Job("x"); !errors.Is(err, twopc.ErrJobNotFound) {
		t.Fatalf("a refused PUT created the job: %v", err)
	}
	e.job("eo", twopc.ModeAuto)
	if info, _ := e.c.Job("eo"); info.Guarantee != twopc.GuaranteeExactlyOnce {
		t.Fatalf("default guarantee: %+v", info)
	}
	e.jobG("al", twopc.GuaranteeAtLeastOnce)
	for _, spec := range []twopc.JobSpec{
		{Name: "eo", Guarantee: twopc.GuaranteeNone},
		{Name: "al", Guarantee: twopc.GuaranteeExactlyOnce},
		{Name: "al"}, // "" is exactly_once
	} {
		if _, err := e.c.PutJob(ctx, spec); !errors.Is(err, twopc.ErrModeConflict) {
			t.Errorf("PutJob %+v: got %v, want a mode conflict", spec, err)
		}
	}
	// The journal refuses a change too (a proposal from another node).
	m := twopc.NewMachine()
	idx := uint64(0)
	apply := func(spec twopc.JobSpec) twopc.ApplyResult {
		idx++
		return m.Apply(idx, twopc.EncodeCommand(twopc.Command{Op: twopc.OpPutJob, Spec: &spec})).(twopc.ApplyResult)
	}
	if r := apply(twopc.JobSpec{Name: "k", Commit: twopc.ModeAuto, Sinks: []string{"a"}, Guarantee: twopc.GuaranteeNone}); r.Code != "" {
		t.Fatalf("machine put: %+v", r)
	}
	if r := apply(twopc.JobSpec{Name: "k", Commit: twopc.ModeAuto, Sinks: []string{"a"}}); r.Code == "" {
		t.Fatal("machine let the guarantee change")
	}
	if r := apply(twopc.JobSpec{Name: "k2", Commit: twopc.ModeExternal, Sinks: []string{"a"}, Guarantee: twopc.GuaranteeAtLeastOnce}); r.Code == "" {
		t.Fatal("machine took at_least_once with external commit")
	}
	if spec, _ := m.JobSpec("k"); spec.Guarantee != twopc.GuaranteeNone {
		t.Fatalf("machine spec: %+v", spec)
	}
}

// TestDirectSinkRequired: a sink without DirectSink cannot serve a
// direct job.
func TestDirectSinkRequired(t *testing.T) {
	j := twopctest.NewJournal(twopc.NewMachine())
	c, err := twopc.NewCoordinator(twopc.Config{Journal: j, Machine: j.Machine(),
		Sinks: map[string]twopc.Sink{"t": txOnly{twopctest.NewSink("t", 1)}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutJob(context.Background(), twopc.JobSpec{Name: "j", Guarantee: twopc.GuaranteeAtLeastOnce}); !errors.Is(err, twopc.ErrInvalid) {
		t.Fatalf("got %v, want invalid", err)
	}
	if _, err := c.PutJob(context.Background(), twopc.JobSpec{Name: "j"}); err != nil {
		t.Fatal(err)
	}
}

// txOnly hides the fake's DirectSink.
type txOnly struct{ *twopctest.Sink }

func (s txOnly) BeginDirect() {}

// TestDirectSessionEnds: every way a session ends closes its direct
// branches: idle forgetting, delete of the writer, the coordinator's Close.
// A rejected record leaves the session usable.
func TestDirectSessionEnds(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_000_000, 0)}
	j := twopctest.NewJournal(twopc.NewMachine())
	a := twopctest.NewSink("a", 1)
	c, err := twopc.NewCoordinator(twopc.Config{Node: "n1", Journal: j, Machine: j.Machine(),
		Sinks: map[string]twopc.Sink{"a": a}, Now: clk.Now, SessionIdleTimeout: time.Minute, RetryInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := c.PutJob(ctx, twopc.JobSpec{Name: "j", Guarantee: twopc.GuaranteeAtLeastOnce}); err != nil {
		t.Fatal(err)
	}
	s, err := c.OpenSession(ctx, "j", "w", nil)
	if err != nil {
		t.Fatal(err)
	}
	a.RejectValue("poison")
	if _, err := c.Write(ctx, "j", "w", s.Epoch, nil, recs("a", "ok1", "poison")); !errors.Is(err, twopc.ErrRecordRejected) {
		t.Fatalf("poison: got %v, want rejected", err)
	}
	a.RejectValue("")
	if _, err := c.Write(ctx, "j", "w", s.Epoch, nil, recs("a", "ok2")); err != nil {
		t.Fatalf("write after a rejected call: %v", err)
	}
	if _, err := c.Checkpoint(ctx, "j", "w", s.Epoch, 1, nil, ""); err != nil {
		t.Fatal(err)
	}
	wantValues(t, a, "ok2")
	if a.Directs() != 1 {
		t.Fatalf("direct branches: %d", a.Directs())
	}
	// Idle: forgotten, branch closed.
	clk.Add(2 * time.Minute)
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for c.Sessions() != 0 || a.Directs() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after the idle timeout: %d sessions, %d direct branches", c.Sessions(), a.Directs())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	ctx = context.Background()
	// Delete of a writer with an open direct session.
	s, err = c.OpenSession(ctx, "j", "w", nil)
	if err != nil || s.Checkpoint != 1 {
		t.Fatalf("reopen: %+v %v", s, err)
	}
	if _, err := c.Write(ctx, "j", "w", s.Epoch, nil, recs("a", "x")); err != nil {
		t.Fatal(err)
	}
	if deleted, err := c.DeleteWriter(ctx, "j", "w"); err != nil || !deleted {
		t.Fatalf("delete: %v %v", deleted, err)
	}
	if a.Directs() != 0 {
		t.Fatalf("direct branches after delete: %d", a.Directs())
	}
	// Close.
	s, err = c.OpenSession(ctx, "j", "w2", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(ctx, "j", "w2", s.Epoch, nil, recs("a", "y")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if a.Directs() != 0 {
		t.Fatalf("direct branches after Close: %d", a.Directs())
	}
	wantValues(t, a, "ok2") // x and y were never flushed
}
