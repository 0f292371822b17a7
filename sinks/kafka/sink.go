// Package kafka is txsink's Kafka sink: every branch is one Kafka
// transaction on a transactional id from a fixed pool per writer, prepared by
// flushing and finished by EndTxn, from this process (Branch.Commit) or from
// any other one (Sink.Resolve with the journaled handle).
//
// See DESIGN.md in this folder for the slot pool, the handle, and why
// recovery never calls InitProducerID on a prepared slot.
package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"

	"github.com/txsink/txsink/twopc"
)

// Errors of the sink; both are returned wrapped in twopc.ErrSinkFailure.
var (
	// ErrClosed is returned by calls on a closed Sink.
	ErrClosed = errors.New("kafka: sink closed")
	// ErrExpired means a branch was open longer than Config.ExpireShare of
	// the transaction timeout (or the broker no longer has it open): it
	// must not be prepared, because the broker may abort it before the
	// journaled decision commits it. The session replays from its last
	// checkpoint.
	ErrExpired = errors.New("kafka: transaction expired")
)

// retryBudget bounds how long Resolve and Fence retry retriable coordinator
// errors (CONCURRENT_TRANSACTIONS, NOT_COORDINATOR, ...) when the caller's
// context has no earlier deadline.
const retryBudget = 30 * time.Second

var _ twopc.Sink = (*Sink)(nil)

// Sink is one Kafka cluster. It is safe for concurrent use; the calls on one
// Branch are serialised by the coordinator.
type Sink struct {
	cfg      Config
	log      *slog.Logger
	timeout  time.Duration
	maxOpen  time.Duration // ExpireShare of timeout: the age at which a branch expires
	allowAll bool
	allowed  map[string]struct{}
	versions *kversion.Versions // EndTxn capped at endTxnVersion
	slotOpts []kgo.Opt

	// admin has no transactional id: it sends the raw EndTxn of Resolve,
	// the InitProducerID of Fence, and metadata requests.
	admin *kgo.Client

	// ctx is the context of every produced record: it ends with the sink,
	// not with the HTTP request that wrote the record.
	ctx    context.Context
	cancel context.CancelFunc
	reaped chan struct{} // closed when the idle-client reaper has stopped

	created sync.Map // topics created or found by ensureTopics
	topics  topicCache

	// maxMessage is the broker's message.max.bytes, the limit of topics
	// that do not set their own.
	maxMessage int32

	mu     sync.Mutex
	slots  map[string]*slot // by transactional id
	admin5 *kgo.Client      // lazily, for handles with EndTxnVersion >= 5
	closed bool
}

// slot is the cached transactional client of one transactional id. The
// client is reused by the next branch on the slot, so the normal path runs
// InitProducerID once per slot and process, not per branch.
type slot struct {
	txnID string
	cl    *kgo.Client
	// owner is the branch holding the slot, nil when free; stale is set
	// once the slot was dropped from the cache and its client closed.
	// Both are guarded by Sink.mu.
	owner *branch
	stale bool
	// freeSince is when owner last became nil; the reaper closes the
	// client of a slot free for longer than Config.IdleClientTimeout.
	freeSince time.Time
}

