package twopc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Checkpoint prepares every open branch of the writer, journals checkpoint n
// with its state and handles (in auto mode with the commit decision in the
// same entry), and in auto mode commits. A repeat of the session's last
// checkpoint with the same state and no records written since returns its
// current result; otherwise it is ErrCheckpointOrder. A checkpoint that
// ended in data_loss returns its result and an error wrapping ErrDataLoss.
func (c *Coordinator) Checkpoint(ctx context.Context, job, writer string, epoch uint64, n int64, state []byte, wait Wait) (CheckpointResult, error) {
	return c.CheckpointWith(ctx, job, writer, epoch, n, state, wait, nil)
}

// CheckpointWith is Checkpoint that also commits consumer-group offsets
// (nil: none) in the checkpoint's branch of the Kafka sink offsets.Sink,
// beginning that branch when the checkpoint wrote nothing to the sink: the
// group's offsets then commit exactly when the branch does. Offsets that
// name no sink of the job, or a sink that does not take offsets, are
// invalid and change nothing. A retry must repeat the offsets, like the
// state.
func (c *Coordinator) CheckpointWith(ctx context.Context, job, writer string, epoch uint64, n int64, state []byte, wait Wait, offsets *Offsets) (CheckpointResult, error) {
	if err := CheckCheckpoint(n); err != nil {
		return CheckpointResult{}, err
	}
	if len(state) > MaxStateBytes {
		return CheckpointResult{}, fmt.Errorf("%w: state is %d bytes; the limit is %d", ErrInvalid, len(state), MaxStateBytes)
	}
	switch wait {
	case "":
		wait = WaitCommitted
	case WaitCommitted, WaitPrepared:
	default:
		return CheckpointResult{}, fmt.Errorf("%w: wait %q: want %q or %q", ErrInvalid, wait, WaitCommitted, WaitPrepared)
	}
	if offsets != nil {
		if err := c.validateOffsets(job, offsets); err != nil {
			return CheckpointResult{}, err
		}
	}
	sum := checkpointSum(state, offsets)
	s, err := c.sessionFor(job, writer, epoch)
	if err != nil {
		return CheckpointResult{}, err
	}
	ctx, unbind := bindSession(ctx, s)
	defer unbind()
	cl := bound(ctx, c.cfg.Timeouts.Checkpoint)
	defer cl.done()
	if err := lockWithin(cl.work, &s.mu, job, writer); err != nil {
		return CheckpointResult{}, err
	}
	defer s.mu.Unlock()
	if s.last != nil && n == s.lastN {
		// Only a true retry is idempotent: records written since would
		// otherwise go silently into a later checkpoint, and another state
		// would be acknowledged without being stored.
		if s.dirty || len(s.open) > 0 {
			if err := s.usable(); err != nil {
				return CheckpointResult{}, err // those records were aborted: reopen
			}
			return CheckpointResult{}, fmt.Errorf("%w: checkpoint %d of %s/%s is complete and records were written since; they need a checkpoint greater than %d",
				ErrCheckpointOrder, n, job, writer, n)
		}
		if sum != s.lastSum {
			return CheckpointResult{}, fmt.Errorf("%w: checkpoint %d of %s/%s was completed with another state or other offsets; a retry must repeat both",
				ErrCheckpointOrder, n, job, writer)
		}
		r := *s.last
		if cur, ok := c.m.CheckpointStatus(job, writer, n); ok &&
			(r.Status != StatusCommitted || cur.Status != StatusCommitting) {
			// The journal's word, except "committing" after the answer
			// said committed: the sinks did, and RESOLVED is on its way.
			r = cur
		}
		if s.guarantee.Direct() {
			r.Guarantee = s.guarantee
		}
		return r, checkpointLoss(job, writer, r)
	}
	if err := s.usable(); err != nil {
		return CheckpointResult{}, err
	}
	spec, ok := c.m.JobSpec(job)
	if !ok {
		return CheckpointResult{}, fmt.Errorf("%w: %s", ErrJobNotFound, job)
	}
	if wv, _ := c.m.Writer(job, writer); n <= wv.MaxCheckpoint {
		return CheckpointResult{}, fmt.Errorf("%w: checkpoint %d of %s/%s must be greater than %d",
			ErrCheckpointOrder, n, job, writer, wv.MaxCheckpoint)
	}
	if s.guarantee.Direct() {
		if offsets != nil {
			// No transaction to commit them into: they would be dropped.
			return CheckpointResult{}, fmt.Errorf("%w: offsets need a job with guarantee %s; job %s is %s",
				ErrInvalid, GuaranteeExactlyOnce, job, s.guarantee)
		}
		return c.checkpointDirect(cl, s, n, state)
	}

	// The offsets join their sink's branch before it prepares; a
	// checkpoint that wrote nothing there begins one for them alone.
	if offsets != nil {
		ob, err := c.openBranch(cl, s, offsets.Sink)
		if err != nil {
			return CheckpointResult{}, err
		}
		obr, ok := ob.br.(OffsetBranch)
		if !ok {
			return CheckpointResult{}, c.fail(cl.cleanup, s, fmt.Errorf("%w: sink %s takes offsets but its branch %v cannot carry them", ErrSinkFailure, offsets.Sink, ob.id))
		}
		if err := obr.AddOffsets(cl.work, offsets); err != nil {
			return CheckpointResult{}, c.fail(cl.cleanup, s, fmt.Errorf("offsets of checkpoint %d: %w", n, err))
		}
	}

	// Phase 1: prepare every open branch (in parallel: sinks are independent).
	t0 := c.now()
	obs := make([]*openBranch, 0, len(s.open))
	for _, name := range sortedKeys(s.open) {
		obs = append(obs, s.open[name])
	}
	handles := make([]Handle, len(obs))
	errs := make([]error, len(obs))
	var pwg sync.WaitGroup
	for i, ob := range obs {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			handles[i], errs[i] = ob.br.Prepare(cl.work)
		}()
	}
	pwg.Wait()
	if err := errors.Join(errs...); err != nil {
		return CheckpointResult{}, c.fail(cl.cleanup, s, fmt.Errorf("prepare checkpoint %d: %w", n, err))
	}
	c.metrics.CheckpointDone(job, "prepare", c.now().Sub(t0))
	c.failpoint("after-prepare")

	// The durable point: PREPARED (+ DECIDED in auto mode) in one entry.
	jbs := make([]JournalBranch, len(obs))
	ids := make([]BranchID, len(obs))
	brs := make([]Branch, len(obs))
	for i, ob := range obs {
		jbs[i] = JournalBranch{ID: ob.id, Handle: handles[i]}
		ids[i], brs[i] = ob.id, ob.br
	}
	c.branches.hold(ids, brs)
	clear(s.open)
	t1 := c.now()
	auto := spec.Commit == ModeAuto
	// The journal gets the whole call's time, not only the work's: a
	// prepared checkpoint is worth journaling until the deadline.
	// It ends early, though, when the session may no longer act (its
	// writer moved, or this node lost its lease): the entry would be
	// refused or cannot be made, and the prepared branches must be let go
	// for the new owner (dropSession waits for this call).
	jctx, unbindJ := bindSession(cl.cleanup, s)
	defer unbindJ()
	_, err = c.propose(jctx, Command{Op: OpPrepared, Job: job, Writer: writer, Epoch: epoch, Checkpoint: n,
		State: state, Branches: jbs, Decide: auto})
	if err != nil && c.m.journaledAt(job, writer, n, epoch) {
		// The journal has checkpoint n of this session: the entry
		// applied, whatever this attempt says (an unknown outcome; or a
		// retry that was applied again after its key was forgotten and
		// refused as out of order). Aborting now would be data_loss.
		err = nil
	}
	if err != nil && errors.Is(err, ErrUnavailable) {
		// Unknown outcome: the entry may still be applied (the journal
		// keeps an entry whose proposer stopped waiting). Aborting now
		// would turn a late apply into data_loss. The branches stay
		// prepared and held, not claimed: if the entry applies, the
		// recovery loop or the writer's next open finishes them; if it
		// never does, the next open — whose own entry comes after this
		// one in the journal — fences them away (fenceWriter forgets
		// them).
		c.branches.release(ids)
		s.failed = err
		c.log.Warn("checkpoint's journal entry has an unknown outcome; its branches stay prepared until the journal settles",
			"job", job, "writer", writer, "checkpoint", n, "err", err)
		return CheckpointResult{}, fmt.Errorf("%w (checkpoint %d may still be journaled: reopen the session, which restores what the journal has)", err, n)
	}
	if err != nil {
		for i, ob := range obs {
			if aerr := ob.br.Abort(cl.cleanup); aerr != nil {
				c.log.Warn("abort after failed journal entry", "branch", ob.id.String(), "err", aerr)
			}
			c.branches.forget(ids[i])
		}
		s.failed = err
		return CheckpointResult{}, err
	}
	c.metrics.CheckpointDone(job, "journal", c.now().Sub(t1))
	c.failpoint("after-journal")
	s.lastN, s.lastSum, s.dirty = n, sum, false

	if !auto || len(obs) == 0 {
		c.branches.release(ids) // held for the external commit
		r := c.journaledStatus(job, writer, n, jbs, StatusPrepared)
		s.last = &r
		return r, nil
	}
	fin := make([]PendingBranch, len(obs))
	for i := range obs {
		fin[i] = PendingBranch{Job: job, Writer: writer, Checkpoint: n, Decision: decisionCommit, Branch: jbs[i]}
	}
	if wait == WaitPrepared {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.finish(context.WithoutCancel(ctx), fin, nil)
		}()
		r := CheckpointResult{Checkpoint: n, Status: StatusCommitting, Branches: branchInfosOf(jbs, StatusCommitting)}
		s.last = &r
		return r, nil
	}
	// The answer comes once every sink has committed, not after the
	// RESOLVED entry too: that entry only tells recovery there is nothing
	// left to do, and costs a durable append the app need not wait for.
	// Until it applies the branches' slots stay held (the next checkpoint
	// takes another slot), and a crash before it re-commits, which the
	// sinks answer as already done. Anything else (a failed or lost
	// commit, data loss) is answered from the journal as before.
	// A sink without a spare slot gets no early answer: the writer's next
	// write would find every slot held and answer backpressure.
	sinksDone := make(chan struct{})
	var early <-chan struct{}
	if c.spareSlots(job, writer, obs) {
		early = sinksDone
	}
	c.finishWithin(cl.ctx, early, func(ctx context.Context) {
		c.finish(ctx, fin, func() { close(sinksDone) })
	})
	var r CheckpointResult
	select {
	case <-sinksDone:
		r = CheckpointResult{Checkpoint: n, Status: StatusCommitted, Branches: branchInfosOf(jbs, StatusCommitted)}
	default:
		r = c.journaledStatus(job, writer, n, jbs, StatusCommitting)
	}
	s.last = &r
	return r, checkpointLoss(job, writer, r)
}

