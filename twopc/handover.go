package twopc

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// The coordinator's side of writer ownership (ownership.go has the
// journal's side and the rule).

const (
	// DefaultHandoverWait: see Config.HandoverWait. It covers a lease of
	// 1.5 s (what cmd/sidecar uses) plus a margin for requests in flight.
	DefaultHandoverWait = 2500 * time.Millisecond
	// DefaultTakeoverAfter: see Config.TakeoverAfter.
	DefaultTakeoverAfter = 5 * time.Second
	// ownershipPoll is how often checkOwnership runs at most, and the poll
	// of the handover and resolution waits.
	ownershipPoll = 20 * time.Millisecond
)

var (
	errMoved     = errors.New("the journal gave the writer to a later session")
	errLeaseLost = errors.New("this node lost contact with the journal's leader")
)

// ownershipMetrics calls f when the metrics implement OwnershipMetrics.
func (c *Coordinator) ownershipMetrics(f func(OwnershipMetrics)) {
	if m, ok := c.metrics.(OwnershipMetrics); ok {
		f(m)
	}
}

// jobSpec returns a job's spec from this node's copy of the journal. A job
// the copy does not know may have been created through another node a
// moment ago (a follower's copy lags the leader's): a journal barrier
// makes the copy catch up before the answer is job_not_found.
func (c *Coordinator) jobSpec(ctx context.Context, job string) (JobSpec, error) {
	if spec, ok := c.m.JobSpec(job); ok {
		return spec, nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeouts.Session)
	defer cancel()
	if _, err := c.propose(ctx, Command{Op: OpBarrier}); err != nil {
		return JobSpec{}, err
	}
	if spec, ok := c.m.JobSpec(job); ok {
		return spec, nil
	}
	return JobSpec{}, fmt.Errorf("%w: %s", ErrJobNotFound, job)
}

// leaseOK reports whether this node may act for its writers now.
func (c *Coordinator) leaseOK() bool { return c.cfg.Lease == nil || c.cfg.Lease() }

// owns reports whether this node owns the writer in its copy of the journal
// and may act for it (the finishing rule).
func (c *Coordinator) owns(job, writer string) bool {
	return c.m.ownedBy(job, writer, c.cfg.Node) && c.leaseOK()
}

// newSession returns a session whose context ends when it may no longer act.
func newSession(job, writer string, epoch uint64) *session {
	s := &session{job: job, writer: writer, epoch: epoch, open: map[string]*openBranch{}}
	s.ctx, s.cancel = context.WithCancelCause(context.Background())
	return s
}

// bindSession returns ctx, also ended when s may no longer act, so a call
// in progress stops issuing sink requests as soon as the writer moved.
func bindSession(ctx context.Context, s *session) (context.Context, func()) {
	if s.ctx == nil {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(s.ctx, func() { cancel(context.Cause(s.ctx)) })
	return ctx, func() { stop(); cancel(nil) }
}

// whileOwner returns ctx, also ended as soon as this node no longer owns
// the writer at epoch (or lost its lease): fences and finishing done
// outside a session (an open in progress, a takeover) stop issuing sink
// requests once another node may act for the writer. checkOwnership ends
// it (guards); a coordinator whose Run does not run never does.
func (c *Coordinator) whileOwner(ctx context.Context, job, writer string, epoch uint64) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	g := &guard{k: writerKey{job, writer}, epoch: epoch, cancel: cancel}
	c.guardMu.Lock()
	if c.guards == nil {
		c.guards = map[*guard]bool{}
	}
	c.guards[g] = true
	c.guardMu.Unlock()
	return ctx, func() {
		c.guardMu.Lock()
		delete(c.guards, g)
		c.guardMu.Unlock()
		cancel(nil)
	}
}

// guard is a whileOwner context: it holds while this node owns k at epoch.
type guard struct {
	k      writerKey
	epoch  uint64
	cancel context.CancelCauseFunc
}