// New checks cfg, connects to the cluster and, when cfg.TransactionTimeout
// is zero, asks a broker for transaction.max.timeout.ms.
func New(ctx context.Context, cfg Config) (*Sink, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Sink{
		cfg:     cfg,
		log:     cfg.Logger.With("sink", cfg.Name),
		allowed: make(map[string]struct{}, len(cfg.Topics)),
		slots:   make(map[string]*slot),
	}
	for _, t := range cfg.Topics {
		if t == "*" {
			s.allowAll = true
		}
		s.allowed[t] = struct{}{}
	}
	s.versions = kversion.Stable()
	s.versions.SetMaxKeyVersion(int16(kmsg.EndTxn), endTxnVersion)
	s.versions.SetMaxKeyVersion(int16(kmsg.TxnOffsetCommit), txnOffsetCommitVersion)

	base := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.WithLogger(kgoLogger{s.log.With("component", "kgo")}),
		// KIP-714 telemetry would run a metrics push per client; with a
		// client per slot that is memory and traffic per idle writer.
		kgo.DisableClientMetrics(),
	}
	var err error
	s.admin, err = kgo.NewClient(append(base, kgo.MaxVersions(s.versions))...)
	if err != nil {
		return nil, fmt.Errorf("%w: kafka sink %q: %w", twopc.ErrSinkFailure, cfg.Name, err)
	}
	if err := s.admin.Ping(ctx); err != nil {
		s.admin.Close()
		return nil, fmt.Errorf("%w: kafka sink %q: brokers %v do not answer: %w", twopc.ErrSinkFailure, cfg.Name, cfg.Brokers, err)
	}
	brokerTimeout, maxMessage := s.brokerConfigs(ctx)
	s.maxMessage = maxMessage
	s.timeout = cfg.TransactionTimeout
	if s.timeout == 0 {
		s.timeout = brokerTimeout
	}
	s.slotOpts = append(base,
		kgo.MaxVersions(s.versions),
		kgo.TransactionTimeout(s.timeout),
		kgo.RecordPartitioner(newPartitioner()),
		kgo.ProducerBatchMaxBytesFn(s.batchMaxBytes),
		// Like the Java producer: ask for auto-creation; a broker with
		// auto.create.topics.enable=false ignores it.
		kgo.AllowAutoTopicCreation(),
	)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.maxOpen = time.Duration(float64(s.timeout) * cfg.ExpireShare)
	s.reaped = make(chan struct{})
	go s.reapIdle(s.ctx, s.cfg.IdleClientTimeout)
	s.log.Info("kafka sink ready", "brokers", cfg.Brokers, "transaction_timeout", s.timeout, "max_open", s.maxOpen,
		"message_max_bytes", s.maxMessage, "max_inflight", cfg.MaxInflight)
	return s, nil
}

// brokerConfigs reads transaction.max.timeout.ms and message.max.bytes
// from one broker, each with Kafka's default when it cannot be read.
func (s *Sink) brokerConfigs(ctx context.Context) (txnTimeout time.Duration, maxMessage int32) {
	txnTimeout, maxMessage = FallbackTransactionTimeout, defaultMaxMessageBytes
	adm := kadm.NewClient(s.admin)
	fallback := func(err error) (time.Duration, int32) {
		s.log.Warn("cannot read the broker's config; assuming Kafka's defaults", "err", err,
			"transaction.max.timeout.ms", FallbackTransactionTimeout, "message.max.bytes", defaultMaxMessageBytes)
		return FallbackTransactionTimeout, defaultMaxMessageBytes
	}
	brokers, err := adm.ListBrokers(ctx)
	if err != nil {
		return fallback(err)
	}
	if len(brokers) == 0 {
		return fallback(errors.New("no brokers in metadata"))
	}
	rcs, err := adm.DescribeBrokerConfigs(ctx, brokers[0].NodeID)
	if err != nil {
		return fallback(err)
	}
	var seenTimeout, seenMax bool
	for _, rc := range rcs {
		if rc.Err != nil {
			return fallback(rc.Err)
		}
		for _, c := range rc.Configs {
			if c.Value == nil {
				continue
			}
			switch c.Key {
			case "transaction.max.timeout.ms":
				ms, err := strconv.ParseInt(*c.Value, 10, 64)
				if err != nil || ms <= 0 {
					s.log.Warn("bad transaction.max.timeout.ms; assuming Kafka's default", "value", *c.Value, "timeout", FallbackTransactionTimeout)
					continue
				}
				txnTimeout, seenTimeout = time.Duration(ms)*time.Millisecond, true
			case "message.max.bytes":
				n, err := strconv.ParseInt(*c.Value, 10, 32)
				if err != nil || n < 512 {
					s.log.Warn("bad message.max.bytes; assuming Kafka's default", "value", *c.Value, "bytes", defaultMaxMessageBytes)
					continue
				}
				maxMessage, seenMax = int32(n), true
			}
		}
	}
	if !seenTimeout {
		s.log.Warn("transaction.max.timeout.ms not in broker config; assuming Kafka's default", "timeout", FallbackTransactionTimeout)
	}
	if !seenMax {
		s.log.Warn("message.max.bytes not in broker config; assuming Kafka's default", "bytes", defaultMaxMessageBytes)
	}
	return txnTimeout, maxMessage
}

// Name is the sink's configured name.
func (s *Sink) Name() string { return s.cfg.Name }

// MaxInflight is the number of slots (transactional ids) per writer.
func (s *Sink) MaxInflight() int { return s.cfg.MaxInflight }

// CommitWindow is the least time a journaled branch has left to be
// committed before the broker may abort it: the transaction timeout minus
// the age at which a branch is refused as expired (ExpireShare). A commit
// that cannot reach the broker for longer is data loss.
func (s *Sink) CommitWindow() time.Duration { return s.timeout - s.maxOpen }

