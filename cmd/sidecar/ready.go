package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// Defaults of readiness.
const (
	defaultReadyTimeout = 2 * time.Second // one sink ping
	defaultReadyCache   = time.Second     // how long a round of pings is reused
)

// pinger is a sink that can tell whether its server answers.
type pinger interface {
	Ping(ctx context.Context) error
}

// readiness answers /readyz: the journal has a leader and every sink's
// server answers a ping. Pings run at most once per cache interval
// whatever the probe rate (one round at a time; callers meanwhile get the
// last answer or wait for the round in progress), and each is bounded by
// timeout, so a stopped server cannot hold a probe.
type readiness struct {
	leader  func() string // the journal leader's id, "" when none
	sinks   map[string]pinger
	timeout time.Duration
	cache   time.Duration
	now     func() time.Time

	mu      sync.Mutex
	at      time.Time     // when the last round ended
	err     error         // its answer
	running chan struct{} // closed when the round in progress ends; nil when none
}

func newReadiness(leader func() string, sinks map[string]pinger, timeout, cache time.Duration) *readiness {
	if timeout <= 0 {
		timeout = defaultReadyTimeout
	}
	if cache <= 0 {
		cache = defaultReadyCache
	}
	return &readiness{leader: leader, sinks: sinks, timeout: timeout, cache: cache, now: time.Now}
}

// check returns nil when ready, or an error naming everything that is not
// (on one line: it becomes the detail of /readyz's answer).
func (r *readiness) check(ctx context.Context) error {
	var msgs []string
	if r.leader() == "" {
		msgs = append(msgs, "journal has no leader")
	}
	if err := r.sinksErr(ctx); err != nil {
		msgs = append(msgs, strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	if len(msgs) == 0 {
		return nil
	}
	return errors.New(strings.Join(msgs, "; "))
}

func (r *readiness) sinksErr(ctx context.Context) error {
	r.mu.Lock()
	if !r.at.IsZero() && r.now().Sub(r.at) < r.cache {
		err := r.err
		r.mu.Unlock()
		return err
	}
	wait := r.running
	if wait == nil {
		wait = make(chan struct{})
		r.running = wait
		go r.round(wait)
	}
	r.mu.Unlock()
	select {
	case <-wait:
	case <-ctx.Done():
		return fmt.Errorf("sink check: %w", ctx.Err())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// round pings every sink in parallel and stores the answer. It runs on its
// own goroutine, bounded by timeout, so a probe that gives up early does
// not cancel the round for the others.
func (r *readiness) round(done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	names := make([]string, 0, len(r.sinks))
	for n := range r.sinks {
		names = append(names, n)
	}
	sort.Strings(names)
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.sinks[n].Ping(ctx); err != nil {
				errs[i] = fmt.Errorf("sink %s not reachable: %w", n, err)
			}
		}()
	}
	wg.Wait()
	r.mu.Lock()
	r.err, r.at, r.running = errors.Join(errs...), r.now(), nil
	r.mu.Unlock()
	close(done)
}
