package main

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/internal/kafkatest"
)

// TestOpenTransactionsSeesOpenTxn checks that the in-doubt check on Kafka
// can fail: an open transaction keeps the last stable offset below the high
// watermark until it ends.
func TestOpenTransactionsSeesOpenTxn(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(2, "out"))
	addr := kafkatest.Addr(c)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.TransactionalID("chaos-test"), kgo.DefaultProduceTopic("out"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte("x")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if n, err := openTransactions(ctx, addr, "out"); err != nil || n != 1 {
		t.Fatalf("open transaction: got %d partitions in doubt (err %v), want 1", n, err)
	}
	if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
	if n, err := openTransactions(ctx, addr, "out"); err != nil || n != 0 {
		t.Fatalf("after commit: got %d partitions in doubt (err %v), want 0", n, err)
	}
}
