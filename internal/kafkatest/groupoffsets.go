package kafkatest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// GroupOffsets reads a consumer group's committed offsets (topic →
// partition → next offset) from the broker at addr, as an independent
// reader: require_stable (KIP-447), so offsets still in an open transaction
// are never reported as committed; while some are (UNSTABLE_OFFSET_COMMIT)
// it retries every 50 ms for up to wait, then fails. A group that does not
// exist has no offsets (an empty map; kfake answers GROUP_ID_NOT_FOUND
// where Kafka answers an empty list).
func GroupOffsets(ctx context.Context, addr, group string, wait time.Duration) (map[string]map[int32]int64, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	deadline := time.Now().Add(wait)
	for {
		got, unstable, err := fetchStable(ctx, adm, group)
		if err != nil {
			return nil, fmt.Errorf("offsets of group %q: %w", group, err)
		}
		if unstable == "" {
			return got, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("offsets of group %q: %s still unstable (open transaction) after %s", group, unstable, wait)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func fetchStable(ctx context.Context, adm *kadm.Client, group string) (map[string]map[int32]int64, string, error) {
	got := map[string]map[int32]int64{}
	resps, err := adm.FetchOffsets(kadm.RequireStable(ctx), group)
	if errors.Is(err, kerr.GroupIDNotFound) {
		return got, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	for _, r := range resps.Sorted() {
		switch {
		case errors.Is(r.Err, kerr.UnstableOffsetCommit):
			return nil, fmt.Sprintf("%s/%d", r.Topic, r.Partition), nil
		case r.Err != nil:
			return nil, "", fmt.Errorf("%s/%d: %w", r.Topic, r.Partition, r.Err)
		case r.At < 0:
			continue // no commit
		}
		if got[r.Topic] == nil {
			got[r.Topic] = map[int32]int64{}
		}
		got[r.Topic][r.Partition] = r.At
	}
	return got, "", nil
}

// BeginTxnOffsets begins a transaction on cl (a client with
// kgo.TransactionalID(txnID) and a default produce topic), produces one
// record to start it on the broker, and adds the group's offsets of topic
// to it (AddOffsetsToTxn + TxnOffsetCommit), as a Kafka sink does for a
// checkpoint's offsets. The transaction stays open: end it with
// cl.EndTransaction.
func BeginTxnOffsets(ctx context.Context, t testing.TB, cl *kgo.Client, txnID, group, topic string, offsets map[int32]int64) {
	t.Helper()
	td, err := kadm.NewClient(cl).ListTopics(ctx, topic)
	if err != nil || td[topic].Err != nil {
		t.Fatalf("list topic %s: %v %v", topic, err, td[topic].Err)
	}
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte("x")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	id, epoch, err := cl.ProducerID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	add := kmsg.NewPtrAddOffsetsToTxnRequest()
	add.TransactionalID, add.ProducerID, add.ProducerEpoch, add.Group = txnID, id, epoch, group
	if resp, err := add.RequestWith(ctx, cl); err != nil {
		t.Fatalf("AddOffsetsToTxn: %v", err)
	} else if err := kerr.ErrorForCode(resp.ErrorCode); err != nil {
		t.Fatalf("AddOffsetsToTxn: %v", err)
	}
	commit := kmsg.NewPtrTxnOffsetCommitRequest()
	commit.TransactionalID, commit.ProducerID, commit.ProducerEpoch, commit.Group = txnID, id, epoch, group
	rt := kmsg.NewTxnOffsetCommitRequestTopic()
	rt.Topic, rt.TopicID = topic, td[topic].ID // v6+ names the topic by its ID
	for p, o := range offsets {
		rp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
		rp.Partition, rp.Offset = p, o
		rt.Partitions = append(rt.Partitions, rp)
	}
	commit.Topics = append(commit.Topics, rt)
	resp, err := commit.RequestWith(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	for _, rt := range resp.Topics {
		for _, rp := range rt.Partitions {
			if rp.ErrorCode != 0 {
				t.Fatalf("TxnOffsetCommit %s/%d: %v", rt.Topic, rp.Partition, kerr.ErrorForCode(rp.ErrorCode))
			}
		}
	}
}
