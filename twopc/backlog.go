package twopc

import (
	"context"
	"errors"
	"sync"
)

// fenceWorkers bounds the writers fenced at once by the background pass.
const fenceWorkers = 4

// backlog is the set of writers not fenced since this process started:
// whatever a dead process left open for them in a sink (a Kafka transaction
// blocking read_committed consumers at its LSO, an XA branch holding row
// locks) is still there. A writer leaves the set only after a successful
// fence, done either by the background pass or by its OpenSession, both
// under the writer's opening mutex, so a background fence never runs after
// a new session of the writer began (it would abort that session's open
// transactions). mu is a leaf lock.
type backlog struct {
	mu sync.Mutex
	w  map[writerKey]bool
}

func (b *backlog) add(ks []writerKey) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.w == nil {
		b.w = make(map[writerKey]bool, len(ks))
	}
	for _, k := range ks {
		b.w[k] = true
	}
}

func (b *backlog) has(k writerKey) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.w[k]
}

func (b *backlog) done(k writerKey) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.w, k)
}

func (b *backlog) list() []writerKey {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]writerKey, 0, len(b.w))
	for k := range b.w {
		out = append(out, k)
	}
	return out
}

// Unfenced is the number of writers still waiting for their start-up
// fence (a gauge).
func (c *Coordinator) Unfenced() int {
	c.unfenced.mu.Lock()
	defer c.unfenced.mu.Unlock()
	return len(c.unfenced.w)
}

// RecoverDecided is the part of start-up recovery that must finish before
// serving: it finishes the decided branches of the writers this node owns,
// and marks those writers for fencing, which Run then does in the
// background (first thing, then every round until it succeeded), so
// start-up does not scale with idle writers. A session opened meanwhile
// fences its writer itself. Writers other nodes own are theirs: a node
// restarting fences only its own (the leader takes over those of a dead
// node, takeoverStale).
func (c *Coordinator) RecoverDecided(ctx context.Context) {
	c.finishDecided(ctx, func(PendingBranch) bool { return true })
	c.unfenced.add(c.m.Owned(c.cfg.Node))
	if left := c.countDecided(); left > 0 {
		c.log.Warn("start-up recovery left decided branches unfinished; retrying in the background", "branches", left)
	}
}

// fenceBacklog fences the writers of the backlog, a few at a time, and
// returns the errors of those that failed (they stay in the backlog).
func (c *Coordinator) fenceBacklog(ctx context.Context) error {
	ks := c.unfenced.list()
	if len(ks) == 0 {
		return nil
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	next := make(chan writerKey)
	for range min(fenceWorkers, len(ks)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range next {
				if err := c.fenceBacklogged(ctx, k); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for _, k := range ks {
		if ctx.Err() != nil {
			break
		}
		next <- k
	}
	close(next)
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := errors.Join(errs...); err != nil {
		c.log.Warn("fencing writers left by the previous process failed; retrying", "writers", len(errs), "err", err)
		return err
	}
	c.log.Info("writers left by the previous process fenced", "writers", len(ks))
	return nil
}

// fenceBacklogged fences one writer of the backlog, unless a session open
// did it meanwhile or the writer is not this node's any more. The fence
// runs only while this node owns the writer at the epoch the journal
// shows (recoverWriter), so it stops when another node is granted it.
func (c *Coordinator) fenceBacklogged(ctx context.Context, k writerKey) error {
	if !c.unfenced.has(k) {
		return nil
	}
	owner, epoch, _, ok := c.m.Owner(k.job, k.writer)
	if _, job := c.m.JobSpec(k.job); !ok || !job || owner != c.cfg.Node {
		c.unfenced.done(k)
		return nil
	}
	return c.recoverWriter(ctx, k, epoch, false)
}

// writerLocks serialises OpenSession, DeleteWriter and the start-up fence
// of one writer. An entry lives only while a caller holds or waits for it,
// so its memory is bounded by the calls in progress, not by every writer
// ever seen. Its mu is a leaf; a writer's lock comes before session.mu.
type writerLocks struct {
	mu sync.Mutex
	m  map[writerKey]*writerLock
}

type writerLock struct {
	mu   sync.Mutex
	refs int // holders and waiters; guarded by writerLocks.mu
}

// lock locks k's mutex and returns its unlock.
func (l *writerLocks) lock(k writerKey) (unlock func()) {
	wl, release := l.ref(k)
	wl.mu.Lock()
	return func() {
		wl.mu.Unlock()
		release()
	}
}

// lockWithin is lock bounded by ctx: a call that cannot get k's lock in
// time is ErrUnavailable (see lockWithin in deadline.go). A waiter that gave
// up keeps its reference until its background Lock has been handed back.
func (l *writerLocks) lockWithin(ctx context.Context, k writerKey) (unlock func(), err error) {
	wl, release := l.ref(k)
	if err := lockWithinThen(ctx, &wl.mu, k.job, k.writer, release); err != nil {
		return nil, err
	}
	return func() {
		wl.mu.Unlock()
		release()
	}, nil
}

// ref returns k's lock with one more reference, and the function that
// drops it (the last one removes the lock from the map).
func (l *writerLocks) ref(k writerKey) (*writerLock, func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[writerKey]*writerLock{}
	}
	wl := l.m[k]
	if wl == nil {
		wl = &writerLock{}
		l.m[k] = wl
	}
	wl.refs++
	return wl, func() {
		l.mu.Lock()
		if wl.refs--; wl.refs == 0 {
			delete(l.m, k)
		}
		l.mu.Unlock()
	}
}

// size is the number of writers locked or waited for (for tests).
func (l *writerLocks) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}
