package raftlog_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/txsink/txsink/raftlog"
)

// Each Propose waits for its entry, so sequential proposals write one
// batch each, and the entries counter counts exactly the commands.
func TestLogWritesCountsAppends(t *testing.T) {
	n := openLeader(t, testConfig(t, t.TempDir()), &raftlog.Counters{})
	b0, e0 := n.LogWrites()
	if b0 == 0 || e0 == 0 {
		t.Fatalf("LogWrites after election = %d batches, %d entries; want the leader's first entry counted", b0, e0)
	}
	const k = 5
	for i := range k {
		propose(t, n, fmt.Sprint("c", i))
	}
	b1, e1 := n.LogWrites()
	if e1-e0 != k || b1-b0 != k {
		t.Fatalf("after %d sequential proposals: +%d batches, +%d entries; want +%d each", k, b1-b0, e1-e0, k)
	}
}

// BenchmarkPropose measures one proposer: each append waits for its own
// bolt commit, the journal's share of a single writer's checkpoint.
func BenchmarkPropose(b *testing.B) {
	n := benchLeader(b)
	b0, _ := n.LogWrites()
	for i := 0; b.Loop(); i++ {
		if _, err := n.Propose(b.Context(), fmt.Appendf(nil, "k%d", i)); err != nil {
			b.Fatal(err)
		}
	}
	b1, _ := n.LogWrites()
	b.ReportMetric(float64(b1-b0)/float64(b.N), "fsyncs/op")
}

func benchLeader(b *testing.B) *raftlog.Node {
	n, err := raftlog.Open(raftlog.Config{Dir: b.TempDir(), BindAddr: "127.0.0.1:0", Bootstrap: true,
		Logger: slog.New(slog.DiscardHandler)}, &raftlog.Counters{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { n.Close() })
	ctx, cancel := context.WithTimeout(b.Context(), waitFor)
	defer cancel()
	if err := n.WaitLeader(ctx); err != nil {
		b.Fatal(err)
	}
	return n
}

// BenchmarkProposeParallel measures journal appends from concurrent
// proposers (like concurrent checkpoints) and reports how many share one
// bolt commit: fsyncs/op is batches ÷ proposals. Run with -cpu or
// -benchtime; parallelism is 8 goroutines per GOMAXPROCS.
func BenchmarkProposeParallel(b *testing.B) {
	n := benchLeader(b)
	var seq atomic.Int64
	var mu sync.Mutex
	var failed error
	b0, e0 := n.LogWrites()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := n.Propose(b.Context(), fmt.Appendf(nil, "k%d", seq.Add(1))); err != nil {
				mu.Lock()
				failed = err
				mu.Unlock()
			}
		}
	})
	b.StopTimer()
	if failed != nil {
		b.Fatal(failed)
	}
	b1, e1 := n.LogWrites()
	b.ReportMetric(float64(b1-b0)/float64(b.N), "fsyncs/op")
	b.ReportMetric(float64(e1-e0)/float64(b1-b0), "entries/fsync")
}
