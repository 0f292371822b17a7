package twopc

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"time"
)

// This file is the write path of jobs whose guarantee is at_least_once or
// none (DESIGN.md "Delivery guarantees"). Such a job has no transactions
// to prepare, decide, resolve or fence: a session writes through one
// direct branch per sink for its whole life, a checkpoint flushes them all
// and only then journals its state as committed in one entry. Nothing of
// such a job is ever pending in the journal, so recovery, expiry, takeover
// and delete have nothing of it to finish.

// DirectSink is implemented by sinks that can serve jobs with guarantee
// at_least_once or none. PutJob refuses such a job on a sink without it.
type DirectSink interface {
	// BeginDirect opens a direct branch for one session of a writer in
	// this sink. id names it in logs (Slot is 0; Seq is unique per
	// session). No I/O is required before the first Write.
	BeginDirect(ctx context.Context, id BranchID, opt DirectOptions) (DirectBranch, error)
}

// DirectOptions tell a direct branch how to behave.
type DirectOptions struct {
	// Guarantee is GuaranteeAtLeastOnce or GuaranteeNone.
	Guarantee Guarantee
	// OnFailed is called (guarantee none only) for records the sink gave
	// up on instead of returning an error: n records, the cause. It may be
	// called from any goroutine, also after Close; it must be cheap.
	OnFailed func(n int, err error)
}

// DirectBranch is a session's non-transactional writer in one sink.
// Calls are serialised by the coordinator.
//
// at_least_once: Write hands records over (Kafka: to the idempotent
// producer; MySQL: into a plain transaction) with Branch.Write's rules for
// rejected records; Flush makes everything written so far durable and
// checks it (Kafka: every record acked; MySQL: COMMIT, then the next
// transaction begins on the same connection), and an error means some of
// it may be lost, so the checkpoint must not be journaled. Close gives the
// branch up; what was not flushed may or may not reach the sink.
//
// none: Write hands records over without waiting for them where the sink
// can (failures go to DirectOptions.OnFailed and Write returns nil);
// Flush returns at once; Close lets records in flight go on.
type DirectBranch interface {
	Write(ctx context.Context, recs []*Record) error
	Flush(ctx context.Context) error
	Close(ctx context.Context) error
}

// DirectMetrics is optionally implemented by a Metrics: records that a
// sink gave up on for a job with guarantee none.
type DirectMetrics interface {
	RecordsFailed(job, sink string, g Guarantee, n int)
}

type directBranch struct {
	id BranchID
	br DirectBranch
}

// directFailLogEvery bounds the failure logs of one direct branch of a
// none job: a broker outage fails every record.
const directFailLogEvery = 10 * time.Second

// openDirect returns the session's direct branch in a sink, beginning one
// when there is none. Needs s.mu.
func (c *Coordinator) openDirect(cl *call, s *session, sinkName string) (*directBranch, error) {
	if db := s.direct[sinkName]; db != nil {
		return db, nil
	}
	ds, ok := c.cfg.Sinks[sinkName].(DirectSink)
	if !ok {
		// PutJob refuses this; a sink swapped under a journaled job lands here.
		return nil, c.fail(cl.cleanup, s, fmt.Errorf("%w: sink %s cannot serve guarantee %s", ErrInvalid, sinkName, s.guarantee))
	}
	wv, _ := c.m.Writer(s.job, s.writer)
	s.nextSeq++
	id := BranchID{Job: s.job, Writer: s.writer, Sink: sinkName, Epoch: s.epoch, Seq: s.nextSeq, After: wv.MaxCheckpoint}
	opt := DirectOptions{Guarantee: s.guarantee}
	if s.guarantee == GuaranteeNone {
		opt.OnFailed = c.onDirectFailed(id, s.guarantee)
	}
	br, err := ds.BeginDirect(cl.work, id, opt)
	if errors.Is(err, ErrBackpressure) {
		return nil, err // nothing written: the session stays usable
	}
	if err != nil {
		return nil, c.fail(cl.cleanup, s, fmt.Errorf("begin %s: %w", id, err))
	}
	if s.direct == nil {
		s.direct = map[string]*directBranch{}
	}
	db := &directBranch{id: id, br: br}
	s.direct[sinkName] = db
	return db, nil
}

