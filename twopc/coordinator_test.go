package twopc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// env is a coordinator over an in-memory journal and fake sinks "a" and "b".
type env struct {
	t     *testing.T
	j     *twopctest.Journal
	a, b  *twopctest.Sink
	k     *twopctest.OffsetSink // sink "k" when set (offsets tests)
	c     *twopc.Coordinator
	point atomic.Value // failpoint name that panics with crash{}
	lost  atomic.Int64
	// failed counts RecordsFailed (guarantee none), by sink
	failedA, failedB atomic.Int64
	hook             atomic.Pointer[func(point string)] // called at every failpoint
}

type crash struct{}

type countMetrics struct{ e *env }

func (countMetrics) Records(string, string, int, int)             {}
func (countMetrics) CheckpointDone(string, string, time.Duration) {}
func (countMetrics) CommitRetry(string)                           {}
func (m countMetrics) DataLoss(string, string)                    { m.e.lost.Add(1) }
func (m countMetrics) RecordsFailed(job, sink string, g twopc.Guarantee, n int) {
	if sink == "a" {
		m.e.failedA.Add(int64(n))
	} else {
		m.e.failedB.Add(int64(n))
	}
}

func newEnv(t *testing.T, inflight int) *env {
	e := &env{t: t, j: twopctest.NewJournal(twopc.NewMachine()),
		a: twopctest.NewSink("a", inflight), b: twopctest.NewSink("b", inflight)}
	e.point.Store("")
	e.start()
	return e
}

