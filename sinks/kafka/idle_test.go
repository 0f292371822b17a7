package kafka_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/internal/restest"
	"github.com/txsink/txsink/sinks/kafka"
)

// TestIdleClientsAreClosed runs one committed branch for each of 200
// writers, then shows goroutines and fds back near the baseline once the
// slots' clients were idle for IdleClientTimeout, and a reaped slot working
// again (a new client, InitProducerID on a free slot).
func TestIdleClientsAreClosed(t *testing.T) {
	const writers = 200
	c := kafkatest.NewCluster(t, kfake.SeedTopics(1, "events"))
	addr := kafkatest.Addr(c)
	s := newSink(t, addr, func(c *kafka.Config) { c.IdleClientTimeout = 300 * time.Millisecond })
	base := restest.Measure()
	ctx := ctxT(t)

	var wg sync.WaitGroup
	errs := make(chan error, writers)
	sem := make(chan struct{}, 20)
	for i := range writers {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			id := bid(fmt.Sprintf("w%d", i), 1, 0)
			b, err := s.Begin(ctx, id)
			if err == nil {
				err = b.Write(ctx, records(t, s, "events", id.Writer, 1))
			}
			if err == nil {
				_, err = b.Prepare(ctx)
			}
			if err == nil {
				err = b.Commit(ctx)
			}
			if err != nil {
				errs <- fmt.Errorf("%v: %w", id, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	peak := restest.Measure()
	cached := s.CachedClients()
	after := restest.WaitBelow(t, base, 30, 10*time.Second)
	t.Logf("%d writers: baseline %v; after commits %v (%d slot clients); after idle timeout %v",
		writers, base, peak, cached, after)
	if n := s.CachedClients(); n != 0 {
		t.Fatalf("slot clients after the idle timeout: got %d, want 0", n)
	}
	if after.HeapBytes > base.HeapBytes+4<<20 {
		t.Fatalf("live heap after the idle timeout: got %v, want at most 4 MiB over the baseline %v", after, base)
	}

	// A reaped slot gets a new client; the branch commits.
	b, _ := prepared(t, s, bid("w0", 2, 0), "events", "again", 3)
	if err := b.Commit(ctx); err != nil {
		t.Fatalf("commit on a reopened slot: %v", err)
	}
	want := names("again", 3)
	for i := range writers {
		want = append(want, fmt.Sprintf("w%d-0", i))
	}
	expectExactly(t, values(t, addr, "events", len(want)), want)
}

// TestIdleReaperKeepsHeldSlots: a slot holding an open or a prepared branch
// keeps its client however long it waits; both branches then finish on
// their own clients.
func TestIdleReaperKeepsHeldSlots(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(1, "events"))
	addr := kafkatest.Addr(c)
	s := newSink(t, addr, func(c *kafka.Config) { c.IdleClientTimeout = 20 * time.Millisecond })
	ctx := ctxT(t)
	pb, _ := prepared(t, s, bid("w", 1, 0), "events", "prepared", 2)
	ob, err := s.Begin(ctx, bid("w", 2, 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.Write(ctx, records(t, s, "events", "open", 2)); err != nil {
		t.Fatal(err)
	}
	// Many reaper rounds (every 10ms); a reaped client would fail the
	// commit below ("slot was fenced or closed" / handle path) or the
	// prepare of the open branch.
	deadline := time.Now().Add(200 * time.Millisecond)
	for time.Now().Before(deadline) {
		if n := s.CachedClients(); n != 2 {
			t.Fatalf("slot clients while both slots are held: got %d, want 2", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := ob.Prepare(ctx); err != nil {
		t.Fatalf("prepare of the open branch after idle rounds: %v", err)
	}
	if err := pb.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ob.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	expectExactly(t, values(t, addr, "events", 4), append(names("prepared", 2), names("open", 2)...))
	deadline = time.Now().Add(5 * time.Second)
	for s.CachedClients() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("slot clients after both branches finished: got %d, want 0", s.CachedClients())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCloseStopsReaper: Close returns only after the reaper has stopped.
func TestCloseStopsReaper(t *testing.T) {
	c := kafkatest.NewCluster(t)
	base := restest.Measure()
	cfg := kafka.DefaultConfig()
	cfg.Name, cfg.Brokers, cfg.DefaultTopic, cfg.TransactionTimeout = "events", []string{kafkatest.Addr(c)}, "events", time.Minute
	s, err := kafka.New(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	restest.WaitBelow(t, base, 0, 5*time.Second)
}
