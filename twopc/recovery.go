package twopc

import (
	"context"
	"time"
)

// Recover runs start-up recovery: it finishes every decided branch and
// fences every known writer in every sink of its job, so nothing a dead
// process left open survives. In-doubt (external, undecided) branches stay
// prepared until the application decides them.
//
// It waits for every writer's fence; a sidecar calls RecoverDecided instead
// and leaves the fences to Run. Writers whose fence failed are retried by
// Run.
func (c *Coordinator) Recover(ctx context.Context) error {
	c.RecoverDecided(ctx)
	return c.fenceBacklog(ctx)
}

func (c *Coordinator) countDecided() int {
	n := 0
	for _, p := range c.m.Pending("") {
		if p.Decision != decisionNone {
			n++
		}
	}
	return n
}

// Run retries the unfinished decided branches of the writers this node
// owns until ctx ends, fences the writers RecoverDecided left (first thing,
// then every round until each succeeded), drops the sessions whose writer
// moved to another node (watchOwnership), forgets idle sessions, and on the
// leader takes over the writers whose owner leaves decided branches
// unfinished and warns when a prepared branch grows old compared with the
// sinks' transaction timeouts.
func (c *Coordinator) Run(ctx context.Context) {
	t := time.NewTicker(c.cfg.RetryInterval)
	defer t.Stop()
	// Not in c.wg: Close waits for that and may run before ctx ends.
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		c.watchOwnership(ctx)
	}()
	defer func() { <-watching }()
	if c.leaseOK() {
		_ = c.fenceBacklog(ctx) // logged; retried below
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.forgetIdle()
		if !c.leaseOK() {
			continue
		}
		c.finishDecided(ctx, func(PendingBranch) bool { return true })
		c.failExpired(ctx)
		_ = c.fenceBacklog(ctx)
		if c.cfg.IsLeader == nil || c.cfg.IsLeader() {
			c.takeoverStale(ctx)
			c.warnOld()
		}
	}
}

type timeouter interface{ TransactionTimeout() time.Duration }

func (c *Coordinator) warnOld() {
	age := c.m.OldestPrepared(c.now())
	if age <= 0 {
		return
	}
	for name, s := range c.cfg.Sinks {
		if t, ok := s.(timeouter); ok && t.TransactionTimeout() > 0 && age > t.TransactionTimeout()/2 {
			c.log.Warn("a prepared branch is older than half the transaction timeout; decide it before the sink aborts it",
				"sink", name, "age", age.Round(time.Second), "timeout", t.TransactionTimeout())
		}
	}
}

// OldestPrepared is the age of the oldest unresolved branch (a metric).
func (c *Coordinator) OldestPrepared() time.Duration { return c.m.OldestPrepared(c.now()) }

// sessionList returns the sessions held now.
func (c *Coordinator) sessionList() []*session {
	c.mu.Lock()
	defer c.mu.Unlock()
	ss := make([]*session, 0, len(c.sessions))
	for _, s := range c.sessions {
		ss = append(ss, s)
	}
	return ss
}

// Close stops taking calls, aborts every open branch and waits for
// background commits. Prepared branches stay for recovery.
func (c *Coordinator) Close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	ss := c.sessionList()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, s := range ss {
		s.mu.Lock()
		s.fenced = true
		c.abortOpen(ctx, s)
		s.mu.Unlock()
	}
	c.wg.Wait()
}
