package twopc

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// OpenSession starts a new session for a writer: it fences the previous one,
// decides (external mode, with restore) and finishes the writer's decided
// branches, aborts whatever the sinks still hold that the journal does not
// keep, and returns the restored checkpoint and its state.
func (c *Coordinator) OpenSession(ctx context.Context, job, writer string, restore *int64) (SessionInfo, error) {
	if err := CheckName("writer", writer); err != nil {
		return SessionInfo{}, err
	}
	spec, err := c.jobSpec(ctx, job)
	if err != nil {
		return SessionInfo{}, err
	}
	if restore != nil && (*restore < 0 || *restore > MaxCheckpoint) {
		return SessionInfo{}, fmt.Errorf("%w: restore must be from 0 to %d, got %d", ErrInvalid, MaxCheckpoint, *restore)
	}
	if restore != nil && spec.Commit != ModeExternal {
		return SessionInfo{}, fmt.Errorf("%w: restore is for external commit mode; job %s commits by itself", ErrInvalid, job)
	}
	k := writerKey{job, writer}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return SessionInfo{}, fmt.Errorf("%w: sidecar is stopping", ErrUnavailable)
	}
	cl := bound(ctx, c.cfg.Timeouts.Session)
	defer cl.done()
	unlock, err := c.opening.lockWithin(cl.work, k)
	if err != nil {
		return SessionInfo{}, err
	}
	defer unlock()
	ctx = cl.work
	if err := c.admitSession(k); err != nil {
		return SessionInfo{}, err
	}
	c.modeMu.RLock()
	defer c.modeMu.RUnlock()

	// The old session's call in progress is waited for within this call's
	// deadline, before anything is journaled: an open that cannot get it
	// in time answers ErrUnavailable and changes nothing.
	c.mu.Lock()
	old := c.sessions[k]
	c.mu.Unlock()
	if old != nil {
		if err := lockWithin(cl.work, &old.mu, job, writer); err != nil {
			return SessionInfo{}, err
		}
		defer func() {
			if old != nil {
				old.mu.Unlock()
			}
		}()
	}
	res, err := c.propose(cl.ctx, Command{Op: OpOpenSession, Job: job, Writer: writer, Node: c.cfg.Node, Restore: restore,
		MaxWriters: c.lim.maxWritersPerJob})
	if err != nil {
		if old != nil && errors.Is(err, ErrUnavailable) {
			// The open may still apply, and then the watcher would never
			// see the old session as moved (its writer stays this node's):
			// retire it now. The app is reopening anyway.
			c.retire(ctx, k, old)
			old = nil
		}
		return SessionInfo{}, err
	}
	if old != nil {
		c.retire(ctx, k, old)
		old = nil
	}
	// Another node held the writer: act only once it let go (or its lease
	// passed), so two nodes never touch its transactions at once.
	if err := c.waitHandover(ctx, job, writer, res.Handover); err != nil {
		return SessionInfo{}, err
	}
	// Finish what is decided, then fence the sinks around what stays. The
	// checkpoints decided to commit are noted first: once finished they are
	// no longer pending, and a lost one must still be reported.
	octx, done := c.whileOwner(ctx, job, writer, res.Session.Epoch)
	defer done()
	mine := func(p PendingBranch) bool { return p.Job == job && p.Writer == writer }
	touched := c.decidedCommits(job, mine)
	c.finishDecided(octx, mine)
	if err := c.fenceWriter(octx, job, writer, spec.Sinks); err != nil {
		if cause := context.Cause(octx); cause != nil && octx.Err() != nil && ctx.Err() == nil {
			return SessionInfo{}, fmt.Errorf("%w: %s/%s epoch %d: %v while opening; reopen", ErrSessionFenced, job, writer, res.Session.Epoch, cause)
		}
		return SessionInfo{}, err
	}
	c.unfenced.done(k) // under the opening lock: no background fence of k after this
	s := newSession(job, writer, res.Session.Epoch)
	s.guarantee = spec.Guarantee.Norm()
	c.touch(s)
	c.mu.Lock()
	c.sessions[k] = s
	c.mu.Unlock()
	info := res.Session
	info.Status, info.DataLoss = StatusNone, []int64{}
	if info.Checkpoint > 0 {
		info.Status = c.m.CommittedStatus(job, writer, info.Checkpoint)
		if info.Status == StatusDataLoss {
			info.DataLoss = append(info.DataLoss, info.Checkpoint)
		}
	}
	for _, n := range touched[writer] {
		if r, ok := c.m.CheckpointStatus(job, writer, n); ok && r.Status == StatusDataLoss && !slices.Contains(info.DataLoss, n) {
			info.DataLoss = append(info.DataLoss, n)
		}
	}
	slices.Sort(info.DataLoss)
	if len(info.DataLoss) > 0 {
		c.log.Error("session opened; checkpoints of the writer lost data", "job", job, "writer", writer,
			"epoch", s.epoch, "restored", info.Checkpoint, "status", info.Status, "data_loss", info.DataLoss)
	} else {
		c.log.Info("session opened", "job", job, "writer", writer, "epoch", s.epoch, "restored", info.Checkpoint, "status", info.Status)
	}
	return info, nil
}

// retire ends session old, whose mu the caller holds: it leaves the map
// (unless a newer session took its place), is marked fenced, its open
// branches are aborted, and its mu is released.
func (c *Coordinator) retire(ctx context.Context, k writerKey, old *session) {
	c.mu.Lock()
	if c.sessions[k] == old {
		delete(c.sessions, k)
	}
	c.mu.Unlock()
	old.fenced = true
	if old.cancel != nil {
		old.cancel(errMoved)
	}
	c.abortOpen(ctx, old)
	old.mu.Unlock()
}