// spareSlots reports whether every sink of obs has a slot left for the
// writer's next branch besides its unresolved ones.
func (c *Coordinator) spareSlots(job, writer string, obs []*openBranch) bool {
	used := map[string]int{}
	for _, p := range c.m.Pending(job) {
		if p.Writer == writer {
			used[p.Branch.ID.Sink]++
		}
	}
	for _, ob := range obs {
		if used[ob.id.Sink] >= c.cfg.Sinks[ob.id.Sink].MaxInflight() {
			return false
		}
	}
	return true
}

// journaledStatus is checkpoint n's status in this node's copy of the
// journal, which has applied its entry (the journal waits for that). Should
// the copy not know it (it left the recent list already), the answer is
// built from what this call journaled, with status fallback, never an
// empty success.
func (c *Coordinator) journaledStatus(job, writer string, n int64, jbs []JournalBranch, fallback string) CheckpointResult {
	if r, ok := c.m.CheckpointStatus(job, writer, n); ok {
		return r
	}
	if fallback == StatusCommitting {
		fallback = c.m.CommittedStatus(job, writer, n)
	}
	return CheckpointResult{Checkpoint: n, Status: fallback, Branches: branchInfosOf(jbs, fallback)}
}

// checkpointLoss returns an error wrapping ErrDataLoss, naming the sinks,
// when r reports data loss; nil otherwise.
func checkpointLoss(job, writer string, r CheckpointResult) error {
	if r.Status != StatusDataLoss {
		return nil
	}
	var sinks []string
	for _, b := range r.Branches {
		if b.Status == StatusDataLoss {
			sinks = append(sinks, b.Sink)
		}
	}
	return fmt.Errorf("%w: checkpoint %d of %s/%s was decided to commit, but sink %s had aborted it",
		ErrDataLoss, r.Checkpoint, job, writer, strings.Join(sinks, ", "))
}

