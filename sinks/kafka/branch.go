package kafka

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/twopc"
)

type branchState uint8

const (
	stateOpen branchState = iota
	statePrepared
	stateCommitted
	stateAborted
)

// branch is one Kafka transaction on its slot's client.
type branch struct {
	s       *Sink
	id      twopc.BranchID
	sl      *slot
	promise func(*kgo.Record, error)
	pending atomic.Int64 // records produced whose promise has not run yet
	// begun is when the branch handed its first record to franz-go (Begin
	// until then): the broker's timer starts when the transaction adds its
	// first partition, which franz-go asks for only after that.
	begun    time.Time
	produced int // records handed to franz-go; 0: no transaction in the broker yet

	// ctx is the context of the branch's records (a child of the sink's):
	// cancel ends it when a write call's deadline passes while it waits for
	// buffer space (see Write), and when the branch no longer needs it
	// (prepared or aborted), so that it does not stay among the sink
	// context's children.
	ctx    context.Context
	cancel context.CancelFunc

	// mu guards what the produce promises record. kgo calls promises
	// serially, so mu is only contended by Prepare.
	mu         sync.Mutex
	err        error // first produce error
	errRec     TopicPartition
	errKey     string // first 64 bytes of the failed record's key
	errSize    int    // its key and value bytes
	parts      map[TopicPartition]struct{}
	last       TopicPartition
	pid        int64 // producer id and epoch of the produced records
	epoch      int16
	mixedEpoch bool
	zero       chan struct{} // closed when pending reaches 0 (set by Prepare)
	// group is the consumer group whose offsets AddOffsets added ("":
	// none), with the producer id and epoch it added them with. Set
	// before the first AddOffsetsToTxn: from then on the broker may have
	// a transaction even if no record was acknowledged.
	group    string
	offPID   int64
	offEpoch int16

	// Used only by the coordinator's serialised calls.
	state branchState
	th    TxnHandle
}

// onProduced is the promise of every record of the branch. It must stay
// cheap: no allocation unless the record opens a new partition.
func (b *branch) onProduced(r *kgo.Record, err error) {
	b.mu.Lock()
	if err != nil {
		if b.err == nil {
			b.err = err
			b.errRec = TopicPartition{Topic: r.Topic, Partition: r.Partition}
			b.errKey = string(r.Key[:min(len(r.Key), 64)])
			b.errSize = len(r.Key) + len(r.Value)
		}
	} else {
		if b.parts == nil || r.Topic != b.last.Topic || r.Partition != b.last.Partition {
			b.last = TopicPartition{Topic: r.Topic, Partition: r.Partition}
			if b.parts == nil {
				b.parts = make(map[TopicPartition]struct{}, 4)
			}
			b.parts[b.last] = struct{}{}
		}
		if b.pid == -1 {
			b.pid, b.epoch = r.ProducerID, r.ProducerEpoch
		} else if b.pid != r.ProducerID || b.epoch != r.ProducerEpoch {
			b.mixedEpoch = true
		}
	}
	if b.pending.Add(-1) == 0 && b.zero != nil {
		close(b.zero)
		b.zero = nil
	}
	b.mu.Unlock()
}

func (b *branch) firstErr() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

func (b *branch) failf(format string, args ...any) error {
	return fmt.Errorf("%w: kafka sink %q: branch %v: %s", twopc.ErrSinkFailure, b.s.cfg.Name, b.id, fmt.Sprintf(format, args...))
}

// Expired returns an error wrapping twopc.ErrSinkFailure and ErrExpired
// once the open branch is older than the sink's MaxOpen. The coordinator
// asks it in its background loop to fail such a session early, so the
// branch releases its slot before the broker aborts it.
func (b *branch) Expired() error {
	if b.state != stateOpen || (b.produced == 0 && b.group == "") {
		return nil // nothing in the broker that could time out
	}
	age := time.Since(b.begun)
	if age <= b.s.maxOpen {
		return nil
	}
	return fmt.Errorf("%w: kafka sink %q: branch %v (%s): %w: open for %v, longer than %v (expire_share %v of the transaction timeout %v); reopen the session and replay from its checkpoint",
		twopc.ErrSinkFailure, b.s.cfg.Name, b.id, b.sl.txnID, ErrExpired, age.Round(time.Millisecond), b.s.maxOpen, b.s.cfg.ExpireShare, b.s.timeout)
}

