package kafka

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/twopc"
)

// Direct branches serve jobs with guarantee at_least_once or none (see
// twopc.DirectBranch and DESIGN.md "Direct branches"). The at_least_once
// ones all produce through one idempotent, non-transactional client per
// sink: no transactional id, no InitProducerID per writer, no EndTxn. A
// branch counts its own records in flight, so a checkpoint's Flush waits
// for this writer's records only, not for every writer's as kgo's Flush
// does. The none ones share a second client that is not idempotent and
// waits for the leader's ack only: an idempotent producer may not fail a
// batch it may have sent (a sequence gap), so while a broker is down its
// records would never fail and never be counted; this one fails them at
// DirectDeliveryTimeout.

var _ twopc.DirectSink = (*Sink)(nil)

// directClient returns the shared client of at_least_once (none=false)
// or none branches, making it on first use.
func (s *Sink) directClient(none bool) (*kgo.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	p, opts := &s.direct, s.directOpts
	if none {
		p, opts = &s.directNone, append(slices.Clone(s.directOpts), kgo.DisableIdempotentWrite(), kgo.RequiredAcks(kgo.LeaderAck()))
	}
	if *p == nil {
		cl, err := kgo.NewClient(opts...)
		if err != nil {
			return nil, err
		}
		*p = cl
	}
	return *p, nil
}

// BeginDirect implements twopc.DirectSink. It does no I/O.
func (s *Sink) BeginDirect(ctx context.Context, id twopc.BranchID, opt twopc.DirectOptions) (twopc.DirectBranch, error) {
	if opt.Guarantee != twopc.GuaranteeAtLeastOnce && opt.Guarantee != twopc.GuaranteeNone {
		return nil, fmt.Errorf("%w: kafka sink %q: direct branch %v with guarantee %q", twopc.ErrInvalid, s.cfg.Name, id, opt.Guarantee)
	}
	if opt.Guarantee == twopc.GuaranteeNone && opt.OnFailed == nil {
		return nil, fmt.Errorf("%w: kafka sink %q: direct branch %v: guarantee none needs OnFailed", twopc.ErrInvalid, s.cfg.Name, id)
	}
	cl, err := s.directClient(opt.Guarantee == twopc.GuaranteeNone)
	if err != nil {
		return nil, fmt.Errorf("%w: kafka sink %q: direct branch %v: %w", twopc.ErrSinkFailure, s.cfg.Name, id, err)
	}
	d := &direct{s: s, id: id, none: opt.Guarantee == twopc.GuaranteeNone, onFailed: opt.OnFailed, cl: cl}
	if d.none {
		// Records of a none job outlive the branch: Close lets them go on.
		d.ctx = s.ctx
		d.promise = d.onDropped
	} else {
		d.ctx, d.cancel = context.WithCancel(s.ctx)
		d.promise = d.onProduced
	}
	return d, nil
}

type direct struct {
	s        *Sink
	id       twopc.BranchID
	none     bool
	onFailed func(int, error)
	cl       *kgo.Client
	ctx      context.Context
	cancel   context.CancelFunc // nil for none
	promise  func(*kgo.Record, error)
	pending  atomic.Int64 // at_least_once: records whose promise has not run

	mu      sync.Mutex
	err     error // first produce error since the branch began
	errRec  TopicPartition
	errKey  string
	errSize int
	zero    chan struct{} // closed when pending reaches 0 (set by Flush)

	closed bool // coordinator's calls only
}

// onProduced is the promise of an at_least_once record.
func (d *direct) onProduced(r *kgo.Record, err error) {
	d.mu.Lock()
	if err != nil && d.err == nil {
		d.err = err
		d.errRec = TopicPartition{Topic: r.Topic, Partition: r.Partition}
		d.errKey = string(r.Key[:min(len(r.Key), 64)])
		d.errSize = len(r.Key) + len(r.Value)
	}
	if d.pending.Add(-1) == 0 && d.zero != nil {
		close(d.zero)
		d.zero = nil
	}
	d.mu.Unlock()
}

// onDropped is the promise of a none record: failures are counted.
func (d *direct) onDropped(r *kgo.Record, err error) {
	if err != nil {
		d.onFailed(1, fmt.Errorf("kafka sink %q: topic %q: %w", d.s.cfg.Name, r.Topic, err))
	}
}

