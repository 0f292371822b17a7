package kafkatest

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
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
	txn := func(offsets map[int32]int64) {
		t.Helper()
		BeginTxnOffsets(ctx, t, cl, "t1", "g", "in", offsets)
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
