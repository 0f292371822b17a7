package kafka_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/sinks/kafka"
	"github.com/txsink/txsink/twopc"
)

// TestDirectAtLeastOnce: two writers' direct branches share the sink's
// idempotent client; what a branch flushed is readable (read_committed
// sees non-transactional records), nothing else is, and no transaction
// is left in the broker.
func TestDirectAtLeastOnce(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(3, "events"))
	addr := kafkatest.Addr(c)
	s := newSink(t, addr)
	ctx := ctxT(t)
	opt := twopc.DirectOptions{Guarantee: twopc.GuaranteeAtLeastOnce}
	d0, err := s.BeginDirect(ctx, bid("w0", 1, 0), opt)
	if err != nil {
		t.Fatal(err)
	}
	d1, err := s.BeginDirect(ctx, bid("w1", 1, 0), opt)
	if err != nil {
		t.Fatal(err)
	}
	if err := d0.Write(ctx, records(t, s, "", "a", 20)); err != nil {
		t.Fatal(err)
	}
	if err := d1.Write(ctx, records(t, s, "", "b", 5)); err != nil {
		t.Fatal(err)
	}
	if err := d0.Write(ctx, records(t, s, "", "c", 10)); err != nil {
		t.Fatal(err)
	}
	for _, d := range []twopc.DirectBranch{d0, d1} {
		if err := d.Flush(ctx); err != nil {
			t.Fatalf("Flush: %v", err)
		}
	}
	// A flush with nothing new returns at once.
	fctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := d1.Flush(fctx); err != nil {
		t.Fatalf("empty Flush: %v", err)
	}
	expectExactly(t, values(t, addr, "events", 35), append(append(names("a", 20), names("b", 5)...), names("c", 10)...))
	for _, d := range []twopc.DirectBranch{d0, d1} {
		if err := d.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := d0.Write(ctx, records(t, s, "", "z", 1)); !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("Write after Close: got %v, want sink failure", err)
	}
}

// TestDirectFlushFailsWithoutBroker: records that the broker never acks
// fail the flush within its context, so the checkpoint is not journaled.
func TestDirectFlushFailsWithoutBroker(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	if err != nil {
		t.Fatal(err)
	}
	addr := c.ListenAddrs()[0]
	s := newSink(t, addr)
	ctx := ctxT(t)
	d, err := s.BeginDirect(ctx, bid("w0", 1, 0), twopc.DirectOptions{Guarantee: twopc.GuaranteeAtLeastOnce})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Write(ctx, records(t, s, "", "ok", 3)); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	lost := records(t, s, "", "lost", 3)
	c.Close()
	if err := d.Write(ctx, lost); err != nil {
		t.Fatal(err) // buffered: the failure shows at the flush
	}
	fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := d.Flush(fctx); !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("Flush without a broker: got %v, want sink failure", err)
	}
	_ = d.Close(ctx)
}

// TestDirectNone: records go without a flush; failures reach OnFailed.
func TestDirectNone(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(1, "events"))
	addr := kafkatest.Addr(c)
	s := newSink(t, addr)
	ctx := ctxT(t)
	var failed atomic.Int64
	opt := twopc.DirectOptions{Guarantee: twopc.GuaranteeNone, OnFailed: func(n int, err error) { failed.Add(int64(n)) }}
	d, err := s.BeginDirect(ctx, bid("w0", 1, 0), opt)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Write(ctx, records(t, s, "", "n", 12)); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(ctx); err != nil { // records in flight go on
		t.Fatal(err)
	}
	expectExactly(t, values(t, addr, "events", 12), names("n", 12))
	// Without a broker, records fail after the delivery timeout.
	c2, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	if err != nil {
		t.Fatal(err)
	}
	s2 := newSink(t, c2.ListenAddrs()[0], func(c *kafka.Config) { c.DirectDeliveryTimeout = time.Second })
	d2, err := s2.BeginDirect(ctx, bid("w0", 2, 0), opt)
	if err != nil {
		t.Fatal(err)
	}
	xs := records(t, s2, "", "x", 4) // Validate asks the broker for the topic's limits
	c2.Close()
	if err := d2.Write(ctx, xs); err != nil {
		t.Fatalf("none Write: got %v, want nil (failures are counted)", err)
	}
	if err := d2.Flush(ctx); err != nil {
		t.Fatalf("none Flush: %v", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for failed.Load() < 4 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := failed.Load(); got != 4 {
		t.Fatalf("records failed: %d, want 4", got)
	}
	if _, err := s.BeginDirect(ctx, bid("w0", 3, 0), twopc.DirectOptions{Guarantee: twopc.GuaranteeNone}); !errors.Is(err, twopc.ErrInvalid) {
		t.Fatalf("none without OnFailed: got %v, want invalid", err)
	}
	if _, err := s.BeginDirect(ctx, bid("w0", 3, 0), twopc.DirectOptions{Guarantee: twopc.GuaranteeExactlyOnce}); !errors.Is(err, twopc.ErrInvalid) {
		t.Fatalf("direct exactly_once: got %v, want invalid", err)
	}
}
