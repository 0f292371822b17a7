package twopc_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// boundedEnv is env with a coordinator whose calls have short timeouts.
func boundedEnv(t *testing.T, to twopc.Timeouts) *env {
	t.Helper()
	e := newEnv(t, 2)
	c, err := twopc.NewCoordinator(twopc.Config{
		Node: "n1", Journal: e.j, Machine: e.j.Machine(),
		Sinks:         map[string]twopc.Sink{"a": e.a, "b": e.b},
		RetryInterval: 5 * time.Millisecond, Metrics: countMetrics{e}, Timeouts: to,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	e.c = c
	return e
}

// within fails the test unless f returns within limit.
func within(t *testing.T, limit time.Duration, what string, f func()) time.Duration {
	t.Helper()
	t0 := time.Now()
	f()
	d := time.Since(t0)
	if d > limit {
		t.Fatalf("%s took %s, want at most %s", what, d, limit)
	}
	return d
}

func TestTimeoutsValidate(t *testing.T) {
	if _, err := twopc.NewCoordinator(twopc.Config{Journal: twopctest.NewJournal(twopc.NewMachine()), Machine: twopc.NewMachine(),
		Sinks: map[string]twopc.Sink{"a": twopctest.NewSink("a", 1)}, Timeouts: twopc.Timeouts{Write: -time.Second}}); !errors.Is(err, twopc.ErrInvalid) {
		t.Fatalf("negative write timeout: got %v, want ErrInvalid", err)
	}
}

func TestHungWriteFailsSessionWithinDeadline(t *testing.T) {
	e := boundedEnv(t, twopc.Timeouts{Write: 300 * time.Millisecond})
	e.job("j", twopc.ModeAuto)
	s := e.open("j", "0", nil)
	e.write("j", "0", s.Epoch, recs("b", "b1")) // an open branch in b, to see it aborted
	e.a.SetHang("write", true)
	var err error
	within(t, 2*time.Second, "hung write", func() {
		_, err = e.c.Write(context.Background(), "j", "0", s.Epoch, nil, recs("a", "a1"))
	})
	if !errors.Is(err, twopc.ErrSinkFailure) || !strings.Contains(err.Error(), "deadline exceeded") {
		t.Fatalf("hung write: got %v, want ErrSinkFailure naming the deadline", err)
	}
	if got := e.b.States()[twopctest.Open]; got != 0 {
		t.Fatalf("after the failed write: %d open branches in b, want 0 (aborted)", got)
	}
	// The session is failed: the app reopens, and the new session works.
	e.a.SetHang("write", false)
	if _, err := e.c.Write(context.Background(), "j", "0", s.Epoch, nil, recs("a", "a2")); !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("write on the failed session: got %v, want ErrSinkFailure", err)
	}
	s2 := e.open("j", "0", nil)
	e.write("j", "0", s2.Epoch, recs("a", "a3"))
	if r := e.checkpoint("j", "0", s2.Epoch, 1, "st"); r.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint after reopen: status %q, want committed", r.Status)
	}
	wantValues(t, e.a, "a3")
	wantValues(t, e.b)
}

func TestHungPrepareFailsCheckpointWithinDeadline(t *testing.T) {
	e := boundedEnv(t, twopc.Timeouts{Checkpoint: 400 * time.Millisecond})
	e.job("j", twopc.ModeAuto)
	s := e.open("j", "0", nil)
	e.write("j", "0", s.Epoch, append(recs("a", "a1"), recs("b", "b1")...))
	e.a.SetHang("prepare", true)
	var err error
	within(t, 2*time.Second, "hung prepare", func() {
		_, err = e.c.Checkpoint(context.Background(), "j", "0", s.Epoch, 1, nil, "")
	})
	if !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("hung prepare: got %v, want ErrSinkFailure", err)
	}
	// Every branch of the checkpoint is aborted (b prepared fine, a hung)
	// and nothing is journaled.
	for _, sk := range []*twopctest.Sink{e.a, e.b} {
		if st := sk.States(); st[twopctest.Open]+st[twopctest.Prepared]+st[twopctest.Committed] != 0 {
			t.Fatalf("sink %s after the failed prepare: %v, want every branch aborted", sk.Name(), st)
		}
	}
	if _, ok := e.j.Machine().CheckpointStatus("j", "0", 1); ok {
		t.Fatal("checkpoint 1 is in the journal after a failed prepare")
	}
	e.a.SetHang("prepare", false)
	s2 := e.open("j", "0", nil)
	if s2.Checkpoint != 0 {
		t.Fatalf("reopen restored checkpoint %d, want 0", s2.Checkpoint)
	}
}