// TransactionTimeout is the timeout every transaction runs with; the broker
// aborts a transaction (prepared or not) that is older. The coordinator
// warns when a prepared branch reaches half of it.
func (s *Sink) TransactionTimeout() time.Duration { return s.timeout }

// MaxOpen is how long a branch may stay open before it expires
// (Config.ExpireShare of TransactionTimeout).
func (s *Sink) MaxOpen() time.Duration { return s.maxOpen }

// Close closes every client. Open and prepared transactions stay open in
// Kafka (franz-go's Close does not abort): prepared ones are finished by
// Resolve, open ones by the next Fence or the transaction timeout.
func (s *Sink) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	var cls []*kgo.Client
	for id, sl := range s.slots {
		sl.stale = true
		cls = append(cls, sl.cl)
		delete(s.slots, id)
	}
	if s.admin5 != nil {
		cls = append(cls, s.admin5)
	}
	s.mu.Unlock()
	s.cancel()
	<-s.reaped
	for _, cl := range cls {
		cl.Close()
	}
	s.admin.Close()
}

func (s *Sink) txnID(job, writer string, slot int) string {
	return TransactionalID(s.cfg.TransactionalIDPrefix, job, writer, slot)
}

// Begin takes the branch's slot and begins a transaction on the slot's
// client. It does no I/O unless the slot's client is new (franz-go then
// runs InitProducerID at the first produce, which aborts whatever a dead
// session left open on that transactional id: the coordinator never
// begins on a slot held by an unresolved branch).
func (s *Sink) Begin(ctx context.Context, id twopc.BranchID) (twopc.Branch, error) {
	if id.Slot < 0 || id.Slot >= s.cfg.MaxInflight {
		return nil, fmt.Errorf("%w: kafka sink %q: branch %v: slot not in 0..%d", twopc.ErrInvalid, s.cfg.Name, id, s.cfg.MaxInflight-1)
	}
	b := &branch{s: s, id: id, pid: -1, epoch: -1, begun: time.Now()}
	b.promise = b.onProduced
	txnID := s.txnID(id.Job, id.Writer, id.Slot)

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: branch %v: %w", twopc.ErrSinkFailure, id, ErrClosed)
	}
	sl := s.slots[txnID]
	if sl != nil && sl.owner != nil {
		owner := sl.owner.id
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: kafka sink %q: branch %v: slot %s still held by branch %v", twopc.ErrSinkFailure, s.cfg.Name, id, txnID, owner)
	}
	if sl == nil {
		cl, err := kgo.NewClient(append(s.slotOpts[:len(s.slotOpts):len(s.slotOpts)], kgo.TransactionalID(txnID))...)
		if err != nil {
			s.mu.Unlock()
			return nil, fmt.Errorf("%w: kafka sink %q: branch %v: %w", twopc.ErrSinkFailure, s.cfg.Name, id, err)
		}
		sl = &slot{txnID: txnID, cl: cl}
		s.slots[txnID] = sl
	}
	sl.owner = b
	b.sl = sl
	s.mu.Unlock()

	// BeginTransaction takes no context, and on a new client (or one
	// whose producer id failed) it runs InitProducerID first, which waits
	// out kgo's retries (about 40s) when the broker does not answer. Wait
	// for it only as long as ctx allows; dropping the slot closes the
	// client, which ends the pending request and so the goroutine.
	begun := make(chan error, 1)
	go func() { begun <- sl.cl.BeginTransaction() }()
	var err error
	select {
	case err = <-begun:
	case <-ctx.Done():
		err = context.Cause(ctx)
	}
	if err != nil {
		s.drop(sl)
		return nil, fmt.Errorf("%w: kafka sink %q: branch %v: begin: %w", twopc.ErrSinkFailure, s.cfg.Name, id, err)
	}
	b.ctx, b.cancel = context.WithCancel(s.ctx)
	return b, nil
}

// client returns the slot client of b, or nil when the slot was dropped.
func (s *Sink) client(b *branch) *kgo.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.sl.stale || b.sl.owner != b {
		return nil
	}
	return b.sl.cl
}

// release frees b's slot for the next branch, keeping its client.
func (s *Sink) release(b *branch) {
	s.mu.Lock()
	if b.sl.owner == b {
		b.sl.owner = nil
		b.sl.freeSince = time.Now()
	}
	s.mu.Unlock()
}

// drop removes sl from the cache and closes its client: its producer
// state can no longer be trusted (ended elsewhere, fenced, or failed). The
// next branch on the slot gets a new client.
func (s *Sink) drop(sl *slot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropLocked(sl)
}