func (d *direct) failf(format string, args ...any) error {
	return fmt.Errorf("%w: kafka sink %q: direct branch %v: %s", twopc.ErrSinkFailure, d.s.cfg.Name, d.id, fmt.Sprintf(format, args...))
}

// produceErr wraps the first produce error; one the broker would answer
// every replay of the record with also wraps twopc.ErrRecordRejected.
// Records before it may have been written: the session fails either way.
func (d *direct) produceErr() error {
	d.mu.Lock()
	err, tp, key, size := d.err, d.errRec, d.errKey, d.errSize
	d.mu.Unlock()
	if recordRejected(err) {
		return fmt.Errorf("%w: %w: kafka sink %q: direct branch %v: the broker refused a record of topic %q partition %d (key %q, %d bytes): %w; "+
			"the session failed: reopen, resume from the last checkpoint and replay without this record",
			twopc.ErrRecordRejected, twopc.ErrSinkFailure, d.s.cfg.Name, d.id, tp.Topic, tp.Partition, key, size, err)
	}
	return fmt.Errorf("%w: kafka sink %q: direct branch %v: produce: %w", twopc.ErrSinkFailure, d.s.cfg.Name, d.id, err)
}

// Write hands recs to the shared producer. at_least_once: a produce
// error of an earlier call surfaces here, and Produce waits for buffer
// space within ctx. none: TryProduce never waits; a full buffer fails
// the record (counted).
func (d *direct) Write(ctx context.Context, recs []*twopc.Record) error {
	if d.closed {
		return d.failf("write to a closed branch")
	}
	if !d.none {
		d.mu.Lock()
		failed := d.err != nil
		d.mu.Unlock()
		if failed {
			return d.produceErr()
		}
	}
	if d.s.cfg.CreateTopics {
		if err := d.s.ensureTopics(ctx, recs); err != nil {
			if d.none {
				d.onFailed(len(recs), err)
				return nil
			}
			return err
		}
	}
	krs := make([]kgo.Record, len(recs))
	var hs []kgo.RecordHeader
	if n := headerCount(recs); n > 0 {
		hs = make([]kgo.RecordHeader, n)
	}
	if d.none {
		for i, r := range recs {
			kr := &krs[i]
			hs = toKgo(kr, r, hs)
			kr.Context = d.ctx
			d.cl.TryProduce(d.ctx, kr, d.promise)
		}
		return nil
	}
	// As branch.Write: the records produce under the branch's context,
	// which is cancelled if ctx ends while Produce waits for space.
	d.pending.Add(int64(len(recs)))
	stop := context.AfterFunc(ctx, d.cancel)
	for i, r := range recs {
		kr := &krs[i]
		hs = toKgo(kr, r, hs)
		kr.Context = d.ctx
		d.cl.Produce(d.ctx, kr, d.promise)
	}
	if !stop() {
		return fmt.Errorf("%w: kafka sink %q: direct branch %v: produce did not buffer in time (broker not answering?): %w",
			twopc.ErrSinkFailure, d.s.cfg.Name, d.id, context.Cause(ctx))
	}
	return nil
}

// Flush waits until every record this branch produced has its result
// (at_least_once) and fails if any failed. none: nothing to wait for.
func (d *direct) Flush(ctx context.Context) error {
	if d.closed {
		return d.failf("flush of a closed branch")
	}
	if d.none {
		return nil
	}
	d.mu.Lock()
	if d.pending.Load() > 0 {
		zero := make(chan struct{})
		d.zero = zero
		d.mu.Unlock()
		select {
		case <-zero:
		case <-ctx.Done():
			d.mu.Lock()
			d.zero = nil
			d.mu.Unlock()
			return fmt.Errorf("%w: kafka sink %q: direct branch %v: waiting for %d records to be acknowledged: %w",
				twopc.ErrSinkFailure, d.s.cfg.Name, d.id, d.pending.Load(), context.Cause(ctx))
		}
		d.mu.Lock()
	}
	failed := d.err != nil
	d.mu.Unlock()
	if failed {
		return d.produceErr()
	}
	return nil
}

// Close gives the branch up. at_least_once: records not acknowledged yet
// are cancelled where kgo still can (a checkpoint never counted on them);
// none: they go on.
func (d *direct) Close(ctx context.Context) error {
	if d.closed {
		return nil
	}
	d.closed = true
	if d.cancel != nil {
		d.cancel()
	}
	return nil
}
