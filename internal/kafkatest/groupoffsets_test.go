package kafkatest

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestGroupOffsetsRequireStable pins what the readers of group offsets
// (GroupOffsets, examples/pageviews-go --offsets group) rely on in kfake:
// offsets in an open transaction are UNSTABLE_OFFSET_COMMIT under
// require_stable once the group exists, committed offsets appear with the
// commit and not with an abort, and a group whose first offsets are still
// pending is reported as not existing (GROUP_ID_NOT_FOUND).
func TestGroupOffsetsRequireStable(t *testing.T) {
	c := NewCluster(t, kfake.SeedTopics(2, "in"))
	addr := Addr(c)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	want := func(what string, exp map[string]map[int32]int64) {
		t.Helper()
		got, err := GroupOffsets(ctx, addr, "g", time.Second)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if len(got) != len(exp) || (len(exp) > 0 && !maps.Equal(got["in"], exp["in"])) {
			t.Fatalf("%s: got %v, want %v", what, got, exp)
		}
	}
	want("no group", map[string]map[int32]int64{})

	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.TransactionalID("t1"), kgo.DefaultProduceTopic("in"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	td, err := kadm.NewClient(cl).ListTopics(ctx, "in")
	if err != nil || td["in"].Err != nil {
		t.Fatalf("list topic in: %v %v", err, td["in"].Err)
	}
	topicID := td["in"].ID
	txn := func(offsets map[int32]int64) {
		t.Helper()
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
		add.TransactionalID, add.ProducerID, add.ProducerEpoch, add.Group = "t1", id, epoch, "g"
		if _, err := add.RequestWith(ctx, cl); err != nil {
			t.Fatal(err)
		}
		commit := kmsg.NewPtrTxnOffsetCommitRequest()
		commit.TransactionalID, commit.ProducerID, commit.ProducerEpoch, commit.Group = "t1", id, epoch, "g"
		rt := kmsg.NewTxnOffsetCommitRequestTopic()
		rt.Topic, rt.TopicID = "in", topicID // v6+ names the topic by its ID
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
					t.Fatalf("TxnOffsetCommit %s/%d: error code %d", rt.Topic, rp.Partition, rp.ErrorCode)
				}
			}
		}
	}
	end := func(commit kgo.TransactionEndTry) {
		t.Helper()
		if err := cl.EndTransaction(ctx, commit); err != nil {
			t.Fatal(err)
		}
	}

	txn(map[int32]int64{0: 5, 1: 7})
	want("first offsets pending (kfake: no group yet)", map[string]map[int32]int64{})
	end(kgo.TryCommit)
	want("first offsets committed", map[string]map[int32]int64{"in": {0: 5, 1: 7}})

	txn(map[int32]int64{0: 9})
	if got, err := GroupOffsets(ctx, addr, "g", 300*time.Millisecond); err == nil || !strings.Contains(err.Error(), "unstable") {
		t.Fatalf("offsets in an open transaction: got %v, %v; want an unstable error", got, err)
	}
	end(kgo.TryAbort)
	want("after the abort", map[string]map[int32]int64{"in": {0: 5, 1: 7}})

	txn(map[int32]int64{0: 9})
	end(kgo.TryCommit)
	want("after the second commit", map[string]map[int32]int64{"in": {0: 9, 1: 7}})
}
