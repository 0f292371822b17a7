package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/txsink/txsink/twopc"
)

// Consumer-group offsets in a branch's transaction (twopc.Offsets): see
// DESIGN.md, "Offsets". AddOffsetsToTxn adds the group's __consumer_offsets
// partition to the transaction, TxnOffsetCommit stages the offsets, and the
// transaction's EndTxn commits or drops them with the records.

var (
	_ twopc.OffsetSink   = (*Sink)(nil)
	_ twopc.OffsetBranch = (*branch)(nil)
)

// txnOffsetCommitVersion caps TxnOffsetCommit: v6 (KIP-1319) names topics
// by id only, and this package sends names. v3+ carries KIP-447's
// generation and member id.
const txnOffsetCommitVersion = 5

// ValidateOffsets checks Kafka's rules on o (twopc.OffsetSink): legal topic
// names, and, when the broker answers within topicTimeout, that every topic
// exists and has the partitions named. A broker that cannot be asked lets
// them pass; TxnOffsetCommit then decides.
func (s *Sink) ValidateOffsets(o *twopc.Offsets) error {
	req := kmsg.NewPtrMetadataRequest()
	req.AllowAutoTopicCreation = false // never create an input topic by asking about it
	maxPart := make(map[string]int32, len(o.Topics))
	for t, ps := range o.Topics {
		if err := checkTopic(t); err != nil {
			return fmt.Errorf("%w: offsets: %w", twopc.ErrInvalid, err)
		}
		for p := range ps {
			maxPart[t] = max(maxPart[t], p)
		}
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = kmsg.StringPtr(t)
		req.Topics = append(req.Topics, rt)
	}
	ctx, cancel := context.WithTimeout(s.ctx, topicTimeout)
	defer cancel()
	resp, err := req.RequestWith(ctx, s.admin)
	if err != nil {
		s.log.Debug("cannot read the offsets' topics; TxnOffsetCommit will decide", "err", err)
		return nil
	}
	for _, rt := range resp.Topics {
		if rt.Topic == nil {
			continue
		}
		t := *rt.Topic
		want, ok := maxPart[t]
		if !ok {
			continue
		}
		switch err := kerr.ErrorForCode(rt.ErrorCode); {
		case errors.Is(err, kerr.UnknownTopicOrPartition):
			return fmt.Errorf("%w: offsets: kafka sink %q has no topic %q", twopc.ErrInvalid, s.cfg.Name, t)
		case err != nil:
			continue // e.g. not authorised to describe: let the broker decide
		}
		if n := int32(len(rt.Partitions)); want >= n {
			return fmt.Errorf("%w: offsets: topic %q of kafka sink %q has no partition %d (it has %d)", twopc.ErrInvalid, t, s.cfg.Name, want, n)
		}
	}
	return nil
}

// AddOffsets adds o to the branch's transaction (twopc.OffsetBranch), with
// the slot's producer id and epoch. It begins the transaction in the
// broker when the branch produced nothing yet; from then on the branch
// needs an EndTxn even without records (kgo's EndTransaction sends none
// when kgo itself added no partition), which Commit, Abort and the handle
// (TxnHandle.Group) take care of.
func (b *branch) AddOffsets(ctx context.Context, o *twopc.Offsets) error {
	cl, err := b.openClient("offsets")
	if err != nil {
		return err
	}
	if b.group != "" {
		return b.failf("offsets added twice")
	}
	pid, epoch, err := cl.ProducerID(ctx)
	if err != nil {
		return fmt.Errorf("%w: kafka sink %q: branch %v: producer id: %w", twopc.ErrSinkFailure, b.s.cfg.Name, b.id, err)
	}
	// From the first AddOffsetsToTxn attempt on, the broker may have a
	// transaction for the branch: Abort must end it.
	b.mu.Lock()
	b.group, b.offPID, b.offEpoch = o.Group, pid, epoch
	b.mu.Unlock()
	if b.produced == 0 {
		b.begun = time.Now()
	}
	err = retry(ctx, func() error {
		req := kmsg.NewPtrAddOffsetsToTxnRequest()
		req.TransactionalID = b.sl.txnID
		req.ProducerID = pid
		req.ProducerEpoch = epoch
		req.Group = o.Group
		resp, err := req.RequestWith(ctx, cl)
		if err != nil {
			return err
		}
		return kerr.ErrorForCode(resp.ErrorCode)
	})
	if err != nil {
		return fmt.Errorf("%w: kafka sink %q: branch %v: AddOffsetsToTxn for group %q: %w", twopc.ErrSinkFailure, b.s.cfg.Name, b.id, o.Group, err)
	}
	req := txnOffsetCommitRequest(b.sl.txnID, pid, epoch, o)
	err = retry(ctx, func() error {
		resp, err := req.RequestWith(ctx, cl)
		if err != nil {
			return err
		}
		return txnOffsetCommitErr(req, resp)
	})
	if err != nil {
		return fmt.Errorf("%w: kafka sink %q: branch %v: TxnOffsetCommit for group %q: %w", twopc.ErrSinkFailure, b.s.cfg.Name, b.id, o.Group, err)
	}
	return nil
}

// txnOffsetCommitRequest builds the TxnOffsetCommit of o, topics and
// partitions in order (so retries and logs are stable).
func txnOffsetCommitRequest(txnID string, pid int64, epoch int16, o *twopc.Offsets) *kmsg.TxnOffsetCommitRequest {
	req := kmsg.NewPtrTxnOffsetCommitRequest()
	req.TransactionalID = txnID
	req.Group = o.Group
	req.ProducerID = pid
	req.ProducerEpoch = epoch
	req.Generation = -1
	if o.Generation != nil {
		req.Generation = *o.Generation
	}
	req.MemberID = o.MemberID
	if o.GroupInstanceID != "" {
		req.InstanceID = kmsg.StringPtr(o.GroupInstanceID)
	}
	topics := make([]string, 0, len(o.Topics))
	for t := range o.Topics {
		topics = append(topics, t)
	}
	slices.Sort(topics)
	for _, t := range topics {
		rt := kmsg.NewTxnOffsetCommitRequestTopic()
		rt.Topic = t
		parts := make([]int32, 0, len(o.Topics[t]))
		for p := range o.Topics[t] {
			parts = append(parts, p)
		}
		slices.Sort(parts)
		for _, p := range parts {
			rp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
			rp.Partition = p
			rp.Offset = o.Topics[t][p]
			rp.LeaderEpoch = -1
			rt.Partitions = append(rt.Partitions, rp)
		}
		req.Topics = append(req.Topics, rt)
	}
	return req
}

// txnOffsetCommitErr returns the answer's errors: a retriable one alone
// (retry sends the request again; staging the same offsets twice is
// harmless), else every failed partition joined, else an answer that
// misses a partition of the request.
func txnOffsetCommitErr(req *kmsg.TxnOffsetCommitRequest, resp *kmsg.TxnOffsetCommitResponse) error {
	var errs []error
	got := 0
	for _, rt := range resp.Topics {
		for _, rp := range rt.Partitions {
			got++
			err := kerr.ErrorForCode(rp.ErrorCode)
			if err == nil {
				continue
			}
			if retriableTxn(err) {
				return err
			}
			errs = append(errs, fmt.Errorf("topic %q partition %d: %w", rt.Topic, rp.Partition, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	want := 0
	for _, rt := range req.Topics {
		want += len(rt.Partitions)
	}
	if got != want {
		return fmt.Errorf("the answer has %d partitions, the request %d", got, want)
	}
	return nil
}