// checkAlive asks the transaction coordinator whether the branch's
// transaction is still ongoing with our producer id and epoch: a broker that
// timed it out (or lost it) has bumped the epoch or ended it. A failed
// request is only logged: the age check in Expired is the guarantee, this
// one catches what the age cannot see (e.g. a broker restarted without its
// open transactions).
func (b *branch) checkAlive(ctx context.Context, pid int64, epoch int16) error {
	d, err := kadm.NewClient(b.s.admin).DescribeTransactions(ctx, b.sl.txnID)
	if err == nil {
		if dt, ok := d[b.sl.txnID]; !ok {
			err = errors.New("not in the answer")
		} else {
			err = dt.Err
			if err == nil && (dt.State != "Ongoing" || dt.ProducerID != pid || dt.ProducerEpoch != epoch) {
				return fmt.Errorf("%w: kafka sink %q: branch %v (%s): %w: the broker has it %s with producer id/epoch %d/%d, ours is %d/%d; reopen the session and replay from its checkpoint",
					twopc.ErrSinkFailure, b.s.cfg.Name, b.id, b.sl.txnID, ErrExpired, dt.State, dt.ProducerID, dt.ProducerEpoch, pid, epoch)
			}
		}
	}
	if err != nil {
		b.s.log.Warn("cannot ask the broker whether a transaction is still open; relying on its age", "branch", b.id.String(), "transactional_id", b.sl.txnID, "err", err)
	}
	return nil
}

// produceErr wraps the branch's first produce error. One that the broker
// (or franz-go, for the broker's limits) would answer every replay of the
// record with also wraps twopc.ErrRecordRejected, so the app learns the
// record is poison instead of replaying it forever. The record cannot be
// taken out of a Kafka transaction, so it stays a sink failure too: the
// session fails and the app replays without the record.
func (b *branch) produceErr(err error) error {
	b.mu.Lock()
	tp, key, size := b.errRec, b.errKey, b.errSize
	b.mu.Unlock()
	if recordRejected(err) {
		return fmt.Errorf("%w: %w: kafka sink %q: branch %v: the broker refused a record of topic %q partition %d (key %q, %d bytes): %w; "+
			"a Kafka transaction cannot drop one record, so the session failed: reopen, resume from the last checkpoint and replay without this record",
			twopc.ErrRecordRejected, twopc.ErrSinkFailure, b.s.cfg.Name, b.id, tp.Topic, tp.Partition, key, size, err)
	}
	return fmt.Errorf("%w: kafka sink %q: branch %v: produce: %w", twopc.ErrSinkFailure, b.s.cfg.Name, b.id, err)
}