// dropLocked is drop with s.mu held; the client closes in the background.
func (s *Sink) dropLocked(sl *slot) {
	if sl.stale {
		return
	}
	sl.stale = true
	if s.slots[sl.txnID] == sl {
		delete(s.slots, sl.txnID)
	}
	// Close waits for the client's in-flight requests, which with a broker
	// that stopped answering takes as long as kgo's request timeouts (tens
	// of seconds): far beyond the deadline of the write, checkpoint or
	// session open that dropped the slot. Nothing needs the stale client
	// any more, so it closes in the background (and ends by itself).
	go sl.cl.Close()
}

// dropID drops the cached slot of txnID, if any. When only is non-nil the
// slot is dropped only if it is free or held by that branch; otherwise an
// error says who holds it.
func (s *Sink) dropID(txnID string, only *twopc.BranchID) error {
	s.mu.Lock()
	sl := s.slots[txnID]
	if sl == nil {
		s.mu.Unlock()
		return nil
	}
	if only != nil && sl.owner != nil && sl.owner.id != *only {
		owner := sl.owner.id
		s.mu.Unlock()
		return fmt.Errorf("slot %s is held by a newer branch %v", txnID, owner)
	}
	// Dropped under the same lock as the check: a Begin in between would
	// take the cached client, whose producer id and epoch are the handle's,
	// and the EndTxn that follows could end the newer transaction.
	s.dropLocked(sl)
	s.mu.Unlock()
	return nil
}

// Resolve ends a prepared branch from its handle with a raw EndTxn sent by
// a client without transactional id. It never runs InitProducerID on the
// branch's transactional id: that would abort the prepared transaction.
//
// Idempotent: repeating the same decision is success. A commit that finds
// the transaction aborted by the broker (timeout) or fenced returns an
// error wrapping twopc.ErrDataLoss.
func (s *Sink) Resolve(ctx context.Context, id twopc.BranchID, h twopc.Handle, commit bool) error {
	th, err := ParseHandle(h)
	if err != nil {
		return fmt.Errorf("branch %v: %w", id, err)
	}
	if want := s.txnID(id.Job, id.Writer, id.Slot); th.TransactionalID != want {
		s.log.Warn("handle names another transactional id than the branch's slot (prefix changed?)", "branch", id.String(), "handle_txn_id", th.TransactionalID, "slot_txn_id", want)
	}
	// The slot's cached client (if this process prepared the branch) still
	// believes the transaction is open; once it is ended here the client
	// is stale. A slot already reused by another branch means this branch
	// was resolved before: ending it again with the same producer
	// id/epoch could end the newer transaction, so refuse.
	if err := s.dropID(th.TransactionalID, &id); err != nil {
		return fmt.Errorf("%w: kafka sink %q: resolve %v: %w", twopc.ErrSinkFailure, s.cfg.Name, id, err)
	}
	return s.end(ctx, id, th, commit)
}

// end sends EndTxn for th until it has a definite answer.
func (s *Sink) end(ctx context.Context, id twopc.BranchID, th TxnHandle, commit bool) error {
	if !th.open() {
		return nil // the branch produced nothing and added no offsets: no transaction in Kafka
	}
	cl, err := s.endClient(th.EndTxnVersion)
	if err != nil {
		return fmt.Errorf("%w: branch %v: %w", twopc.ErrSinkFailure, id, err)
	}
	err = retry(ctx, func() error {
		req := kmsg.NewPtrEndTxnRequest()
		req.TransactionalID = th.TransactionalID
		req.ProducerID = th.ProducerID
		req.ProducerEpoch = th.Epoch
		req.Commit = commit
		resp, err := req.RequestWith(ctx, cl)
		if err != nil {
			return err
		}
		return kerr.ErrorForCode(resp.ErrorCode)
	})
	attrs := []any{"branch", id.String(), "transactional_id", th.TransactionalID, "producer_id", th.ProducerID, "epoch", th.Epoch, "commit", commit}
	switch {
	case err == nil:
		s.log.Debug("transaction ended by handle", attrs...)
		return nil
	case commit && txnAborted(err):
		s.log.Error("DATA LOSS: Kafka aborted a transaction the journal decided to commit (transaction timeout or fenced)", append(attrs, "err", err, "transaction_timeout", s.timeout)...)
		return fmt.Errorf("%w: kafka sink %q: branch %v (%s pid %d epoch %d): %w", twopc.ErrDataLoss, s.cfg.Name, id, th.TransactionalID, th.ProducerID, th.Epoch, err)
	case !commit && (errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) ||
		errors.Is(err, kerr.InvalidProducerIDMapping) || errors.Is(err, kerr.TransactionalIDNotFound)):
		// The epoch moved on (timeout or InitProducerID), which aborted
		// the transaction, or its state expired: nothing left to abort.
		s.log.Debug("abort found the transaction already ended", append(attrs, "err", err)...)
		return nil
	case !commit && errors.Is(err, kerr.InvalidTxnState):
		s.log.Error("abort found the transaction committed", append(attrs, "err", err)...)
		return fmt.Errorf("%w: kafka sink %q: abort of branch %v found it committed: %w", twopc.ErrSinkFailure, s.cfg.Name, id, err)
	default:
		return fmt.Errorf("%w: kafka sink %q: end branch %v (commit=%v): %w", twopc.ErrSinkFailure, s.cfg.Name, id, commit, err)
	}
}