// checkGuards ends the whileOwner contexts whose writer moved on, or all of
// them without a lease.
func (c *Coordinator) checkGuards(lease bool) {
	c.guardMu.Lock()
	defer c.guardMu.Unlock()
	for g := range c.guards {
		if !lease {
			g.cancel(errLeaseLost)
			continue
		}
		if owner, e, _, ok := c.m.Owner(g.k.job, g.k.writer); !ok || owner != c.cfg.Node || e != g.epoch {
			g.cancel(errMoved)
		}
	}
}

// waitHandover waits, after a grant, until the previous owner on another
// node released the writer or HandoverWait passed: only then may this node
// fence or finish the writer's transactions (ownership.go).
func (c *Coordinator) waitHandover(ctx context.Context, job, writer string, h *Handover) error {
	if h == nil || !h.Wait {
		return nil
	}
	t0 := time.Now()
	deadline := t0.Add(c.cfg.HandoverWait)
	t := time.NewTicker(ownershipPoll)
	defer t.Stop()
	for {
		_, _, released, ok := c.m.Owner(job, writer)
		if !ok || released >= h.Epoch {
			c.log.Info("writer handed over", "job", job, "writer", writer, "from", h.From, "waited", time.Since(t0).Round(time.Millisecond))
			c.ownershipMetrics(func(m OwnershipMetrics) { m.HandoverWaited(time.Since(t0), true) })
			return nil
		}
		if !time.Now().Before(deadline) {
			c.log.Info("previous owner did not release the writer; its lease has passed", "job", job, "writer", writer,
				"from", h.From, "epoch", h.Epoch, "waited", time.Since(t0).Round(time.Millisecond))
			c.ownershipMetrics(func(m OwnershipMetrics) { m.HandoverWaited(time.Since(t0), false) })
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: waiting for node %s to hand over %s/%s: %w", ErrUnavailable, h.From, job, writer, context.Cause(ctx))
		case <-t.C:
		}
	}
}

// watchOwnership runs checkOwnership whenever the journal changed (at most
// every ownershipPoll) and at least every ownershipPoll×10, and finishes
// this node's newly decided branches (an external commit decided on another
// node) without waiting for the recovery round.
func (c *Coordinator) watchOwnership(ctx context.Context) {
	slow := time.NewTicker(10 * ownershipPoll)
	defer slow.Stop()
	var decided uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.m.Changed():
		case <-slow.C:
		}
		c.checkOwnership(ctx)
		if d := c.m.decisions(); d != decided && c.leaseOK() {
			decided = d
			c.finishDecided(ctx, func(PendingBranch) bool { return true })
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(ownershipPoll):
		}
	}
}

// checkOwnership drops the local sessions that may no longer act: the
// journal gave their writer to another node (or deleted it), or this node
// lost its lease. The old owner learns this from its copy of the journal
// by itself; the app's next call answers session_fenced.
func (c *Coordinator) checkOwnership(ctx context.Context) {
	lease := c.leaseOK()
	c.checkGuards(lease)
	ss := c.sessionList()
	for _, s := range ss {
		owner, epoch, _, ok := c.m.Owner(s.job, s.writer)
		if ok && owner == c.cfg.Node && epoch > s.epoch {
			continue // a newer session on this node: OpenSession retires this one
		}
		moved := !ok || owner != c.cfg.Node || epoch != s.epoch
		if (!moved && lease) || s.retiring.Swap(true) {
			continue
		}
		cause := errLeaseLost
		if moved {
			cause = errMoved
		}
		s.cancel(cause)
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.dropSession(ctx, s, cause, moved && lease)
		}()
	}
	// Prepared branches held without a session (an external job's
	// checkpoint whose session went away) are let go the same way.
	for _, k := range c.branches.heldWriters() {
		if !lease || !c.m.ownedBy(k.job, k.writer, c.cfg.Node) {
			c.detach(k.job, k.writer)
		}
	}
}