// start builds a coordinator over the current journal and sinks and runs
// start-up recovery, as a (re)started sidecar does.
func (e *env) start() {
	e.t.Helper()
	sinks := map[string]twopc.Sink{"a": e.a, "b": e.b}
	if e.k != nil {
		sinks["k"] = e.k
	}
	c, err := twopc.NewCoordinator(twopc.Config{
		Node: "n1", Journal: e.j, Machine: e.j.Machine(),
		Sinks:         sinks,
		RetryInterval: 5 * time.Millisecond,
		Metrics:       countMetrics{e},
		Failpoint: func(p string) {
			if h := e.hook.Load(); h != nil {
				(*h)(p)
			}
			if e.point.Load() == p {
				panic(crash{})
			}
		},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := c.Recover(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.c = c
}

// withJournal replaces e's coordinator with one over sinks a and b that
// journals through j (a wrapper of e.j that delays or loses entries).
func (e *env) withJournal(j twopc.Journal) {
	e.t.Helper()
	c, err := twopc.NewCoordinator(twopc.Config{
		Node: "n1", Journal: j, Machine: e.j.Machine(),
		Sinks:         map[string]twopc.Sink{"a": e.a, "b": e.b},
		RetryInterval: 5 * time.Millisecond, Metrics: countMetrics{e},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(c.Close)
	e.c = c
}

// crashAt runs f and expects the failpoint to "kill" the process; then it
// restarts from the journal with the same sinks (their servers survive).
func (e *env) crashAt(point string, f func()) {
	e.t.Helper()
	e.point.Store(point)
	func() {
		defer func() {
			if r := recover(); r != (crash{}) {
				e.t.Fatalf("failpoint %s: got %v, want a crash", point, r)
			}
		}()
		f()
	}()
	e.point.Store("")
	e.j = e.j.Reopen()
	e.start()
}

func (e *env) job(name string, mode twopc.Mode, sinks ...string) {
	e.t.Helper()
	if _, err := e.c.PutJob(context.Background(), twopc.JobSpec{Name: name, Commit: mode, Sinks: sinks}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) open(job, writer string, restore *int64) twopc.SessionInfo {
	e.t.Helper()
	s, err := e.c.OpenSession(context.Background(), job, writer, restore)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

func recs(sink string, vals ...string) []*twopc.Record {
	out := make([]*twopc.Record, len(vals))
	for i, v := range vals {
		out[i] = &twopc.Record{Sink: sink, Value: []byte(v)}
	}
	return out
}

func (e *env) write(job, writer string, epoch uint64, rs []*twopc.Record) {
	e.t.Helper()
	if _, err := e.c.Write(context.Background(), job, writer, epoch, nil, rs); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) checkpoint(job, writer string, epoch uint64, n int64, state string) twopc.CheckpointResult {
	e.t.Helper()
	r, err := e.c.Checkpoint(context.Background(), job, writer, epoch, n, []byte(state), "")
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func wantValues(t *testing.T, s *twopctest.Sink, want ...string) {
	t.Helper()
	got := s.Committed()
	slices.Sort(got)
	w := slices.Clone(want)
	slices.Sort(w)
	if !slices.Equal(got, w) {
		t.Fatalf("sink %s committed %v, want %v", s.Name(), got, w)
	}
}

func TestAutoModeCommitsAndRestores(t *testing.T) {
	e := newEnv(t, 2)
	e.job("j", twopc.ModeAuto)
	s := e.open("j", "0", nil)
	if s.Epoch != 1 || s.Checkpoint != 0 || s.State != nil {
		t.Fatalf("got %+v, want epoch 1, nothing restored", s)
	}
	e.write("j", "0", 1, append(recs("a", "a1", "a2"), recs("b", "b1")...))
	if got := e.a.Committed(); len(got) != 0 {
		t.Fatalf("committed before checkpoint: %v", got)
	}
	r := e.checkpoint("j", "0", 1, 1, "offset=3")
	if r.Status != twopc.StatusCommitted || len(r.Branches) != 2 {
		t.Fatalf("got %+v, want committed with 2 branches", r)
	}
	wantValues(t, e.a, "a1", "a2")
	wantValues(t, e.b, "b1")
	// an empty checkpoint commits too, and repeating it returns the same.
	if r := e.checkpoint("j", "0", 1, 2, "offset=3b"); r.Status != twopc.StatusCommitted {
		t.Fatalf("empty checkpoint: got %s", r.Status)
	}
	if r := e.checkpoint("j", "0", 1, 2, "offset=3b"); r.Checkpoint != 2 || r.Status != twopc.StatusCommitted {
		t.Fatalf("repeat: got %+v", r)
	}
	for _, n := range []int64{1, 0, -3} {
		_, err := e.c.Checkpoint(context.Background(), "j", "0", 1, n, nil, "")
		if !errors.Is(err, twopc.ErrCheckpointOrder) && !errors.Is(err, twopc.ErrInvalid) {
			t.Errorf("checkpoint %d after 2: got %v, want an order or input error", n, err)
		}
	}
	s = e.open("j", "0", nil)
	if s.Epoch != 2 || s.Checkpoint != 2 || string(s.State) != "offset=3b" {
		t.Fatalf("got %+v, want epoch 2 restoring checkpoint 2", s)
	}
	if st := e.a.States(); st[twopctest.Open]+st[twopctest.Prepared] != 0 {
		t.Fatalf("left branches %v", st)
	}
}

func TestSeqAndFencing(t *testing.T) {
	e := newEnv(t, 2)
	e.job("j", twopc.ModeAuto, "a")
	e.open("j", "w", nil)
	ctx := context.Background()
	// The digest stands for the body; the API hashes the raw bytes.
	seq := func(n int64) *twopc.Seq { return &twopc.Seq{N: n, Digest: uint64(1000 + n)} }
	if r, err := e.c.Write(ctx, "j", "w", 1, seq(1), recs("a", "x")); err != nil || r.Accepted != 1 {
		t.Fatalf("got %+v %v", r, err)
	}
	if r, err := e.c.Write(ctx, "j", "w", 1, seq(1), recs("a", "x")); err != nil || !r.Duplicate {
		t.Fatalf("repeat seq: got %+v %v, want duplicate", r, err)
	}
	other := &twopc.Seq{N: 1, Digest: 7}
	if r, err := e.c.Write(ctx, "j", "w", 1, other, recs("a", "x2")); !errors.Is(err, twopc.ErrSeqConflict) {
		t.Fatalf("repeat seq with another body: got %+v %v, want ErrSeqConflict", r, err)
	}
	if _, err := e.c.Write(ctx, "j", "w", 1, seq(0), recs("a", "y")); !errors.Is(err, twopc.ErrSeqConflict) {
		t.Fatalf("lower seq: got %v, want ErrSeqConflict", err)
	}
	// records without a sink go to the job's only sink
	if _, err := e.c.Write(ctx, "j", "w", 1, seq(2), []*twopc.Record{{Value: []byte("z")}}); err != nil {
		t.Fatal(err)
	}
	// bad input changes nothing: unknown sink, invalid record
	for _, bad := range [][]*twopc.Record{recs("b", "no"), {{Sink: "a"}}, recs("nope", "no"), {nil}} {
		if _, err := e.c.Write(ctx, "j", "w", 1, seq(3), bad); !errors.Is(err, twopc.ErrInvalid) && !errors.Is(err, twopc.ErrUnknownSink) {
			t.Errorf("bad records %v: got %v", bad, err)
		}
	}
	// a new session fences the old one and aborts its open branch
	e.open("j", "w", nil)
	if _, err := e.c.Write(ctx, "j", "w", 1, nil, recs("a", "late")); !errors.Is(err, twopc.ErrSessionFenced) {
		t.Fatalf("old epoch: got %v, want ErrSessionFenced", err)
	}
	if _, err := e.c.Write(ctx, "j", "w", 7, nil, recs("a", "x")); !errors.Is(err, twopc.ErrNoSession) {
		t.Fatalf("future epoch: got %v, want ErrNoSession", err)
	}
	if _, err := e.c.Write(ctx, "nojob", "w", 1, nil, recs("a", "x")); !errors.Is(err, twopc.ErrJobNotFound) {
		t.Fatalf("unknown job: got %v", err)
	}
	e.checkpoint("j", "w", 2, 1, "")
	wantValues(t, e.a)
	if got := len(e.a.Branches(twopctest.Aborted)); got != 1 {
		t.Fatalf("got %d aborted branches, want the fenced one", got)
	}
}

func TestPrepareFailureAbortsAll(t *testing.T) {
	e := newEnv(t, 2)
	e.job("j", twopc.ModeAuto)
	e.open("j", "0", nil)
	e.write("j", "0", 1, append(recs("a", "a1"), recs("b", "b1")...))
	e.b.FailPrepare = twopctest.ErrInjected
	_, err := e.c.Checkpoint(context.Background(), "j", "0", 1, 1, nil, "")
	if !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("got %v, want ErrSinkFailure", err)
	}
	if got := e.a.States(); got[twopctest.Aborted] != 1 || got[twopctest.Prepared] != 0 {
		t.Fatalf("sink a: got %v, want its branch aborted", got)
	}
	if _, err := e.c.Write(context.Background(), "j", "0", 1, nil, recs("a", "x")); !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("write after failure: got %v, want the writer told to reopen", err)
	}
	e.b.FailPrepare = nil
	e.open("j", "0", nil)
	e.write("j", "0", 2, recs("a", "again"))
	e.checkpoint("j", "0", 2, 1, "")
	wantValues(t, e.a, "again")
	wantValues(t, e.b)
}

func TestCommitFailureIsRetried(t *testing.T) {
	e := newEnv(t, 2)
	e.job("j", twopc.ModeAuto, "a")
	e.open("j", "0", nil)
	e.write("j", "0", 1, recs("a", "v"))
	e.a.FailCommit = twopctest.ErrInjected
	e.a.FailResolve = twopctest.ErrInjected
	if r := e.checkpoint("j", "0", 1, 1, ""); r.Status != twopc.StatusCommitting {
		t.Fatalf("got %s, want committing", r.Status)
	}
	wantValues(t, e.a)
	e.a.FailResolve = nil
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.c.Run(ctx); close(done) }()
	// The sink commits before the journal learns it (RESOLVED): wait for
	// both, or the repeat below can still read committing.
	waitFor(t, func() bool {
		r, ok := e.j.Machine().CheckpointStatus("j", "0", 1)
		return len(e.a.Committed()) == 1 && ok && r.Status == twopc.StatusCommitted
	})
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop after cancel")
	}
	if r := e.checkpoint("j", "0", 1, 1, ""); r.Status != twopc.StatusCommitted {
		t.Fatalf("got %s, want committed", r.Status)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCrashAtEveryStepAutoMode(t *testing.T) {
	for _, tc := range []struct {
		point   string
		visible bool // are the records of checkpoint 2 committed after recovery?
	}{
		{"after-write", false},
		{"after-prepare", false},
		{"after-journal", true},
		{"after-commit-first-sink", true},
	} {
		t.Run(tc.point, func(t *testing.T) {
			e := newEnv(t, 2)
			e.job("j", twopc.ModeAuto)
			e.open("j", "0", nil)
			e.write("j", "0", 1, append(recs("a", "a1"), recs("b", "b1")...))
			e.checkpoint("j", "0", 1, 1, "s1")
			e.crashAt(tc.point, func() {
				if _, err := e.c.Write(context.Background(), "j", "0", 1, nil, append(recs("a", "a2"), recs("b", "b2")...)); err != nil {
					t.Fatal(err)
				}
				e.c.Checkpoint(context.Background(), "j", "0", 1, 2, []byte("s2"), "")
			})
			// the old epoch is lost after the restart
			if _, err := e.c.Write(context.Background(), "j", "0", 1, nil, recs("a", "x")); !errors.Is(err, twopc.ErrSessionLost) {
				t.Fatalf("old session after restart: got %v, want ErrSessionLost", err)
			}
			s := e.open("j", "0", nil)
			if tc.visible {
				if s.Checkpoint != 2 || string(s.State) != "s2" {
					t.Fatalf("got restore %d %q, want 2 s2", s.Checkpoint, s.State)
				}
				wantValues(t, e.a, "a1", "a2")
				wantValues(t, e.b, "b1", "b2")
			} else {
				if s.Checkpoint != 1 || string(s.State) != "s1" {
					t.Fatalf("got restore %d %q, want 1 s1", s.Checkpoint, s.State)
				}
				wantValues(t, e.a, "a1")
				wantValues(t, e.b, "b1")
			}
			for _, sk := range []*twopctest.Sink{e.a, e.b} {
				if st := sk.States(); st[twopctest.Open]+st[twopctest.Prepared] != 0 {
					t.Fatalf("sink %s left %v", sk.Name(), st)
				}
			}
			// the writer replays and goes on exactly once
			e.write("j", "0", s.Epoch, recs("a", "a3"))
			e.checkpoint("j", "0", s.Epoch, 3, "s3")
			if !slices.Contains(e.a.Committed(), "a3") {
				t.Fatal("a3 not committed after recovery")
			}
		})
	}
}

func TestExternalMode(t *testing.T) {
	e := newEnv(t, 2)
	e.job("x", twopc.ModeExternal)
	ctx := context.Background()
	for _, w := range []string{"0", "1"} {
		e.open("x", w, nil)
		e.write("x", w, 1, recs("a", "c1-"+w))
		if r := e.checkpoint("x", w, 1, 1, "s1"); r.Status != twopc.StatusPrepared {
			t.Fatalf("got %s, want prepared", r.Status)
		}
	}
	wantValues(t, e.a)
	// backpressure: two prepared checkpoints fill writer 0's two slots
	e.write("x", "0", 1, recs("a", "c2-0"))
	e.checkpoint("x", "0", 1, 2, "s2")
	if _, err := e.c.Write(ctx, "x", "0", 1, nil, recs("a", "c3-0")); !errors.Is(err, twopc.ErrBackpressure) {
		t.Fatalf("third in flight: got %v, want ErrBackpressure", err)
	}
	if _, err := e.c.Commit(ctx, "x", 0); !errors.Is(err, twopc.ErrInvalid) {
		t.Fatalf("commit 0: got %v", err)
	}
	r, err := e.c.Commit(ctx, "x", 1)
	if err != nil || r.Status != twopc.StatusCommitted {
		t.Fatalf("commit 1: got %+v %v", r, err)
	}
	wantValues(t, e.a, "c1-0", "c1-1")
	if r, err := e.c.Commit(ctx, "x", 1); err != nil || r.Status != twopc.StatusCommitted {
		t.Fatalf("repeated commit: got %+v %v", r, err)
	}
	// crash with checkpoint 2 prepared; the app restores 2 on reopen
	e.crashAt("after-prepare", func() {
		e.c.Checkpoint(ctx, "x", "1", 1, 2, nil, "")
	})
	two := int64(2)
	s := e.open("x", "0", &two)
	if s.Checkpoint != 2 || string(s.State) != "s2" {
		t.Fatalf("got %+v, want checkpoint 2", s)
	}
	wantValues(t, e.a, "c1-0", "c1-1", "c2-0")
	if _, err := e.c.Commit(ctx, "nojob", 1); !errors.Is(err, twopc.ErrJobNotFound) {
		t.Fatalf("got %v", err)
	}
}

func TestExternalAbortAndRestoreAborts(t *testing.T) {
	e := newEnv(t, 4)
	e.job("x", twopc.ModeExternal, "a")
	ctx := context.Background()
	e.open("x", "0", nil)
	for n := int64(1); n <= 3; n++ {
		e.write("x", "0", 1, recs("a", fmt.Sprint("v", n)))
		e.checkpoint("x", "0", 1, n, fmt.Sprint("s", n))
	}
	if r, err := e.c.Abort(ctx, "x", 3); err != nil || r.Status != twopc.StatusAborted {
		t.Fatalf("abort 3: got %+v %v", r, err)
	}
	one := int64(1)
	s := e.open("x", "0", &one) // restore 1: 1 commits, 2 aborts
	if s.Checkpoint != 1 {
		t.Fatalf("got %+v", s)
	}
	wantValues(t, e.a, "v1")
	if st := e.a.States(); st[twopctest.Aborted] != 2 || st[twopctest.Prepared] != 0 {
		t.Fatalf("got %v, want 2 aborted", st)
	}
	if _, err := e.c.OpenSession(ctx, "x", "0", func() *int64 { n := int64(-1); return &n }()); !errors.Is(err, twopc.ErrInvalid) {
		t.Fatalf("negative restore: got %v", err)
	}
	if _, err := e.c.Commit(ctx, "x", 9); err != nil {
		t.Fatal(err)
	}
	e.job("auto", twopc.ModeAuto, "a")
	if _, err := e.c.Commit(ctx, "auto", 1); !errors.Is(err, twopc.ErrModeConflict) {
		t.Fatalf("commit in auto mode: got %v, want ErrModeConflict", err)
	}
}

// expire aborts every prepared branch of s, as a broker's transaction
// timeout would.
func expire(s *twopctest.Sink) {
	for _, id := range s.Branches(twopctest.Prepared) {
		s.Expire(id)
	}
}

func TestDataLossIsReported(t *testing.T) {
	ctx := context.Background()
	t.Run("external commit", func(t *testing.T) {
		e := newEnv(t, 2)
		e.job("x", twopc.ModeExternal, "a")
		e.open("x", "0", nil)
		e.write("x", "0", 1, recs("a", "doomed"))
		e.checkpoint("x", "0", 1, 1, "")
		expire(e.a)
		for i := range 2 { // a retry of the call must not read as committed
			r, err := e.c.Commit(ctx, "x", 1)
			if !errors.Is(err, twopc.ErrDataLoss) || r.Status != twopc.StatusDataLoss || !slices.Equal(r.DataLoss["0"], []int64{1}) {
				t.Fatalf("commit (call %d): got %+v %v, want data_loss of 0@1 and ErrDataLoss", i+1, r, err)
			}
		}
		cps, _ := e.c.Checkpoints("x")
		if len(cps) != 1 || cps[0].Status != twopc.StatusDataLoss {
			t.Fatalf("got %+v, want one data_loss checkpoint", cps)
		}
		if e.lost.Load() != 1 {
			t.Fatalf("got %d data-loss events, want 1", e.lost.Load())
		}
	})
	t.Run("auto checkpoint", func(t *testing.T) {
		e := newEnv(t, 2)
		e.job("j", twopc.ModeAuto)
		e.open("j", "0", nil)
		e.write("j", "0", 1, append(recs("a", "lost"), recs("b", "kept")...))
		h := func(p string) {
			if p == "after-journal" {
				expire(e.a)
			}
		}
		e.hook.Store(&h)
		r, err := e.c.Checkpoint(ctx, "j", "0", 1, 1, []byte("s1"), "")
		e.hook.Store(nil)
		if !errors.Is(err, twopc.ErrDataLoss) || r.Status != twopc.StatusDataLoss || len(r.Branches) != 2 ||
			r.Branches[0].Status != twopc.StatusDataLoss || r.Branches[1].Status != twopc.StatusCommitted {
			t.Fatalf("checkpoint: got %+v %v, want data_loss in a, committed in b, and ErrDataLoss", r, err)
		}
		r, err = e.c.Checkpoint(ctx, "j", "0", 1, 1, []byte("s1"), "")
		if !errors.Is(err, twopc.ErrDataLoss) || r.Status != twopc.StatusDataLoss {
			t.Fatalf("repeated checkpoint: got %+v %v, want data_loss again", r, err)
		}
		s := e.open("j", "0", nil)
		if s.Checkpoint != 1 || s.Status != twopc.StatusDataLoss || !slices.Equal(s.DataLoss, []int64{1}) {
			t.Fatalf("reopen: got %+v, want checkpoint 1 with status data_loss", s)
		}
	})
	t.Run("restore", func(t *testing.T) {
		e := newEnv(t, 2)
		e.job("x", twopc.ModeExternal, "a")
		if s := e.open("x", "0", nil); s.Status != twopc.StatusNone || len(s.DataLoss) != 0 {
			t.Fatalf("fresh open: got %+v, want status none", s)
		}
		e.write("x", "0", 1, recs("a", "v1"))
		e.checkpoint("x", "0", 1, 1, "s1")
		e.write("x", "0", 1, recs("a", "v2"))
		e.checkpoint("x", "0", 1, 2, "s2")
		expire(e.a) // both prepared branches
		one := int64(1)
		s := e.open("x", "0", &one) // decides 1 commit (lost), 2 abort
		if s.Checkpoint != 1 || s.Status != twopc.StatusDataLoss || !slices.Equal(s.DataLoss, []int64{1}) {
			t.Fatalf("restore 1: got %+v, want checkpoint 1 with status data_loss", s)
		}
		// The next open restores the same lost checkpoint: still said.
		if s := e.open("x", "0", nil); s.Status != twopc.StatusDataLoss || !slices.Equal(s.DataLoss, []int64{1}) {
			t.Fatalf("second open: got %+v, want data_loss", s)
		}
	})
	t.Run("clean restore", func(t *testing.T) {
		e := newEnv(t, 2)
		e.job("x", twopc.ModeExternal, "a")
		e.open("x", "0", nil)
		e.write("x", "0", 1, recs("a", "v1"))
		e.checkpoint("x", "0", 1, 1, "s1")
		one := int64(1)
		if s := e.open("x", "0", &one); s.Checkpoint != 1 || s.Status != twopc.StatusCommitted || len(s.DataLoss) != 0 {
			t.Fatalf("restore 1: got %+v, want committed", s)
		}
		// A sink that cannot be reached leaves the restored checkpoint
		// decided but unconfirmed.
		e.write("x", "0", 2, recs("a", "v2"))
		e.checkpoint("x", "0", 2, 2, "s2")
		e.a.FailCommit, e.a.FailResolve = twopctest.ErrInjected, twopctest.ErrInjected
		two := int64(2)
		if s := e.open("x", "0", &two); s.Checkpoint != 2 || s.Status != twopc.StatusCommitting {
			t.Fatalf("restore 2: got %+v, want committing", s)
		}
	})
}

func TestRepeatedCheckpoint(t *testing.T) {
	e := newEnv(t, 2)
	e.job("j", twopc.ModeAuto, "a")
	ctx := context.Background()
	e.open("j", "0", nil)
	e.write("j", "0", 1, recs("a", "v1"))
	e.checkpoint("j", "0", 1, 1, "s1")
	if r := e.checkpoint("j", "0", 1, 1, "s1"); r.Status != twopc.StatusCommitted || r.Checkpoint != 1 {
		t.Fatalf("retry: got %+v, want committed", r)
	}
	if _, err := e.c.Checkpoint(ctx, "j", "0", 1, 1, []byte("other"), ""); !errors.Is(err, twopc.ErrCheckpointOrder) {
		t.Fatalf("repeat with another state: got %v, want ErrCheckpointOrder", err)
	}
	e.write("j", "0", 1, recs("a", "v2"))
	if _, err := e.c.Checkpoint(ctx, "j", "0", 1, 1, []byte("s1"), ""); !errors.Is(err, twopc.ErrCheckpointOrder) {
		t.Fatalf("repeat after a write: got %v, want ErrCheckpointOrder", err)
	}
	wantValues(t, e.a, "v1")
	// The refused repeats changed nothing: the record goes into 2.
	e.checkpoint("j", "0", 1, 2, "s2")
	wantValues(t, e.a, "v1", "v2")
	if s := e.open("j", "0", nil); s.Checkpoint != 2 || string(s.State) != "s2" {
		t.Fatalf("reopen: got %+v, want checkpoint 2 with s2", s)
	}
	// A write that failed after checkpoint 3 aborted the session's records:
	// the repeat of 3 says to reopen, not that all is well.
	e.checkpoint("j", "0", 2, 3, "s3")
	e.a.FailWrite = twopctest.ErrInjected
	if _, err := e.c.Write(ctx, "j", "0", 2, nil, recs("a", "v4")); !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("failing write: got %v, want ErrSinkFailure", err)
	}
	e.a.FailWrite = nil
	if _, err := e.c.Checkpoint(ctx, "j", "0", 2, 3, []byte("s3"), ""); !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("repeat after a failed write: got %v, want ErrSinkFailure", err)
	}
}

func TestModeChange(t *testing.T) {
	e := newEnv(t, 2)
	ctx := context.Background()
	e.job("j", twopc.ModeAuto, "a")
	e.open("j", "0", nil)
	e.job("j", twopc.ModeAuto, "a") // the same spec again is fine
	if _, err := e.c.PutJob(ctx, twopc.JobSpec{Name: "j", Commit: twopc.ModeExternal, Sinks: []string{"a"}}); !errors.Is(err, twopc.ErrModeConflict) {
		t.Fatalf("mode change with an open session: got %v, want ErrModeConflict", err)
	}
	if j, _ := e.c.Job("j"); j.Commit != twopc.ModeAuto {
		t.Fatalf("mode after the refused change: got %s, want auto", j.Commit)
	}
	// Another job's sessions do not count.
	e.job("k", twopc.ModeAuto, "a")
	e.job("k", twopc.ModeExternal, "a")
	// A restarted sidecar has no open sessions.
	e.j = e.j.Reopen()
	e.start()
	e.job("j", twopc.ModeExternal, "a")
	if j, _ := e.c.Job("j"); j.Commit != twopc.ModeExternal {
		t.Fatalf("mode after restart: got %s, want external", j.Commit)
	}
}

func TestBadJobs(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	for _, spec := range []twopc.JobSpec{
		{Name: "-bad"}, {Name: "j", Commit: "maybe"}, {Name: "j", Sinks: []string{"zzz"}}, {Name: "j", Sinks: []string{"a", "a"}},
	} {
		if _, err := e.c.PutJob(ctx, spec); !errors.Is(err, twopc.ErrInvalid) && !errors.Is(err, twopc.ErrUnknownSink) {
			t.Errorf("spec %+v: got %v", spec, err)
		}
	}
	if got := e.c.Jobs(); len(got) != 0 {
		t.Fatalf("bad specs created %v", got)
	}
	j, err := e.c.PutJob(ctx, twopc.JobSpec{Name: "j"})
	if err != nil || j.Commit != twopc.ModeAuto || len(j.Sinks) != 2 {
		t.Fatalf("defaults: got %+v %v", j, err)
	}
	if _, err := e.c.OpenSession(ctx, "j", "bad writer", nil); !errors.Is(err, twopc.ErrInvalid) {
		t.Fatalf("got %v", err)
	}
	e.j.Fail = twopctest.ErrInjected
	if _, err := e.c.OpenSession(ctx, "j", "0", nil); !errors.Is(err, twopc.ErrUnavailable) {
		t.Fatalf("no journal: got %v, want ErrUnavailable", err)
	}
}

// recordingJournal keeps the ops of the entries the machine accepted, in
// order.
type recordingJournal struct {
	*twopctest.Journal
	mu  sync.Mutex
	ops []string // "open_session", or "put_job:<mode>"
}

func (r *recordingJournal) Propose(ctx context.Context, cmd []byte) (twopc.ApplyResult, error) {
	r.mu.Lock() // one at a time, so ops are in the journal's order
	defer r.mu.Unlock()
	v, err := r.Journal.Propose(ctx, cmd)
	if err != nil || v.Err() != nil || v.Duplicate {
		return v, err
	}
	var c twopc.Command
	if err := json.Unmarshal(cmd, &c); err != nil {
		return twopc.ApplyResult{}, err
	}
	switch c.Op {
	case twopc.OpOpenSession:
		r.ops = append(r.ops, string(c.Op))
	case twopc.OpPutJob:
		r.ops = append(r.ops, string(c.Op)+":"+string(c.Spec.Commit))
	}
	return v, nil
}

// TestModeChangeRacesSessionOpen: a mode change racing a session open
// either wins (journaled before the open) or is refused; it is never
// journaled after a session of the job was opened.
func TestModeChangeRacesSessionOpen(t *testing.T) {
	ctx := context.Background()
	for round := range 50 {
		j := &recordingJournal{Journal: twopctest.NewJournal(twopc.NewMachine())}
		c, err := twopc.NewCoordinator(twopc.Config{Node: "n1", Journal: j, Machine: j.Machine(),
			Sinks: map[string]twopc.Sink{"a": twopctest.NewSink("a", 1)}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.PutJob(ctx, twopc.JobSpec{Name: "j", Commit: twopc.ModeAuto}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			if _, err := c.OpenSession(ctx, "j", "w", nil); err != nil {
				t.Errorf("open: %v", err)
			}
		}()
		go func() {
			defer wg.Done()
			_, err := c.PutJob(ctx, twopc.JobSpec{Name: "j", Commit: twopc.ModeExternal})
			if err != nil && !errors.Is(err, twopc.ErrModeConflict) {
				t.Errorf("mode change: got %v, want success or ErrModeConflict", err)
			}
		}()
		wg.Wait()
		c.Close()
		opened := false
		for _, op := range j.ops {
			switch {
			case op == string(twopc.OpOpenSession):
				opened = true
			case opened && op == string(twopc.OpPutJob)+":"+string(twopc.ModeExternal):
				t.Fatalf("round %d: the mode changed after a session was opened (journal %v)", round, j.ops)
			}
		}
	}
}
