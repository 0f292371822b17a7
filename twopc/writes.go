package twopc

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// validateRecords checks records for a job without writing anything. It
// fills in the sink when the job has only one, and lets each sink normalise.
func (c *Coordinator) validateRecords(job string, recs []*Record) error {
	spec, ok := c.m.JobSpec(job)
	if !ok {
		return fmt.Errorf("%w: %s", ErrJobNotFound, job)
	}
	if len(recs) > c.cfg.MaxRecordsPerCall {
		return fmt.Errorf("%w: %d records in one call; the limit is %d", ErrInvalid, len(recs), c.cfg.MaxRecordsPerCall)
	}
	var lastName string
	var last Sink
	for i, r := range recs {
		if r == nil {
			return fmt.Errorf("%w: record %d is null", ErrInvalid, i+1)
		}
		if r.Sink == "" && len(spec.Sinks) == 1 {
			r.Sink = spec.Sinks[0]
		}
		if r.Sink != lastName || last == nil {
			if !slices.Contains(spec.Sinks, r.Sink) || c.cfg.Sinks[r.Sink] == nil {
				return fmt.Errorf("%w: record %d: sink %q is not a sink of job %s (sinks: %v)", ErrUnknownSink, i+1, r.Sink, job, spec.Sinks)
			}
			lastName, last = r.Sink, c.cfg.Sinks[r.Sink]
		}
		if err := last.Validate(r); err != nil {
			return &RecordError{Line: i + 1, Err: err}
		}
	}
	return nil
}

// Write validates records and appends them to the writer's open branches.
// Invalid input changes nothing. A repeat of the last seq with the same
// digest is acknowledged without effect; with another digest, or a lower
// seq, it is a conflict. seq nil means the call has none.
func (c *Coordinator) Write(ctx context.Context, job, writer string, epoch uint64, seq *Seq, recs []*Record) (WriteResult, error) {
	s, err := c.sessionFor(job, writer, epoch)
	if err != nil {
		return WriteResult{}, err
	}
	ctx, unbind := bindSession(ctx, s)
	defer unbind()
	cl := bound(ctx, c.cfg.Timeouts.Write)
	defer cl.done()
	if err := lockWithin(cl.work, &s.mu, job, writer); err != nil {
		return WriteResult{}, err
	}
	defer s.mu.Unlock()
	if err := s.usable(); err != nil {
		return WriteResult{}, err
	}
	if seq != nil && s.hasSeq {
		if seq.N == s.seq && seq.Digest != s.seqSum {
			// Acknowledging it would drop records the app believes written.
			return WriteResult{}, fmt.Errorf("%w: seq %d was already used with a different body; a retry must repeat the body, new records need a higher seq",
				ErrSeqConflict, seq.N)
		}
		if seq.N == s.seq {
			return WriteResult{Accepted: s.lastAcc, Seq: seq.N, Duplicate: true}, nil
		}
		if seq.N < s.seq {
			return WriteResult{}, fmt.Errorf("%w: seq %d is lower than the last one, %d", ErrSeqConflict, seq.N, s.seq)
		}
	}
	if err := c.validateRecords(job, recs); err != nil {
		return WriteResult{}, err
	}
	groups, order := bySink(recs)
	// Open every needed branch before writing anything, so backpressure
	// leaves the call without effect.
	direct := s.guarantee.Direct()
	for _, name := range order {
		var err error
		if direct {
			_, err = c.openDirect(cl, s, name)
		} else {
			_, err = c.openBranch(cl, s, name)
		}
		if err != nil {
			return WriteResult{}, err
		}
	}
	// From here on a sink may hold records of this call, even if it fails.
	wasDirty := s.dirty
	s.dirty = s.dirty || len(recs) > 0
	for i, name := range order {
		var err error
		if direct {
			err = s.direct[name].br.Write(cl.work, groups[name])
		} else {
			err = s.open[name].br.Write(cl.work, groups[name])
		}
		if err != nil {
			if errors.Is(err, ErrRecordRejected) {
				err = c.rejected(cl.cleanup, s, recs, name, i > 0, err)
				if s.failed == nil {
					s.dirty = wasDirty // the rejected call changed nothing
				}
				return WriteResult{}, err
			}
			return WriteResult{}, c.fail(cl.cleanup, s, fmt.Errorf("write to sink %s: %w", name, err))
		}
		c.metrics.Records(job, name, len(groups[name]), recordBytes(groups[name]))
	}
	c.failpoint("after-write")
	if seq != nil {
		s.hasSeq, s.seq, s.seqSum = true, seq.N, seq.Digest
	}
	s.lastAcc = len(recs)
	res := WriteResult{Accepted: len(recs)}
	if seq != nil {
		res.Seq = seq.N
	}
	return res, nil
}

// bySink groups records by sink, keeping each sink's order. Most calls
// have one sink: then the call's slice is the group, with no map and no
// copy of a thousand pointers.
func bySink(recs []*Record) (map[string][]*Record, []string) {
	if len(recs) == 0 {
		return nil, nil
	}
	one := true
	for _, r := range recs[1:] {
		if r.Sink != recs[0].Sink {
			one = false
			break
		}
	}
	if one {
		return map[string][]*Record{recs[0].Sink: recs}, []string{recs[0].Sink}
	}
	groups := map[string][]*Record{}
	var order []string
	for _, r := range recs {
		if _, ok := groups[r.Sink]; !ok {
			order = append(order, r.Sink)
		}
		groups[r.Sink] = append(groups[r.Sink], r)
	}
	return groups, order
}

func recordBytes(recs []*Record) int {
	n := 0
	for _, r := range recs {
		n += len(r.Key) + len(r.Value) + len(r.KeyB64) + len(r.ValueB64)
	}
	return n
}

// openBranch returns the session's open branch in a sink, beginning one on
// the lowest free slot. Needs s.mu.
func (c *Coordinator) openBranch(cl *call, s *session, sinkName string) (*openBranch, error) {
	if ob := s.open[sinkName]; ob != nil {
		return ob, nil
	}
	sink := c.cfg.Sinks[sinkName]
	used := map[int]bool{}
	for _, p := range c.m.Pending(s.job) {
		if p.Writer == s.writer && p.Branch.ID.Sink == sinkName {
			used[p.Branch.ID.Slot] = true
		}
	}
	slot := -1
	for i := 0; i < sink.MaxInflight(); i++ {
		if !used[i] {
			slot = i
			break
		}
	}
	if slot < 0 {
		return nil, fmt.Errorf("%w: writer %s/%s has %d unfinished checkpoints in sink %s; commit or wait",
			ErrBackpressure, s.job, s.writer, sink.MaxInflight(), sinkName)
	}
	wv, _ := c.m.Writer(s.job, s.writer)
	s.nextSeq++
	id := BranchID{Job: s.job, Writer: s.writer, Sink: sinkName, Epoch: s.epoch, Seq: s.nextSeq, Slot: slot, After: wv.MaxCheckpoint}
	br, err := sink.Begin(cl.work, id)
	if errors.Is(err, ErrBackpressure) {
		// The sink is out of a bounded resource (e.g. connections);
		// nothing was written, so the session stays usable.
		return nil, err
	}
	if err != nil {
		return nil, c.fail(cl.cleanup, s, fmt.Errorf("begin %s: %w", id, err))
	}
	ob := &openBranch{id: id, br: br}
	s.open[sinkName] = ob
	return ob, nil
}