// dropSession ends a session that may no longer act: it waits for the call
// in progress (whose context already ended), aborts the open branches
// (releasing MySQL row locks) and, when the journal is reachable, records
// the release so the new owner need not wait out the lease.
func (c *Coordinator) dropSession(ctx context.Context, s *session, cause error, release bool) {
	s.mu.Lock()
	k := writerKey{s.job, s.writer}
	c.mu.Lock()
	if c.sessions[k] == s {
		delete(c.sessions, k)
	}
	c.mu.Unlock()
	s.fenced, s.fencedBy = true, cause
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	c.abortOpen(actx, s)
	s.mu.Unlock()
	c.detach(s.job, s.writer)
	c.log.Info("session dropped", "job", s.job, "writer", s.writer, "epoch", s.epoch, "reason", cause.Error())
	reason := "moved"
	if errors.Is(cause, errLeaseLost) {
		reason = "lease_lost"
	}
	c.ownershipMetrics(func(m OwnershipMetrics) { m.SessionDropped(reason) })
	if !release {
		return
	}
	// A finish in progress here (claimed before the move; it checks the
	// owner again before each sink call) may still have a request out:
	// release only once it ended, so the new owner's wait covers it.
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer rcancel()
	for c.branches.claimedFor(s.job, s.writer) && rctx.Err() == nil {
		time.Sleep(ownershipPoll)
	}
	c.release(rctx, s.job, s.writer, s.epoch)
}

// detach lets go of the prepared branches this node holds for a writer it
// no longer owns, so that the new owner can finish them (a MySQL branch
// cannot be finished elsewhere while its preparing connection lives).
func (c *Coordinator) detach(job, writer string) {
	for _, br := range c.branches.detachWriter(job, writer) {
		if d, ok := br.(Detacher); ok {
			d.Detach()
		}
	}
}

// release records that this node stopped acting for the writer at epoch.
func (c *Coordinator) release(ctx context.Context, job, writer string, epoch uint64) {
	if _, err := c.propose(ctx, Command{Op: OpRelease, Job: job, Writer: writer, Epoch: epoch, Node: c.cfg.Node}); err != nil {
		c.log.Warn("could not record the release of a writer; its next owner waits out the lease", "job", job,
			"writer", writer, "epoch", epoch, "err", err)
	}
}

// recoverWriter finishes a writer's decided branches with no application
// session, fences it in its sinks and releases it when nothing decided is
// left. With takeover it is first granted to this node at epoch, the one
// the caller saw (the leader, for another node's writer); without, this
// node owns it at epoch already (its own writer after a restart). A
// takeover refused because the writer moved on meanwhile is not an error:
// its new owner does this. Either way it acts only while it owns the
// writer at that epoch (whileOwner).
func (c *Coordinator) recoverWriter(ctx context.Context, k writerKey, epoch uint64, takeover bool) error {
	defer c.opening.lock(k)()
	c.guardMu.Lock()
	if c.inRecovery == nil {
		c.inRecovery = map[writerKey]int{}
	}
	c.inRecovery[k]++
	c.guardMu.Unlock()
	defer func() {
		c.guardMu.Lock()
		if c.inRecovery[k]--; c.inRecovery[k] == 0 {
			delete(c.inRecovery, k)
		}
		c.guardMu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeouts.Session)
	defer cancel()
	if takeover {
		res, err := c.propose(ctx, Command{Op: OpTakeover, Job: k.job, Writer: k.writer, Epoch: epoch, Node: c.cfg.Node})
		if errors.Is(err, ErrSessionFenced) || errors.Is(err, ErrNoSession) || errors.Is(err, ErrJobNotFound) {
			c.unfenced.done(k) // it moved on: its new owner fences it
			return nil
		}
		if err != nil {
			return err
		}
		epoch = res.Session.Epoch
		c.ownershipMetrics(func(m OwnershipMetrics) { m.Takeover() })
		if err := c.waitHandover(ctx, k.job, k.writer, res.Handover); err != nil {
			return err
		}
	} else if !c.unfenced.has(k) {
		// A session open fenced the writer while this call waited for the
		// lock. Its epoch may be the one the caller read (the open had
		// journaled it but not finished), so the epoch check below would
		// pass and this fence would abort the new session's branches.
		return nil
	} else if owner, e, _, ok := c.m.Owner(k.job, k.writer); !ok || owner != c.cfg.Node || e != epoch {
		c.unfenced.done(k)
		return nil
	}
	octx, done := c.whileOwner(ctx, k.job, k.writer, epoch)
	defer done()
	mine := func(p PendingBranch) bool { return p.Job == k.job && p.Writer == k.writer }
	c.finishDecided(octx, mine)
	if spec, ok := c.m.JobSpec(k.job); ok {
		if err := c.fenceWriter(octx, k.job, k.writer, spec.Sinks); err != nil {
			return err
		}
	}
	c.unfenced.done(k)
	if !c.hasDecided(mine) {
		c.release(ctx, k.job, k.writer, epoch)
	}
	return nil
}