func TestHungCommitAnswersCommittingWithinDeadline(t *testing.T) {
	for _, mode := range []twopc.Mode{twopc.ModeAuto, twopc.ModeExternal} {
		t.Run(string(mode), func(t *testing.T) {
			e := boundedEnv(t, twopc.Timeouts{Checkpoint: 300 * time.Millisecond, Commit: 300 * time.Millisecond})
			e.job("j", mode)
			s := e.open("j", "0", nil)
			e.write("j", "0", s.Epoch, recs("a", "a1"))
			e.a.SetHang("commit", true)
			var status string
			within(t, 2*time.Second, "checkpoint with a hung commit", func() {
				r := e.checkpoint("j", "0", s.Epoch, 1, "st")
				status = r.Status
				if mode == twopc.ModeExternal {
					cr, err := e.c.Commit(context.Background(), "j", 1)
					if err != nil {
						t.Fatal(err)
					}
					status = cr.Status
				}
			})
			if status != twopc.StatusCommitting {
				t.Fatalf("status %q, want %q", status, twopc.StatusCommitting)
			}
			// The decision is durable: once the sink answers again the
			// recovery loop finishes the commit.
			e.a.SetHang("commit", false)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { e.c.Run(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			deadline := time.Now().Add(10 * time.Second)
			for len(e.a.Committed()) == 0 {
				if time.Now().After(deadline) {
					t.Fatal("the recovery loop did not commit within 10s")
				}
				time.Sleep(5 * time.Millisecond)
			}
			wantValues(t, e.a, "a1")
		})
	}
}

func TestCheckpointNumberLimit(t *testing.T) {
	e := newEnv(t, 2)
	e.job("j", twopc.ModeExternal)
	s := e.open("j", "0", nil)
	for _, n := range []int64{0, -1, twopc.MaxCheckpoint + 1, 1<<63 - 1} {
		if _, err := e.c.Checkpoint(context.Background(), "j", "0", s.Epoch, n, nil, ""); !errors.Is(err, twopc.ErrInvalid) {
			t.Errorf("checkpoint %d: got %v, want ErrInvalid", n, err)
		}
		if _, err := e.c.Commit(context.Background(), "j", n); !errors.Is(err, twopc.ErrInvalid) {
			t.Errorf("commit %d: got %v, want ErrInvalid", n, err)
		}
	}
	big := twopc.MaxCheckpoint + 1
	if _, err := e.c.OpenSession(context.Background(), "j", "0", &big); !errors.Is(err, twopc.ErrInvalid) {
		t.Errorf("restore %d: got %v, want ErrInvalid", big, err)
	}
	// The maximum itself is a checkpoint; nothing above it was recorded.
	e.write("j", "0", s.Epoch, recs("a", "a1"))
	if r := e.checkpoint("j", "0", s.Epoch, twopc.MaxCheckpoint, "st"); r.Checkpoint != twopc.MaxCheckpoint {
		t.Fatalf("checkpoint MaxCheckpoint: got %d", r.Checkpoint)
	}
}

func TestCallWaitingForBusyWriterAnswersInTime(t *testing.T) {
	e := boundedEnv(t, twopc.Timeouts{Write: 300 * time.Millisecond, Checkpoint: 2 * time.Second})
	e.job("j", twopc.ModeAuto)
	s := e.open("j", "0", nil)
	e.write("j", "0", s.Epoch, recs("a", "a1"))
	e.a.SetHang("prepare", true)
	done := hungCheckpoint(t, e, s.Epoch)
	var err error
	within(t, time.Second, "write behind a hung checkpoint", func() {
		_, err = e.c.Write(context.Background(), "j", "0", s.Epoch, nil, recs("a", "a2"))
	})
	if !errors.Is(err, twopc.ErrUnavailable) {
		t.Fatalf("write behind a hung checkpoint: got %v, want ErrUnavailable", err)
	}
	if err := <-done; !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("hung checkpoint: got %v, want ErrSinkFailure", err)
	}
	// The lock was handed back: the reopened writer works.
	e.a.SetHang("prepare", false)
	s2 := e.open("j", "0", nil)
	e.write("j", "0", s2.Epoch, recs("a", "a3"))
	e.checkpoint("j", "0", s2.Epoch, 1, "st")
	wantValues(t, e.a, "a3")
}

// TestOpenBehindBusySessionAnswersInTime: a session open whose writer's old
// session is still in a call (a hung prepare) answers ErrUnavailable within
// its own deadline and changes nothing: no new epoch, the old call goes on.
func TestOpenBehindBusySessionAnswersInTime(t *testing.T) {
	e := boundedEnv(t, twopc.Timeouts{Session: 300 * time.Millisecond, Checkpoint: 5 * time.Second})
	e.job("j", twopc.ModeAuto, "a")
	s := e.open("j", "0", nil)
	e.write("j", "0", s.Epoch, recs("a", "a1"))
	e.a.SetHang("prepare", true)
	t.Cleanup(func() { e.a.SetHang("prepare", false) })
	done := hungCheckpoint(t, e, s.Epoch)
	var err error
	within(t, 2*time.Second, "open behind a hung checkpoint", func() {
		_, err = e.c.OpenSession(context.Background(), "j", "0", nil)
	})
	if !errors.Is(err, twopc.ErrUnavailable) {
		t.Fatalf("open behind a hung checkpoint: got %v, want ErrUnavailable", err)
	}
	if wv, _ := e.j.Machine().Writer("j", "0"); wv.Epoch != s.Epoch {
		t.Fatalf("epoch after the refused open: got %d, want %d (unchanged)", wv.Epoch, s.Epoch)
	}
	e.a.SetHang("prepare", false)
	if err := <-done; err != nil {
		t.Fatalf("checkpoint of the old session: %v", err)
	}
	s2 := e.open("j", "0", nil)
	if s2.Checkpoint != 1 || s2.Status != twopc.StatusCommitted {
		t.Fatalf("reopen: got checkpoint %d status %s, want 1 committed", s2.Checkpoint, s2.Status)
	}
	wantValues(t, e.a, "a1")
}

// hungCheckpoint starts checkpoint 1 of writer j/0 (whose sink "a" must hang
// prepares) and returns once its prepare hangs, so the call holds the
// writer; the channel gets the call's error.
func hungCheckpoint(t *testing.T, e *env, epoch uint64) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := e.c.Checkpoint(context.Background(), "j", "0", epoch, 1, nil, "")
		done <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for e.a.Hanging("prepare") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the checkpoint did not start within 5s")
		}
		time.Sleep(time.Millisecond)
	}
	return done
}
