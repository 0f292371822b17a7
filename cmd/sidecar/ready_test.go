package main

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakePinger struct {
	calls atomic.Int64
	err   atomic.Pointer[error]
	hang  atomic.Bool // block until ctx ends, like a stopped server
}

func (p *fakePinger) Ping(ctx context.Context) error {
	p.calls.Add(1)
	if p.hang.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	if e := p.err.Load(); e != nil {
		return *e
	}
	return nil
}

func TestReadinessNamesWhatIsNotReady(t *testing.T) {
	kafka, db := &fakePinger{}, &fakePinger{}
	var leader atomic.Value
	leader.Store("node1")
	now := time.Unix(1000, 0)
	var nowMu sync.Mutex
	r := newReadiness(func() string { return leader.Load().(string) },
		map[string]pinger{"events": kafka, "db": db}, 200*time.Millisecond, time.Second)
	r.now = func() time.Time { nowMu.Lock(); defer nowMu.Unlock(); return now }
	advance := func() { nowMu.Lock(); now = now.Add(2 * time.Second); nowMu.Unlock() }
	ctx := context.Background()

	if err := r.check(ctx); err != nil {
		t.Fatalf("all up: got %v, want ready", err)
	}
	// A probe storm within the cache interval pings nobody again.
	var wg sync.WaitGroup
	for range 200 {
		wg.Add(1)
		go func() { defer wg.Done(); _ = r.check(ctx) }()
	}
	wg.Wait()
	if got := kafka.calls.Load() + db.calls.Load(); got != 2 {
		t.Fatalf("200 probes within the cache interval made %d pings, want 2 (one round)", got)
	}

	// A stopped server: the probe answers within the ping timeout and
	// names the sink.
	kafka.hang.Store(true)
	advance()
	t0 := time.Now()
	err := r.check(ctx)
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("check with a hanging sink took %s, want about the 200ms ping timeout", d)
	}
	if err == nil || !strings.Contains(err.Error(), "sink events not reachable") || strings.Contains(err.Error(), "sink db") {
		t.Fatalf("kafka down: got %v, want only sink events named", err)
	}

	// No leader and a failing database: both named, on one line.
	kafka.hang.Store(false)
	boom := errors.New("connection refused")
	db.err.Store(&boom)
	leader.Store("")
	advance()
	err = r.check(ctx)
	if err == nil || !strings.Contains(err.Error(), "journal has no leader") || !strings.Contains(err.Error(), "sink db not reachable") ||
		strings.Contains(err.Error(), "\n") {
		t.Fatalf("no leader, db down: got %q, want both named on one line", err)
	}

	// Back up: ready again after the cache interval.
	db.err.Store(nil)
	leader.Store("node1")
	advance()
	if err := r.check(ctx); err != nil {
		t.Fatalf("all back: got %v, want ready", err)
	}
}

func TestReadinessProbeGivesUpWithItsContext(t *testing.T) {
	p := &fakePinger{}
	p.hang.Store(true)
	r := newReadiness(func() string { return "n" }, map[string]pinger{"s": p}, 300*time.Millisecond, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	err := r.check(ctx)
	if d := time.Since(t0); err == nil || !strings.Contains(err.Error(), "deadline exceeded") || d > 250*time.Millisecond {
		t.Fatalf("got %v after %s, want the probe's own 50ms deadline", err, d)
	}
}
