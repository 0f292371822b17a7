package mysql

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/txsink/txsink/internal/restest"
	"github.com/txsink/txsink/twopc"
)

// serverConns counts the server's connections to this test's database (the
// server is shared with other tests and packages; the test's own connection
// is in both counts).
func (e *env) serverConns() int {
	e.t.Helper()
	var n int
	if err := e.db.QueryRow("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE()").Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// TestConnectionCap: 200 writers begin a branch at once against a sink
// capped at 8 connections. 8 get one; the others get ErrBackpressure (not an
// error from the server); the server sees at most MaxConns+ReservedConns
// more connections; recovery (Fence, Resolve) still runs on the reserved
// pool while every branch connection is pinned; afterwards goroutines and
// fds return to the baseline.
func TestConnectionCap(t *testing.T) {
	const writers, maxConns, reserved = 200, 8, 2
	e := testEnv(t)
	s := e.sink("db", func(c *Config) { c.MaxConns, c.ReservedConns, c.ConnWait = maxConns, reserved, 100*time.Millisecond })
	ctx := ctxT(t, 60*time.Second)
	e.db.SetMaxOpenConns(1)
	serverBase := e.serverConns()
	base := restest.Measure()

	var (
		mu     sync.Mutex
		held   []twopc.Branch
		backpr int
		other  []error
		wg     sync.WaitGroup
	)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := fmt.Sprintf("w%d", i)
			b, err := s.Begin(ctx, e.id(w, 1, 1, 0))
			if err == nil {
				err = b.Write(ctx, []*twopc.Record{put(w, i)})
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				held = append(held, b)
			case errors.Is(err, twopc.ErrBackpressure):
				backpr++
			default:
				other = append(other, err)
			}
		}()
	}
	wg.Wait()
	peak := restest.Measure()
	serverPeak := e.serverConns()
	t.Logf("%d writers, max_conns %d: %d branches, %d backpressure, %d other errors; server connections %d → %d; %v → %v",
		writers, maxConns, len(held), backpr, len(other), serverBase, serverPeak, base, peak)
	if len(other) > 0 {
		t.Fatalf("errors other than backpressure: %v", errors.Join(other...))
	}
	if len(held) != maxConns || backpr != writers-maxConns {
		t.Fatalf("got %d branches and %d backpressure answers, want %d and %d", len(held), backpr, maxConns, writers-maxConns)
	}
	if got, limit := serverPeak-serverBase, maxConns+reserved; got > limit {
		t.Fatalf("server connections grew by %d, want at most max_conns+reserved_conns = %d", got, limit)
	}

	// Recovery while every branch connection is pinned: prepare one branch
	// and detach it (its process "died"), refill the pool with a new
	// branch, then resolve the detached one and fence another writer.
	a := held[0]
	h, err := a.Prepare(ctx)
	if err != nil {
		t.Fatal(err)
	}
	aid := a.(*branch).id
	killPreparer(a)
	refill, err := s.Begin(ctx, e.id("refill", 1, 1, 0))
	if err != nil {
		t.Fatalf("Begin after a connection was freed: %v", err)
	}
	held[0] = refill
	if _, err := s.Begin(ctx, e.id("more", 1, 1, 0)); !errors.Is(err, twopc.ErrBackpressure) {
		t.Fatalf("Begin with a full pool: got %v, want ErrBackpressure", err)
	}
	rctx := ctxT(t, 10*time.Second)
	if err := s.Resolve(rctx, aid, h, true); err != nil {
		t.Fatalf("Resolve with every branch connection pinned: %v", err)
	}
	if err := s.Fence(rctx, e.job, "someone", nil); err != nil {
		t.Fatalf("Fence with every branch connection pinned: %v", err)
	}
	if n := e.count("k = '" + aid.Writer + "'"); n != 1 {
		t.Fatalf("rows of the resolved branch: got %d, want 1", n)
	}
	for _, b := range held {
		if err := b.Abort(ctx); err != nil {
			t.Fatal(err)
		}
	}
	after := restest.WaitBelow(t, base, 2*(maxConns+reserved), 10*time.Second)
	t.Logf("after aborting every branch: %v", after)
}