func branchInfosOf(jbs []JournalBranch, status string) []BranchInfo {
	out := make([]BranchInfo, len(jbs))
	for i, b := range jbs {
		out[i] = BranchInfo{Sink: b.ID.Sink, Slot: b.ID.Slot, Status: status, Handle: b.Handle}
	}
	return out
}

// Commit decides to commit, for every writer of an external-mode job, each
// prepared checkpoint ≤ n, then commits their branches. Status "committing"
// means the decision is durable and some sink has not confirmed yet; the
// recovery loop retries until it does.
func (c *Coordinator) Commit(ctx context.Context, job string, n int64) (CommitResult, error) {
	return c.decide(ctx, job, n, true)
}

// Abort decides to abort checkpoint n of every writer of an external-mode job.
func (c *Coordinator) Abort(ctx context.Context, job string, n int64) (CommitResult, error) {
	return c.decide(ctx, job, n, false)
}

func (c *Coordinator) decide(ctx context.Context, job string, n int64, commit bool) (CommitResult, error) {
	if err := CheckCheckpoint(n); err != nil {
		return CommitResult{}, err
	}
	spec, err := c.jobSpec(ctx, job)
	if err != nil {
		return CommitResult{}, err
	}
	if spec.Commit != ModeExternal {
		return CommitResult{}, fmt.Errorf("%w: job %s is in %s mode; its checkpoints commit by themselves", ErrModeConflict, job, spec.Commit)
	}
	cl := bound(ctx, c.cfg.Timeouts.Commit)
	defer cl.done()
	res, err := c.propose(cl.ctx, Command{Op: OpDecide, Job: job, Checkpoint: n, Commit: commit})
	if err != nil {
		return CommitResult{}, err
	}
	inScope := func(p PendingBranch) bool {
		if p.Job != job {
			return false
		}
		if commit {
			return p.Checkpoint <= n && p.Decision == decisionCommit
		}
		return p.Checkpoint == n && p.Decision == decisionAbort
	}
	// What this call finishes is noted before: a branch resolved as
	// data_loss is no longer pending, so "nothing pending" afterwards would
	// read as committed. The status comes from the journal instead.
	scope := c.decidedCommits(job, inScope)
	c.finishWithin(cl.ctx, nil, func(ctx context.Context) { c.finishDecided(ctx, inScope) })
	// Writers other nodes own are finished there (or taken over by the
	// leader): wait for the journal to say so, within the call's working
	// time, and for this node's takeovers and finishes in progress. This
	// node's own branches that failed to finish are the recovery loop's.
	c.waitResolved(cl.work, func(p PendingBranch) bool {
		return inScope(p) && (!c.m.ownedBy(p.Job, p.Writer, c.cfg.Node) || c.branches.isClaimed(p.Branch.ID) ||
			c.recovering(writerKey{p.Job, p.Writer}))
	})
	out := CommitResult{Checkpoint: n, Status: StatusCommitted, Writers: res.Decided}
	if !commit {
		out.Status = StatusAborted
	}
	if out.Writers == nil {
		out.Writers = map[string][]int64{}
	}
	for _, p := range c.m.Pending(job) {
		if inScope(p) {
			out.Status = StatusCommitting
			if !commit {
				out.Status = StatusAborting
			}
			break
		}
	}
	if !commit {
		return out, nil
	}
	// A repeated call decides nothing new: checkpoint n itself is in its
	// scope too, so a retry of a call that met a loss reports it again.
	if j, ok := c.m.JobInfo(job); ok {
		for _, w := range j.Writers {
			if !slices.Contains(scope[w.Name], n) {
				scope[w.Name] = append(scope[w.Name], n)
			}
		}
	}
	var lost []string
	for _, w := range sortedKeys(scope) {
		cps := slices.Clone(scope[w])
		slices.Sort(cps)
		for _, cp := range cps {
			if r, ok := c.m.CheckpointStatus(job, w, cp); ok && r.Status == StatusDataLoss {
				if out.DataLoss == nil {
					out.DataLoss = map[string][]int64{}
				}
				out.DataLoss[w] = append(out.DataLoss[w], cp)
				lost = append(lost, fmt.Sprintf("%s@%d", w, cp))
			}
		}
	}
	if len(lost) > 0 {
		out.Status = StatusDataLoss
		return out, fmt.Errorf("%w: commit of %s up to checkpoint %d: a sink had aborted writer@checkpoint %s",
			ErrDataLoss, job, n, strings.Join(lost, ", "))
	}
	return out, nil
}

// validateOffsets checks a checkpoint's offsets against the job: the sink
// must be one of the job's and take offsets (OffsetSink).
func (c *Coordinator) validateOffsets(job string, o *Offsets) error {
	if err := CheckOffsets(o); err != nil {
		return err
	}
	spec, ok := c.m.JobSpec(job)
	if !ok {
		return fmt.Errorf("%w: %s", ErrJobNotFound, job)
	}
	sink := c.cfg.Sinks[o.Sink]
	if !slices.Contains(spec.Sinks, o.Sink) || sink == nil {
		return fmt.Errorf("%w: offsets: sink %q is not a sink of job %s (sinks: %v)", ErrUnknownSink, o.Sink, job, spec.Sinks)
	}
	os, ok := sink.(OffsetSink)
	if !ok {
		return fmt.Errorf("%w: offsets: sink %q cannot commit consumer-group offsets; name a Kafka sink of job %s", ErrInvalid, o.Sink, job)
	}
	return os.ValidateOffsets(o)
}