// onDirectFailed counts records given up on and logs the first failure
// and then at most one summary per directFailLogEvery.
func (c *Coordinator) onDirectFailed(id BranchID, g Guarantee) func(int, error) {
	dm, _ := c.metrics.(DirectMetrics)
	var mu sync.Mutex
	var unlogged int
	var last time.Time
	return func(n int, err error) {
		if n <= 0 {
			return
		}
		if dm != nil {
			dm.RecordsFailed(id.Job, id.Sink, g, n)
		}
		mu.Lock()
		unlogged += n
		total, now := unlogged, time.Now()
		logIt := last.IsZero() || now.Sub(last) >= directFailLogEvery
		if logIt {
			last, unlogged = now, 0
		}
		mu.Unlock()
		if logIt {
			c.log.Warn("records failed and were dropped (guarantee none)", "job", id.Job, "writer", id.Writer, "sink", id.Sink,
				"epoch", id.Epoch, "records", total, "err", err)
		}
	}
}

// closeDirect closes a session's direct branches. Needs s.mu.
func (c *Coordinator) closeDirect(ctx context.Context, s *session) {
	for name, db := range s.direct {
		if err := db.br.Close(ctx); err != nil {
			c.log.Warn("close of direct branch failed", "branch", db.id.String(), "err", err)
		}
		delete(s.direct, name)
	}
}

// checkpointDirect is Checkpoint for a job with guarantee at_least_once or
// none: flush every direct branch of the session, then journal checkpoint
// n with its state, committed, in one entry. A failed flush fails the
// session and journals nothing: the app reopens and replays from the last
// journaled state, which may duplicate records but loses none. Needs s.mu;
// Checkpoint checked n, the state and the session.
func (c *Coordinator) checkpointDirect(cl *call, s *session, n int64, state []byte) (CheckpointResult, error) {
	job, writer := s.job, s.writer
	t0 := c.now()
	dbs := make([]*directBranch, 0, len(s.direct))
	for _, name := range sortedKeys(s.direct) {
		dbs = append(dbs, s.direct[name])
	}
	errs := make([]error, len(dbs))
	var wg sync.WaitGroup
	for i, db := range dbs {
		wg.Go(func() { errs[i] = db.br.Flush(cl.work) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return CheckpointResult{}, c.fail(cl.cleanup, s, fmt.Errorf("flush for checkpoint %d: %w", n, err))
	}
	c.metrics.CheckpointDone(job, "flush", c.now().Sub(t0))
	c.failpoint("after-flush")

	t1 := c.now()
	jctx, unbindJ := bindSession(cl.cleanup, s)
	defer unbindJ()
	_, err := c.propose(jctx, Command{Op: OpPrepared, Job: job, Writer: writer, Epoch: s.epoch, Checkpoint: n,
		State: state, Decide: true})
	if err != nil && c.m.journaledAt(job, writer, n, s.epoch) {
		err = nil // applied after all (see Checkpoint)
	}
	if err != nil {
		// Unknown or refused: either way the records are in the sinks
		// already; the reopen restores whatever the journal has and the
		// app replays from there (duplicates, no loss).
		s.failed = err
		c.closeDirect(cl.cleanup, s)
		return CheckpointResult{}, fmt.Errorf("%w (checkpoint %d may or may not be journaled: reopen the session, which restores what the journal has)", err, n)
	}
	c.metrics.CheckpointDone(job, "journal", c.now().Sub(t1))
	c.failpoint("after-journal")
	s.lastN, s.lastSum, s.dirty = n, maphash.Bytes(stateSeed, state), false
	r := c.journaledStatus(job, writer, n, nil, StatusCommitted)
	r.Guarantee = s.guarantee
	s.last = &r
	return r, nil
}