// waitResolved waits until no decided branch selected by match is
// unresolved in this node's copy of the journal, or ctx ends.
func (c *Coordinator) waitResolved(ctx context.Context, match func(PendingBranch) bool) {
	t := time.NewTicker(ownershipPoll)
	defer t.Stop()
	for c.hasDecided(match) {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// recovering reports whether recoverWriter runs for k now.
func (c *Coordinator) recovering(k writerKey) bool {
	c.guardMu.Lock()
	defer c.guardMu.Unlock()
	return c.inRecovery[k] > 0
}

// hasDecided reports whether a decided branch selected by match is still
// unresolved.
func (c *Coordinator) hasDecided(match func(PendingBranch) bool) bool {
	for _, p := range c.m.Pending("") {
		if p.Decision != decisionNone && match(p) {
			return true
		}
	}
	return false
}

// takeoverStale (leader only) takes over the writers of other nodes whose
// decided branches nobody finishes: their owner left them unfinished for
// TakeoverAfter since it was granted the writer or they were decided
// (whichever is later), or for a fifth of it when it is not a member any
// more or is known to be down.
func (c *Coordinator) takeoverStale(ctx context.Context) {
	now := c.now()
	seen := map[writerKey]bool{}
	for _, p := range c.m.Pending("") {
		k := writerKey{p.Job, p.Writer}
		if p.Decision == decisionNone || seen[k] {
			continue
		}
		owner, epoch, _, ok := c.m.Owner(p.Job, p.Writer)
		if !ok || owner == c.cfg.Node {
			continue
		}
		_, member := c.m.Member(owner)
		gone := (!member && len(c.m.Members()) > 0) || (c.cfg.NodeAlive != nil && !c.cfg.NodeAlive(owner))
		// A gone owner still gets a moment: it may have finished the
		// branch and be journaling that right now.
		after := c.cfg.TakeoverAfter
		if gone {
			after /= 5
		}
		// The owner has had the branch since the later of its decision and
		// the owner's grant: a writer granted a moment ago (an app that
		// reopened its session there) gets the full time too. Counting
		// from the decision alone took a writer whose branch nobody could
		// finish back from every new session at once, fencing the app
		// again and again.
		since := p.DecidedAt
		if g := c.m.GrantedAt(p.Job, p.Writer); g.After(since) {
			since = g
		}
		if now.Sub(since) < after {
			continue
		}
		seen[k] = true
		c.log.Warn("taking over a writer whose decided branches its owner does not finish", "job", p.Job,
			"writer", p.Writer, "owner", owner, "owner_gone", gone, "decided_ago", now.Sub(p.DecidedAt).Round(time.Millisecond),
			"owner_for", now.Sub(since).Round(time.Millisecond))
		if err := c.recoverWriter(ctx, k, epoch, true); err != nil {
			c.log.Warn("takeover failed; retrying next round", "job", p.Job, "writer", p.Writer, "err", err)
		}
	}
}