// decidedCommits lists per writer the checkpoints with a branch that is
// decided to commit, unresolved and selected by match.
func (c *Coordinator) decidedCommits(job string, match func(PendingBranch) bool) map[string][]int64 {
	out := map[string][]int64{}
	for _, p := range c.m.Pending(job) {
		if p.Decision == decisionCommit && match(p) && !slices.Contains(out[p.Writer], p.Checkpoint) {
			out[p.Writer] = append(out[p.Writer], p.Checkpoint)
		}
	}
	return out
}

// fenceWriter asks every sink of the job to abort what it holds for the
// writer beyond the journal's unresolved branches.
func (c *Coordinator) fenceWriter(ctx context.Context, job, writer string, sinks []string) error {
	if spec, ok := c.m.JobSpec(job); ok && spec.Guarantee.Direct() {
		// The sinks hold no transaction of a direct job (its guarantee
		// never changes): nothing to fence. An old session's write still
		// in flight may land; at_least_once allows that duplicate.
		return nil
	}
	keep := map[string][]BranchID{}
	for _, p := range c.m.Pending(job) {
		if p.Writer == writer {
			keep[p.Branch.ID.Sink] = append(keep[p.Branch.ID.Sink], p.Branch.ID)
		}
	}
	for _, name := range sinks {
		sink := c.cfg.Sinks[name]
		if sink == nil {
			continue
		}
		if err := sink.Fence(ctx, job, writer, keep[name]); err != nil {
			return fmt.Errorf("%w: fence %s/%s in sink %s: %v", ErrSinkFailure, job, writer, name, err)
		}
	}
	// Branches held for a checkpoint whose journal entry had an unknown
	// outcome and that the journal does not keep were just aborted by the
	// fences: forget them. Busy ones are being finished (journaled).
	c.branches.forgetFenced(job, writer, keep)
	return nil
}

// sessionFor finds the live session for (job, writer, epoch).
func (c *Coordinator) sessionFor(job, writer string, epoch uint64) (*session, error) {
	if !c.leaseOK() {
		return nil, fmt.Errorf("%w: %v; reopen the session on a node that has", ErrUnavailable, errLeaseLost)
	}
	wv, ok := c.m.Writer(job, writer)
	if !ok {
		if _, ok := c.m.JobSpec(job); !ok {
			return nil, fmt.Errorf("%w: %s", ErrJobNotFound, job)
		}
		return nil, fmt.Errorf("%w: writer %s of job %s: open a session first", ErrNoSession, writer, job)
	}
	if epoch < wv.Epoch {
		return nil, fmt.Errorf("%w: epoch %d of %s/%s, current %d", ErrSessionFenced, epoch, job, writer, wv.Epoch)
	}
	if epoch > wv.Epoch {
		return nil, fmt.Errorf("%w: epoch %d of %s/%s was never opened (current %d)", ErrNoSession, epoch, job, writer, wv.Epoch)
	}
	c.mu.Lock()
	s := c.sessions[writerKey{job, writer}]
	c.mu.Unlock()
	if s == nil || s.epoch != epoch {
		return nil, fmt.Errorf("%w: %s/%s epoch %d is not open on this node (restarted, or idle too long?); reopen and restore",
			ErrSessionLost, job, writer, epoch)
	}
	c.touch(s)
	return s, nil
}

// usable reports why a session cannot take calls. Needs s.mu.
func (s *session) usable() error {
	if s.fenced && s.fencedBy != nil {
		return fmt.Errorf("%w: %s/%s epoch %d: %v; reopen the session", ErrSessionFenced, s.job, s.writer, s.epoch, s.fencedBy)
	}
	if s.fenced {
		return fmt.Errorf("%w: %s/%s epoch %d", ErrSessionFenced, s.job, s.writer, s.epoch)
	}
	if s.lost {
		return fmt.Errorf("%w: %s/%s epoch %d was idle too long and forgotten; reopen and restore", ErrSessionLost, s.job, s.writer, s.epoch)
	}
	if s.failed != nil {
		return fmt.Errorf("%w: %s/%s epoch %d failed earlier (%v); reopen the session", ErrSinkFailure, s.job, s.writer, s.epoch, s.failed)
	}
	return nil
}

// abortOpen aborts a session's open branches and closes its direct ones.
// Needs s.mu.
func (c *Coordinator) abortOpen(ctx context.Context, s *session) {
	if len(s.direct) > 0 {
		c.closeDirect(ctx, s)
	}
	for name, ob := range s.open {
		if err := ob.br.Abort(ctx); err != nil {
			// Fence on the next open (or at start-up) aborts it in the sink.
			c.log.Warn("abort of open branch failed", "branch", ob.id.String(), "err", err)
		}
		delete(s.open, name)
	}
}

// fail marks a session failed after a sink error and aborts its open
// branches. Needs s.mu.
func (c *Coordinator) fail(ctx context.Context, s *session, err error) error {
	s.failed = err
	c.abortOpen(ctx, s)
	c.log.Error("session failed; branches aborted", "job", s.job, "writer", s.writer, "epoch", s.epoch, "err", err)
	if errors.Is(err, ErrSinkFailure) {
		return err
	}
	// %v, not %w: a sink error that also wraps ErrInvalid (a statement the
	// server refused) must still answer sink_failure, since the session is
	// failed and the app has to reopen.
	return fmt.Errorf("%w: %v", ErrSinkFailure, err)
}
