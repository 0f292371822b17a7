package twopc_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/txsink/txsink/internal/restest"
	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// fakeClock is a settable clock for Config.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// limitEnv is a coordinator over an in-memory journal and sink "a" with
// the given limits and a fake clock.
func limitEnv(t *testing.T, mod func(*twopc.Config)) (*twopc.Coordinator, *fakeClock) {
	t.Helper()
	clk := &fakeClock{t: time.Unix(1_000_000, 0)}
	j := twopctest.NewJournal(twopc.NewMachine())
	cfg := twopc.Config{Node: "n1", Journal: j, Machine: j.Machine(),
		Sinks: map[string]twopc.Sink{"a": twopctest.NewSink("a", 2)}, Now: clk.Now}
	mod(&cfg)
	c, err := twopc.NewCoordinator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if _, err := c.PutJob(context.Background(), twopc.JobSpec{Name: "j", Commit: twopc.ModeAuto}); err != nil {
		t.Fatal(err)
	}
	return c, clk
}

func wantLimit(t *testing.T, what string, err error, limit string) {
	t.Helper()
	if !errors.Is(err, twopc.ErrBackpressure) || !strings.Contains(err.Error(), limit) {
		t.Fatalf("%s: got %v, want ErrBackpressure naming %s", what, err, limit)
	}
}

func TestMaxWritersPerJob(t *testing.T) {
	c, _ := limitEnv(t, func(cfg *twopc.Config) { cfg.MaxWritersPerJob = 2 })
	ctx := context.Background()
	for _, w := range []string{"w1", "w2", "w1"} {
		if _, err := c.OpenSession(ctx, "j", w, nil); err != nil {
			t.Fatalf("open %s: %v", w, err)
		}
	}
	_, err := c.OpenSession(ctx, "j", "w3", nil)
	wantLimit(t, "third writer", err, "max_writers_per_job")
	if info, _ := c.Job("j"); len(info.Writers) != 2 {
		t.Fatalf("writers after a refused open: got %d, want 2 (a refused open changes nothing)", len(info.Writers))
	}
	// Another job has its own count.
	if _, err := c.PutJob(ctx, twopc.JobSpec{Name: "k", Commit: twopc.ModeAuto}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.OpenSession(ctx, "k", "w3", nil); err != nil {
		t.Fatalf("writer of another job: %v", err)
	}
}

func TestMaxSessionsAndIdleSessionsForgotten(t *testing.T) {
	c, clk := limitEnv(t, func(cfg *twopc.Config) {
		cfg.MaxSessions = 2
		cfg.SessionIdleTimeout = time.Minute
	})
	ctx := context.Background()
	s1, err := c.OpenSession(ctx, "j", "w1", nil)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := c.OpenSession(ctx, "j", "w2", nil)
	if err != nil {
		t.Fatal(err)
	}
	// w2 has an open branch: it is not idle however long it waits.
	if _, err := c.Write(ctx, "j", "w2", s2.Epoch, nil, recs("a", "x")); err != nil {
		t.Fatal(err)
	}
	_, err = c.OpenSession(ctx, "j", "w3", nil)
	wantLimit(t, "third session", err, "max_sessions")
	// Reopening a writer that has a session replaces it.
	if s1, err = c.OpenSession(ctx, "j", "w1", nil); err != nil {
		t.Fatalf("reopen at the limit: %v", err)
	}

	clk.Add(2 * time.Minute)
	if _, err := c.OpenSession(ctx, "j", "w3", nil); err != nil {
		t.Fatalf("open after w1 was idle past the timeout: %v", err)
	}
	_, err = c.Write(ctx, "j", "w1", s1.Epoch, nil, recs("a", "y"))
	if !errors.Is(err, twopc.ErrSessionLost) {
		t.Fatalf("write of the forgotten session: got %v, want ErrSessionLost", err)
	}
	if _, err := c.Checkpoint(ctx, "j", "w2", s2.Epoch, 1, nil, ""); err != nil {
		t.Fatalf("the session with an open branch was forgotten: %v", err)
	}
	if n := c.Sessions(); n != 2 {
		t.Fatalf("sessions: got %d, want 2", n)
	}
	// The forgotten writer reopens (its journal state is intact).
	if _, err := c.OpenSession(ctx, "j", "w1", nil); !errors.Is(err, twopc.ErrBackpressure) {
		t.Fatalf("reopen of w1 with two live sessions: got %v, want backpressure", err)
	}
}

// TestSessionMemoryFlat opens and uses 200 writers, lets them idle past
// the timeout and shows the coordinator's goroutines and live heap back at
// the baseline (the in-memory sessions are forgotten; the journal keeps the
// writers).
func TestSessionMemoryFlat(t *testing.T) {
	const writers = 200
	c, clk := limitEnv(t, func(cfg *twopc.Config) { cfg.SessionIdleTimeout, cfg.RetryInterval = time.Minute, 5*time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base := restest.Measure()
	for i := range writers {
		w := fmt.Sprintf("w%d", i)
		s, err := c.OpenSession(ctx, "j", w, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(ctx, "j", w, s.Epoch, nil, recs("a", strings.Repeat("v", 1024))); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Checkpoint(ctx, "j", w, s.Epoch, 1, []byte(strings.Repeat("s", 1024)), ""); err != nil {
			t.Fatal(err)
		}
	}
	peak := restest.Measure()
	if n := c.Sessions(); n != writers {
		t.Fatalf("sessions: got %d, want %d", n, writers)
	}
	clk.Add(2 * time.Minute)
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for c.Sessions() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("sessions after the idle timeout: got %d, want 0", c.Sessions())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	after := restest.WaitBelow(t, base, 2, 5*time.Second)
	t.Logf("%d writers: baseline %v; in use %v (%d sessions); idle %v", writers, base, peak, writers, after)
}

// fullSink answers backpressure from Begin while full is set, as the MySQL
// sink does when its connection pool is exhausted.
type fullSink struct {
	*twopctest.Sink
	full bool
}

func (s *fullSink) Begin(ctx context.Context, id twopc.BranchID) (twopc.Branch, error) {
	if s.full {
		return nil, fmt.Errorf("%w: all connections in use (max_conns)", twopc.ErrBackpressure)
	}
	return s.Sink.Begin(ctx, id)
}

// TestSinkBackpressureKeepsSession: a sink out of a bounded resource at
// Begin answers backpressure; the call changes nothing and the session
// stays usable (it is not failed like after a sink error).
func TestSinkBackpressureKeepsSession(t *testing.T) {
	sink := &fullSink{Sink: twopctest.NewSink("a", 2), full: true}
	c, _ := limitEnv(t, func(cfg *twopc.Config) { cfg.Sinks = map[string]twopc.Sink{"a": sink} })
	ctx := context.Background()
	s, err := c.OpenSession(ctx, "j", "w", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Write(ctx, "j", "w", s.Epoch, nil, recs("a", "x"))
	wantLimit(t, "write while the sink is full", err, "max_conns")
	sink.full = false
	if _, err := c.Write(ctx, "j", "w", s.Epoch, nil, recs("a", "y")); err != nil {
		t.Fatalf("write after backpressure: %v", err)
	}
	if _, err := c.Checkpoint(ctx, "j", "w", s.Epoch, 1, nil, ""); err != nil {
		t.Fatal(err)
	}
	wantValues(t, sink.Sink, "y")
}
