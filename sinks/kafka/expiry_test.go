package kafka_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/sinks/kafka"
	"github.com/txsink/txsink/twopc"
)

type expirer interface{ Expired() error }

// waitExpired polls the branch until it reports itself expired.
func waitExpired(t *testing.T, b twopc.Branch, within time.Duration) error {
	t.Helper()
	e, ok := b.(expirer)
	if !ok {
		t.Fatalf("branch %T has no Expired method", b)
	}
	deadline := time.Now().Add(within)
	for {
		if err := e.Expired(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			t.Fatalf("branch not expired after %v", within)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}

// The report of issue 9: a branch older than the broker's transaction
// timeout must never be prepared (and hence never journaled); it is expired
// already at ExpireShare of the timeout, before the broker aborts it.
func TestExpiredBranchIsNotPrepared(t *testing.T) {
	for _, tc := range []struct {
		name string
		op   func(ctx context.Context, b twopc.Branch) error
	}{
		{"write", func(ctx context.Context, b twopc.Branch) error { return b.Write(ctx, nil) }},
		{"prepare", func(ctx context.Context, b twopc.Branch) error { _, err := b.Prepare(ctx); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := kafkatest.NewCluster(t, kfake.SeedTopics(1, "events"),
				kfake.BrokerConfigs(map[string]string{"transaction.max.timeout.ms": "10000"}))
			addr := kafkatest.Addr(c)
			ctx := ctxT(t)
			s := newSink(t, addr, func(c *kafka.Config) { c.TransactionTimeout = 4 * time.Second; c.ExpireShare = 0.125 })
			if got, want := s.MaxOpen(), 500*time.Millisecond; got != want {
				t.Fatalf("MaxOpen: got %v, want %v", got, want)
			}
			b, err := s.Begin(ctx, bid("w0", 1, 0))
			if err != nil {
				t.Fatal(err)
			}
			if err := b.(expirer).Expired(); err != nil {
				t.Fatalf("fresh branch: got %v, want not expired", err)
			}
			// A branch that never produced has no transaction in the
			// broker: it does not expire however old it is.
			idle, err := s.Begin(ctx, bid("w0", 2, 1))
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Write(ctx, records(t, s, "events", "old", 3)); err != nil {
				t.Fatalf("Write: %v", err)
			}
			start := time.Now()
			eerr := waitExpired(t, b, 5*time.Second)
			if !errors.Is(eerr, kafka.ErrExpired) || !errors.Is(eerr, twopc.ErrSinkFailure) {
				t.Fatalf("Expired: got %v, want ErrExpired wrapped in ErrSinkFailure", eerr)
			}
			// The broker (4s) has not aborted it yet: we expire first.
			if time.Since(start) < 2*time.Second {
				adm := kadm.NewClient(mustClient(t, addr))
				if st := txnState(t, adm, kafka.TransactionalID("txsink", "job", "w0", 0)); st != "Ongoing" {
					t.Fatalf("broker state at expiry: got %q, want Ongoing", st)
				}
			}
			err = tc.op(ctx, b)
			if !errors.Is(err, kafka.ErrExpired) || !errors.Is(err, twopc.ErrSinkFailure) {
				t.Fatalf("%s of an expired branch: got %v, want ErrExpired wrapped in ErrSinkFailure", tc.name, err)
			}
			if err := b.Abort(ctx); err != nil {
				t.Fatalf("Abort: %v", err)
			}
			if err := idle.(expirer).Expired(); err != nil {
				t.Fatalf("branch without records, older than MaxOpen: got %v, want not expired", err)
			}
			if err := idle.Abort(ctx); err != nil {
				t.Fatalf("Abort idle: %v", err)
			}
			// The slot is free again and a fresh branch commits.
			b2, _ := prepared(t, s, bid("w0", 3, 0), "events", "new", 2)
			if err := b2.Commit(ctx); err != nil {
				t.Fatalf("Commit: %v", err)
			}
			expectExactly(t, values(t, addr, "events", 2), names("new", 2))
		})
	}
}

// Prepare asks the broker too: a transaction it no longer has open (here
// fenced from outside, as a broker restart or timeout would) is expired even
// though its age is fine.
func TestPrepareAsksBrokerWhetherOpen(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(1, "events"))
	addr := kafkatest.Addr(c)
	ctx := ctxT(t)
	s := newSink(t, addr)
	b, err := s.Begin(ctx, bid("w0", 1, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Write(ctx, records(t, s, "events", "gone", 3)); err != nil {
		t.Fatal(err)
	}
	// Wait until the records are acknowledged (visible read_uncommitted),
	// so Prepare's flush has nothing left to fail on.
	adm := kadm.NewClient(mustClient(t, addr))
	deadline := time.Now().Add(10 * time.Second)
	for {
		ends, err := adm.ListEndOffsets(ctx, "events")
		if err != nil {
			t.Fatal(err)
		}
		if o, ok := ends.Lookup("events", 0); ok && o.Offset >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("records not acknowledged within 10s")
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
	other := newSink(t, addr)
	if err := other.Fence(ctx, "job", "w0", nil); err != nil {
		t.Fatalf("Fence: %v", err)
	}
	_, err = b.Prepare(ctx)
	if !errors.Is(err, kafka.ErrExpired) || !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("Prepare of a fenced transaction: got %v, want ErrExpired wrapped in ErrSinkFailure", err)
	}
	if err := b.Abort(ctx); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	if got := values(t, addr, "events", 0); len(got) != 0 {
		t.Fatalf("got %d records, want 0", len(got))
	}
}
