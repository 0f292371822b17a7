package main

import (
	"bytes"
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/internal/kafkatest"
)

// TestGroupOffsets: a session of --offsets group resumes from the group's
// committed offsets, never from offsets still in an open transaction (it
// waits for the transaction to end), and not from nothing when the session
// restored a checkpoint whose offsets are not visible yet.
func TestGroupOffsets(t *testing.T) {
	old := stableWait
	stableWait = 500 * time.Millisecond
	t.Cleanup(func() { stableWait = old })

	c := kafkatest.NewCluster(t, kfake.SeedTopics(4, "clicks"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kc, err := kgo.NewClient(kgo.SeedBrokers(kafkatest.Addr(c)), kgo.TransactionalID("sink"), kgo.DefaultProduceTopic("out"),
		kgo.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	adm := kadm.NewClient(kc)
	var out bytes.Buffer
	a := &app{cfg: countConfig{input: "clicks", group: "g"}, out: &out, name: "1"}
	parts := []int32{1, 3} // writer 1 of 2

	got, err := a.groupOffsets(ctx, adm, 0, parts)
	if err != nil || !maps.Equal(got, map[string]int64{"1": 0, "3": 0}) {
		t.Fatalf("no group, nothing restored: got %v, %v; want zeros", got, err)
	}

	// Checkpoint 1's offsets are pending (decided, Kafka not finished):
	// kfake says the group does not exist; the restored checkpoint says it
	// must. The app waits, and gives up after stableWait.
	kafkatest.BeginTxnOffsets(ctx, t, kc, "sink", "g", "clicks", map[int32]int64{1: 5, 3: 6})
	if got, err := a.groupOffsets(ctx, adm, 1, parts); err == nil || !strings.Contains(err.Error(), "holds no offset") {
		t.Fatalf("first offsets pending: got %v, %v; want an error saying the group holds none yet", got, err)
	}
	end := func(commit kgo.TransactionEndTry) {
		t.Helper()
		if err := kc.EndTransaction(ctx, commit); err != nil {
			t.Fatal(err)
		}
	}
	end(kgo.TryCommit)
	got, err = a.groupOffsets(ctx, adm, 1, parts)
	if err != nil || !maps.Equal(got, map[string]int64{"1": 5, "3": 6}) {
		t.Fatalf("committed: got %v, %v; want map[1:5 3:6]", got, err)
	}

	// Checkpoint 2 pending: require_stable makes the app wait; it resumes
	// from checkpoint 2's offsets once the transaction commits, never
	// from checkpoint 1's.
	kafkatest.BeginTxnOffsets(ctx, t, kc, "sink", "g", "clicks", map[int32]int64{1: 9, 3: 6})
	go func() {
		time.Sleep(200 * time.Millisecond)
		_ = kc.EndTransaction(ctx, kgo.TryCommit)
	}()
	got, err = a.groupOffsets(ctx, adm, 2, parts)
	if err != nil || !maps.Equal(got, map[string]int64{"1": 9, "3": 6}) {
		t.Fatalf("pending, then committed: got %v, %v; want map[1:9 3:6]\n%s", got, err, out.String())
	}
	if !strings.Contains(out.String(), "open transaction") || !strings.Contains(out.String(), "offsets are stable") {
		t.Errorf("the wait is not reported:\n%s", out.String())
	}

	// A pending transaction that never ends: the session fails (and is
	// reopened by count's loop) rather than resume from stale offsets.
	kafkatest.BeginTxnOffsets(ctx, t, kc, "sink", "g", "clicks", map[int32]int64{1: 12})
	if got, err := a.groupOffsets(ctx, adm, 3, parts); err == nil || !strings.Contains(err.Error(), "open transaction") {
		t.Fatalf("never stable: got %v, %v; want an error", got, err)
	}
	end(kgo.TryAbort)
	got, err = a.groupOffsets(ctx, adm, 2, parts)
	if err != nil || !maps.Equal(got, map[string]int64{"1": 9, "3": 6}) {
		t.Fatalf("after the abort: got %v, %v; want checkpoint 2's map[1:9 3:6]", got, err)
	}
}

// TestOffsetsFlag: --offsets takes state or group; group defaults to the
// job name.
func TestOffsetsFlag(t *testing.T) {
	c := defaultCountConfig()
	c.offsets = "kafka"
	if err := count(context.Background(), c, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), `--offsets "kafka": want state or group`) {
		t.Fatalf("got %v, want a clear error", err)
	}
}