// endClient returns the client whose EndTxn version matches the handle's.
func (s *Sink) endClient(v int16) (*kgo.Client, error) {
	if v <= endTxnVersion {
		return s.admin, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if s.admin5 == nil {
		vs := kversion.Stable()
		vs.SetMaxKeyVersion(int16(kmsg.EndTxn), v)
		cl, err := kgo.NewClient(kgo.SeedBrokers(s.cfg.Brokers...), kgo.MaxVersions(vs),
			kgo.WithLogger(kgoLogger{s.log.With("component", "kgo")}), kgo.DisableClientMetrics())
		if err != nil {
			return nil, err
		}
		s.admin5 = cl
	}
	return s.admin5, nil
}

// Fence aborts whatever is open on every slot of the writer that no kept
// branch holds, by running InitProducerID on its transactional id (which
// bumps the epoch and aborts an ongoing transaction). Kept slots are never
// touched. Slot clients of fenced slots are dropped: their epoch is stale.
func (s *Sink) Fence(ctx context.Context, job, writer string, keep []twopc.BranchID) error {
	kept := make(map[int]bool, len(keep))
	for _, b := range keep {
		if b.Job == job && b.Writer == writer && (b.Sink == "" || b.Sink == s.cfg.Name) {
			kept[b.Slot] = true
		}
	}
	var errs []error
	for slot := 0; slot < s.cfg.MaxInflight; slot++ {
		if kept[slot] {
			continue
		}
		txnID := s.txnID(job, writer, slot)
		_ = s.dropID(txnID, nil)
		if err := s.initProducerID(ctx, txnID); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", txnID, err))
		} else {
			s.log.Debug("slot fenced", "transactional_id", txnID)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: kafka sink %q: fence %s/%s: %w", twopc.ErrSinkFailure, s.cfg.Name, job, writer, errors.Join(errs...))
	}
	return nil
}

func (s *Sink) initProducerID(ctx context.Context, txnID string) error {
	return retry(ctx, func() error {
		req := kmsg.NewPtrInitProducerIDRequest()
		req.TransactionalID = &txnID
		req.TransactionTimeoutMillis = int32(s.timeout.Milliseconds())
		req.ProducerID = -1
		req.ProducerEpoch = -1
		resp, err := req.RequestWith(ctx, s.admin)
		if err != nil {
			return err
		}
		return kerr.ErrorForCode(resp.ErrorCode)
	})
}

// ensureTopics creates the topics of recs that this sink has not created
// yet (Config.CreateTopics). A topic that exists already counts as created.
func (s *Sink) ensureTopics(ctx context.Context, recs []*twopc.Record) error {
	last := ""
	for _, r := range recs {
		if r.Topic == last {
			continue
		}
		last = r.Topic
		if _, ok := s.created.Load(r.Topic); ok {
			continue
		}
		_, err := kadm.NewClient(s.admin).CreateTopic(ctx, -1, -1, nil, r.Topic)
		if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("%w: kafka sink %q: create topic %q: %w", twopc.ErrSinkFailure, s.cfg.Name, r.Topic, err)
		}
		s.created.Store(r.Topic, struct{}{})
	}
	return nil
}

// retry runs fn until it returns nil or an error that retriableTxn does not
// accept, backing off from 10ms to 500ms, for at most retryBudget or until
// ctx ends.
func retry(ctx context.Context, fn func() error) error {
	deadline := time.Now().Add(retryBudget)
	backoff := 10 * time.Millisecond
	for {
		err := fn()
		if err == nil || !retriableTxn(err) || time.Now().After(deadline) {
			return err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		case <-t.C:
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}
