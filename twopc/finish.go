package twopc

import (
	"context"
	"errors"
)

// claim claims the branches of ps that nobody else is finishing, that the
// journal still shows unresolved (the list was read before the claim; see
// inflight for why the journal is checked again under its lock) and whose
// writer this node owns (the finishing rule across nodes, ownership.go).
func (c *Coordinator) claim(ps []PendingBranch) []PendingBranch {
	return c.branches.claim(ps, func(p PendingBranch) bool {
		return c.m.unresolved(p.Job, p.Writer, p.Checkpoint, p.Branch.ID) && c.owns(p.Job, p.Writer)
	})
}

// finish commits or aborts decided branches that the caller has claimed
// and journals their outcomes. Branches this process prepared are finished on
// their own connection; others through the sink's Resolve with the handle.
// A branch that fails stays unresolved for the recovery loop.
//
// committed, when not nil, runs once every branch of ps was committed by its
// sink, before the RESOLVED entry is proposed: the checkpoint's records are
// visible in every sink by then and its decision is durable, so an answer may
// say committed without waiting for the entry (see DESIGN.md "Honest
// answers"; until the entry applies the slots stay held, so nothing can reuse
// them, and a crash before it re-commits, which every sink answers as done).
func (c *Coordinator) finish(ctx context.Context, ps []PendingBranch, committed func()) {
	ctx, cancel := context.WithTimeout(ctx, finishTimeout)
	defer cancel()
	t0 := c.now()
	byJob := map[string][]BranchOutcome{}
	nCommitted := 0
	for i, p := range ps {
		if i == 1 {
			c.failpoint("after-commit-first-sink")
		}
		id := p.Branch.ID
		commit := p.Decision == decisionCommit
		if !c.owns(p.Job, p.Writer) {
			// Another node was granted the writer since the claim: it
			// finishes the branch now, and this node must not touch it.
			c.log.Info("not finishing a branch: the writer moved to another node", "job", p.Job,
				"writer", p.Writer, "checkpoint", p.Checkpoint, "branch", id.String())
			if d, ok := c.branches.branch(id).(Detacher); ok {
				d.Detach()
			}
			continue
		}
		br := c.branches.branch(id)
		var err error
		switch {
		case br != nil && commit:
			err = br.Commit(ctx)
		case br != nil:
			err = br.Abort(ctx)
		default:
			err = c.cfg.Sinks[id.Sink].Resolve(ctx, id, p.Branch.Handle, commit)
		}
		outcome := OutcomeAborted
		if commit {
			outcome = OutcomeCommitted
		}
		switch {
		case err == nil:
		case errors.Is(err, ErrDataLoss) && !c.m.ownedBy(p.Job, p.Writer, c.cfg.Node):
			// The writer moved while this node finished: the new owner
			// may have fenced the slot, so "ended" says nothing.
			c.log.Info("a finish found the branch ended after the writer moved to another node; the new owner decides",
				"job", p.Job, "writer", p.Writer, "checkpoint", p.Checkpoint, "branch", id.String(), "err", err)
			continue
		case errors.Is(err, ErrDataLoss) && !c.m.unresolved(p.Job, p.Writer, p.Checkpoint, id):
			// An earlier attempt's RESOLVED (whose journaling had an
			// unknown outcome) applied meanwhile: the branch was finished
			// and its slot may be in use again, so this attempt's "already
			// ended" answer is no verdict about the branch.
			c.log.Info("branch already resolved in the journal; a repeated finish found it ended",
				"job", p.Job, "writer", p.Writer, "checkpoint", p.Checkpoint, "branch", id.String(), "err", err)
			continue
		case errors.Is(err, ErrDataLoss):
			outcome = OutcomeDataLoss
			c.metrics.DataLoss(p.Job, id.Sink)
			c.log.Error("DATA LOSS: the sink had aborted a transaction the journal decided to commit",
				"job", p.Job, "writer", p.Writer, "checkpoint", p.Checkpoint, "branch", id.String(), "err", err)
		default:
			c.metrics.CommitRetry(id.Sink)
			c.log.Warn("finishing branch failed; will retry", "job", p.Job, "writer", p.Writer,
				"checkpoint", p.Checkpoint, "branch", id.String(), "commit", commit, "err", err)
			c.branches.forget(id) // the retry goes through Resolve with the handle
			continue
		}
		byJob[p.Job] = append(byJob[p.Job], BranchOutcome{Writer: p.Writer, Checkpoint: p.Checkpoint, Sink: id.Sink,
			Seq: id.Seq, Epoch: id.Epoch, Outcome: outcome})
		if outcome == OutcomeCommitted {
			nCommitted++
		}
	}
	// "commit" is the sinks' part, what an auto-mode checkpoint's answer
	// waits for; "resolve" is the RESOLVED entry after it.
	if len(ps) > 0 {
		c.metrics.CheckpointDone(ps[0].Job, "commit", c.now().Sub(t0))
	}
	if committed != nil && nCommitted == len(ps) {
		committed()
	}
	t1 := c.now()
	for job, outs := range byJob {
		if _, err := c.propose(ctx, Command{Op: OpResolved, Job: job, Node: c.cfg.Node, Outcomes: outs}); err != nil {
			// The sinks are finished; the journal will learn it on a retry
			// (finishing again is idempotent).
			c.log.Warn("journaling finished branches failed; will retry", "job", job, "err", err)
		}
	}
	for _, p := range ps {
		c.branches.forget(p.Branch.ID)
	}
	if len(byJob) > 0 {
		c.metrics.CheckpointDone(ps[0].Job, "resolve", c.now().Sub(t1))
	}
}

// finishDecided finishes every decided, unresolved branch that match
// selects and that no other goroutine is finishing.
func (c *Coordinator) finishDecided(ctx context.Context, match func(PendingBranch) bool) {
	var ps []PendingBranch
	for _, p := range c.m.Pending("") {
		if p.Decision != decisionNone && match(p) {
			ps = append(ps, p)
		}
	}
	if ps = c.claim(ps); len(ps) > 0 {
		c.finish(ctx, ps, nil)
	}
}
