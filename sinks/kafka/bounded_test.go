package kafka_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/twopc"
)

// TestDeadBrokerCallsEndByContext: with the broker gone, a write of more
// records than franz-go buffers, a prepare and a ping all end when their
// context does, and the branch still aborts. Before, Produce waited for
// buffer space under the sink's lifetime context, so a write hung until the
// broker came back.
func TestDeadBrokerCallsEndByContext(t *testing.T) {
	c := kafkatest.NewCluster(t)
	s := newSink(t, kafkatest.Addr(c))
	if err := s.Ping(ctxT(t)); err != nil {
		t.Fatalf("Ping with the broker up: %v", err)
	}
	b, err := s.Begin(ctxT(t), bid("w", 1, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Write(ctxT(t), records(t, s, "events", "before", 10)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	recs := records(t, s, "events", "stuck", 60_000) // > kgo's default MaxBufferedRecords (50,000)

	bounded := func(what string, limit time.Duration, f func(ctx context.Context) error) error {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), limit)
		defer cancel()
		t0 := time.Now()
		err := f(ctx)
		if d := time.Since(t0); d > limit+2*time.Second {
			t.Fatalf("%s took %s with a %s deadline", what, d, limit)
		}
		return err
	}
	err = bounded("write", 300*time.Millisecond, func(ctx context.Context) error { return b.Write(ctx, recs) })
	if !errors.Is(err, twopc.ErrSinkFailure) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("write to a dead broker: got %v, want ErrSinkFailure wrapping DeadlineExceeded", err)
	}
	err = bounded("prepare", 300*time.Millisecond, func(ctx context.Context) error { _, err := b.Prepare(ctx); return err })
	if !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("prepare on a dead broker: got %v, want ErrSinkFailure", err)
	}
	_ = bounded("abort", 300*time.Millisecond, func(ctx context.Context) error { return b.Abort(ctx) })
	err = bounded("ping", 300*time.Millisecond, func(ctx context.Context) error { return s.Ping(ctx) })
	if !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("ping of a dead broker: got %v, want ErrSinkFailure", err)
	}
}