// recordRejected reports whether a produce error is about the record
// itself, so a retry gets it again.
func recordRejected(err error) bool {
	for _, e := range []error{kerr.MessageTooLarge, kerr.InvalidRecord, kerr.RecordListTooLarge, kerr.InvalidTimestamp} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// openClient is where every call that adds to the open transaction
// (Write, AddOffsets) starts: the branch must be open, not past its
// transaction timeout, without an earlier produce error, and its slot's
// client must still be ours. what names the call in the error.
func (b *branch) openClient(what string) (*kgo.Client, error) {
	if b.state != stateOpen {
		return nil, b.failf("%s to a branch that is not open", what)
	}
	if err := b.Expired(); err != nil {
		return nil, err
	}
	if err := b.firstErr(); err != nil {
		return nil, b.produceErr(err)
	}
	cl := b.s.client(b)
	if cl == nil {
		return nil, b.failf("slot %s was fenced or closed", b.sl.txnID)
	}
	return cl, nil
}

// Write produces recs asynchronously into the open transaction; produce
// errors surface here on a later call, and at the latest in Prepare.
func (b *branch) Write(ctx context.Context, recs []*twopc.Record) error {
	cl, err := b.openClient("write")
	if err != nil {
		return err
	}
	if b.s.cfg.CreateTopics {
		if err := b.s.ensureTopics(ctx, recs); err != nil {
			return err
		}
	}
	if b.produced == 0 && len(recs) > 0 {
		b.begun = time.Now()
	}
	b.produced += len(recs)
	// Records outlive this call: they are buffered until Prepare flushes
	// them, so they produce under the branch's context, not ctx (an HTTP
	// request's context ends when the write call answers, and franz-go
	// cancels buffered records whose context ends). Produce blocks while
	// the client buffers MaxBufferedRecords (a broker that does not
	// answer); the same context is the only way to stop that wait, so
	// when ctx ends during the loop the branch's context is cancelled:
	// its records fail and the write fails, which aborts the branch.
	//
	// Per call rather than per record: one slab of kgo.Records (franz-go
	// keeps pointers into it until each promise ran, which keeps the slab
	// alive that long), one slab of headers, one clock reading (kgo reads
	// the clock for every record without a timestamp; records of one call
	// are accepted at one moment anyway), one pending count.
	krs := make([]kgo.Record, len(recs))
	var hs []kgo.RecordHeader
	if n := headerCount(recs); n > 0 {
		hs = make([]kgo.RecordHeader, n)
	}
	now := time.Now()
	b.pending.Add(int64(len(recs)))
	stop := context.AfterFunc(ctx, b.cancel)
	for i, r := range recs {
		kr := &krs[i]
		hs = toKgo(kr, r, hs)
		kr.Context, kr.Timestamp = b.ctx, now
		cl.Produce(b.ctx, kr, b.promise)
	}
	if !stop() {
		return fmt.Errorf("%w: kafka sink %q: branch %v: produce did not buffer in time (broker not answering?): %w",
			twopc.ErrSinkFailure, b.s.cfg.Name, b.id, context.Cause(ctx))
	}
	return nil
}

func headerCount(recs []*twopc.Record) int {
	n := 0
	for _, r := range recs {
		n += len(r.Headers)
	}
	return n
}

// Prepare flushes, checks every produce result and returns the handle.
func (b *branch) Prepare(ctx context.Context) (twopc.Handle, error) {
	if b.state != stateOpen {
		return nil, b.failf("prepare of a branch that is not open")
	}
	if err := b.Expired(); err != nil {
		return nil, err
	}
	cl := b.s.client(b)
	if cl == nil {
		return nil, b.failf("slot %s was fenced or closed", b.sl.txnID)
	}
	if err := cl.Flush(ctx); err != nil {
		return nil, fmt.Errorf("%w: kafka sink %q: branch %v: flush: %w", twopc.ErrSinkFailure, b.s.cfg.Name, b.id, err)
	}
	// Flush waits for buffered records; promises of records failed before
	// buffering may still be on their way.
	b.mu.Lock()
	if b.pending.Load() > 0 {
		zero := make(chan struct{})
		b.zero = zero
		b.mu.Unlock()
		select {
		case <-zero:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: kafka sink %q: branch %v: waiting for produce results: %w", twopc.ErrSinkFailure, b.s.cfg.Name, b.id, ctx.Err())
		}
		b.mu.Lock()
	}
	err, mixed := b.err, b.mixedEpoch
	th := TxnHandle{
		TransactionalID: b.sl.txnID,
		ProducerID:      -1,
		Epoch:           -1,
		Partitions:      make([]TopicPartition, 0, len(b.parts)),
		EndTxnVersion:   endTxnVersion,
	}
	for tp := range b.parts {
		th.Partitions = append(th.Partitions, tp)
	}
	recPID, recEpoch := b.pid, b.epoch
	group, offPID, offEpoch := b.group, b.offPID, b.offEpoch
	b.mu.Unlock()
	if err != nil {
		return nil, b.produceErr(err)
	}
	if mixed {
		return nil, b.failf("records were produced with different producer epochs")
	}
	slices.SortFunc(th.Partitions, func(x, y TopicPartition) int {
		return cmp.Or(cmp.Compare(x.Topic, y.Topic), cmp.Compare(x.Partition, y.Partition))
	})
	if len(th.Partitions) > 0 || group != "" {
		pid, epoch, err := cl.ProducerID(ctx)
		if err != nil {
			return nil, fmt.Errorf("%w: kafka sink %q: branch %v: producer id: %w", twopc.ErrSinkFailure, b.s.cfg.Name, b.id, err)
		}
		if len(th.Partitions) > 0 && (pid != recPID || epoch != recEpoch) {
			return nil, b.failf("producer id/epoch %d/%d differs from the records' %d/%d", pid, epoch, recPID, recEpoch)
		}
		if group != "" && (pid != offPID || epoch != offEpoch) {
			return nil, b.failf("producer id/epoch %d/%d differs from the offsets' %d/%d", pid, epoch, offPID, offEpoch)
		}
		th.ProducerID, th.Epoch, th.Group = pid, epoch, group
		if err := b.checkAlive(ctx, pid, epoch); err != nil {
			return nil, err
		}
	}
	// Checked again after the flush: the age the handle is journaled at
	// is what must leave the broker time to see the commit.
	if err := b.Expired(); err != nil {
		return nil, err
	}
	h, err := json.Marshal(th)
	if err != nil {
		return nil, b.failf("handle: %v", err)
	}
	b.th = th
	b.state = statePrepared
	b.cancel() // every record has its result: nothing uses the context any more
	return h, nil
}

// Commit commits the prepared branch on the slot's client. If that client
// is gone (Resolve, Fence, Close) or its EndTxn failed without a definite
// answer, it ends the transaction through the handle like Resolve does.
func (b *branch) Commit(ctx context.Context) error {
	switch b.state {
	case statePrepared:
	case stateCommitted:
		return nil
	default:
		return b.failf("commit of a branch that is not prepared")
	}
	if b.th.Group != "" && len(b.th.Partitions) == 0 {
		return b.commitOffsetsOnly(ctx)
	}
	if cl := b.s.client(b); cl != nil {
		err := cl.EndTransaction(ctx, kgo.TryCommit)
		if err == nil {
			b.state = stateCommitted
			b.s.release(b)
			return nil
		}
		// kgo has failed its producer id; reusing the client would run
		// InitProducerID, which aborts the transaction if it is still
		// open. Drop it and let the handle decide.
		b.s.drop(b.sl)
		b.s.log.Warn("commit on the slot client failed; ending through the handle", "branch", b.id.String(), "err", err)
	}
	if err := b.s.end(ctx, b.id, b.th, true); err != nil {
		return err
	}
	b.state = stateCommitted
	return nil
}

// Abort aborts the open or prepared branch. An open branch whose client
// cannot abort it is left to the next Fence or the transaction timeout.
func (b *branch) Abort(ctx context.Context) error {
	switch b.state {
	case stateOpen, statePrepared:
	case stateAborted:
		return nil
	default:
		return b.failf("abort of a committed branch")
	}
	// Buffered records are aborted below anyway; failing them first also
	// ends a Produce or Flush that still waits on a broker.
	defer b.cancel()
	b.mu.Lock()
	offsetsOnly := b.group != "" && len(b.parts) == 0
	b.mu.Unlock()
	if offsetsOnly {
		return b.abortOffsetsOnly(ctx)
	}
	var err error
	if cl := b.s.client(b); cl != nil {
		err = cl.AbortBufferedRecords(ctx)
		if err == nil {
			err = cl.EndTransaction(ctx, kgo.TryAbort)
		}
		if err == nil {
			b.state = stateAborted
			b.s.release(b)
			return nil
		}
		b.s.drop(b.sl)
		b.s.log.Warn("abort on the slot client failed", "branch", b.id.String(), "err", err)
	}
	if b.state == statePrepared {
		if err := b.s.end(ctx, b.id, b.th, false); err != nil {
			return err
		}
		b.state = stateAborted
		return nil
	}
	// Open: the records' producer id/epoch let us abort by EndTxn.
	b.mu.Lock()
	th := TxnHandle{TransactionalID: b.sl.txnID, ProducerID: b.pid, Epoch: b.epoch, Group: b.group, EndTxnVersion: endTxnVersion}
	for tp := range b.parts {
		th.Partitions = append(th.Partitions, tp)
	}
	b.mu.Unlock()
	if len(th.Partitions) == 0 {
		// Nothing acknowledged; a registration without data is cleared
		// by the next Fence or the transaction timeout.
		b.state = stateAborted
		if err != nil {
			return fmt.Errorf("%w: kafka sink %q: abort branch %v: %w", twopc.ErrSinkFailure, b.s.cfg.Name, b.id, errors.Join(err, errors.New("left to fence/timeout")))
		}
		return nil
	}
	if err := b.s.end(ctx, b.id, th, false); err != nil {
		return err
	}
	b.state = stateAborted
	return nil
}

// Detach lets go of a prepared branch without ending it (twopc.Detacher):
// the slot's client is dropped (closing a client does not end its
// transaction), so this process never sends another request with the
// branch's producer id and epoch from it, and the next branch on the slot
// gets a new client whose InitProducerID bumps the epoch.
func (b *branch) Detach() {
	if b.state == statePrepared {
		b.s.drop(b.sl)
	}
}

// commitOffsetsOnly commits a prepared branch that holds offsets and no
// record. kgo's EndTransaction would send no EndTxn (kgo added no
// partition), so the EndTxn goes through the handle; kgo is then told the
// transaction is over by an EndTransaction that, with nothing produced in
// the transaction, sends nothing and only clears its state (Prepare saw
// every record acknowledged and none was, so none was produced). Should
// that fail, the client is dropped instead.
func (b *branch) commitOffsetsOnly(ctx context.Context) error {
	cl := b.s.client(b)
	if cl == nil {
		// Someone else may have ended it (Resolve, Fence): the handle
		// decides, as in Commit.
		if err := b.s.end(ctx, b.id, b.th, true); err != nil {
			return err
		}
		b.state = stateCommitted
		return nil
	}
	if err := b.s.end(ctx, b.id, b.th, true); err != nil {
		b.s.drop(b.sl)
		return err
	}
	b.state = stateCommitted
	if b.produced == 0 {
		if err := cl.EndTransaction(ctx, kgo.TryAbort); err == nil {
			b.s.release(b)
			return nil
		}
	}
	b.s.drop(b.sl)
	return nil
}

// abortOffsetsOnly aborts an open or prepared branch that holds offsets
// and no acknowledged record: by EndTxn with the offsets' producer id and
// epoch (kgo would send none), after failing any buffered record. The
// slot's client is dropped: a record it produced and did not get
// acknowledged may have registered a partition kgo does not know of, and
// a new client's InitProducerID clears whatever is left.
func (b *branch) abortOffsetsOnly(ctx context.Context) error {
	if cl := b.s.client(b); cl != nil {
		_ = cl.AbortBufferedRecords(ctx) // the client is dropped below anyway
	}
	b.s.drop(b.sl)
	b.mu.Lock()
	th := TxnHandle{TransactionalID: b.sl.txnID, ProducerID: b.offPID, Epoch: b.offEpoch, Group: b.group, EndTxnVersion: endTxnVersion}
	b.mu.Unlock()
	if b.state == statePrepared {
		th = b.th
	}
	if err := b.s.end(ctx, b.id, th, false); err != nil {
		if b.state == statePrepared {
			return err
		}
		// Open: AddOffsetsToTxn may have failed before the broker began a
		// transaction (then EndTxn answers INVALID_TXN_STATE). Whatever is
		// left is aborted by the InitProducerID of the slot's next client
		// (dropped above), a Fence, or the transaction timeout; never
		// committed, since nothing was journaled.
		b.s.log.Warn("abort of an open branch with offsets left to fence/timeout", "branch", b.id.String(), "err", err)
	}
	b.state = stateAborted
	return nil
}
