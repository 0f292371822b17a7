package kafkatest_test

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/internal/kafkatest"
)

// produce writes values in one committed transaction.
func produce(t *testing.T, addr, topic string, values ...string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.TransactionalID("kafkatest"), kgo.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	for _, v := range values {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte(v)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
}

func TestInProcessCluster(t *testing.T) {
	c := kafkatest.NewCluster(t)
	addr := kafkatest.Addr(c)
	produce(t, addr, "t", "a", "b", "c")
	// Asking for fewer than there are still returns every record: extras
	// (duplicates) are caught.
	got := kafkatest.ReadCommitted(context.Background(), t, addr, "t", 2)
	if len(got) != 3 {
		t.Fatalf("got %d records, want 3", len(got))
	}
}

func TestBrokerProcessSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	addr, stop := kafkatest.StartBroker(t, dir)
	produce(t, addr, "t", "x", "y")
	stop()
	stop() // idempotent

	b := kafkatest.StartBrokerWith(t, dir, kafkatest.BrokerOptions{Addr: addr})
	got := kafkatest.ReadCommitted(context.Background(), t, b.Addr, "t", 2)
	if len(got) != 2 || string(got[0].Value) != "x" || string(got[1].Value) != "y" {
		t.Fatalf("after restart: got %d records, want x, y", len(got))
	}
	b.Kill()
	select {
	case <-b.Done():
	default:
		t.Fatal("Kill returned before the process exited")
	}
}
