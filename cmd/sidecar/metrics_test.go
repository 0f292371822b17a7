package main

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// The per-call paths record through cached label children: no allocation
// once a label combination was seen.
func TestMetricsHotPathsDoNotAllocate(t *testing.T) {
	x := newMetrics(twopc.NewMachine(), nil)
	x.Records("job", "events", 10, 100)
	x.observeRequest("POST /v1/jobs/{job}/writers/{writer}/records", 200, time.Millisecond)
	if n := testing.AllocsPerRun(1000, func() { x.Records("job", "events", 10, 100) }); n != 0 {
		t.Errorf("Records: %v allocations per call, want 0", n)
	}
	if n := testing.AllocsPerRun(1000, func() {
		x.observeRequest("POST /v1/jobs/{job}/writers/{writer}/records", 200, time.Millisecond)
	}); n != 0 {
		t.Errorf("observeRequest: %v allocations per call, want 0", n)
	}
	if got := counterValue(t, x.records.WithLabelValues("job", "events")); got != 10*1002 {
		t.Errorf("txsink_records_total: got %v, want %v", got, 10*1002)
	}
	if got := counterValue(t, x.requests.WithLabelValues("POST /v1/jobs/{job}/writers/{writer}/records", "200")); got != 1002 {
		t.Errorf("txsink_http_requests_total: got %v, want 1002", got)
	}
}

// The wrapped sinks count each failing operation under its own op, and
// nothing for calls that succeed.
func TestMeteredSinkCountsErrorsByOp(t *testing.T) {
	x := newMetrics(twopc.NewMachine(), nil)
	fake := twopctest.NewSink("events", 2)
	s := x.wrapSinks(map[string]twopc.Sink{"events": fake})["events"]
	ctx := context.Background()
	id := twopc.BranchID{Job: "j", Writer: "w", Sink: "events", Epoch: 1, Seq: 1}
	b, err := s.Begin(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	rec := []*twopc.Record{{Sink: "events", Value: []byte(`"v"`)}}
	if err := b.Write(ctx, rec); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	fake.FailWrite = boom
	if err := b.Write(ctx, rec); !errors.Is(err, boom) {
		t.Fatalf("Write: got %v, want the sink's error unchanged", err)
	}
	fake.FailWrite = nil
	fake.FailPrepare = boom
	if _, err := b.Prepare(ctx); !errors.Is(err, boom) {
		t.Fatalf("Prepare: got %v, want boom", err)
	}
	fake.FailPrepare = nil
	h, err := b.Prepare(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fake.FailCommit = boom
	if err := b.Commit(ctx); !errors.Is(err, boom) {
		t.Fatalf("Commit: got %v, want boom", err)
	}
	fake.FailResolve = boom
	if err := s.Resolve(ctx, id, h, true); !errors.Is(err, boom) {
		t.Fatalf("Resolve: got %v, want boom", err)
	}
	fake.FailResolve = nil
	if err := s.Resolve(ctx, id, h, true); err != nil {
		t.Fatal(err)
	}
	if err := s.Fence(ctx, "j", "w", nil); err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"begin": 0, "write": 1, "prepare": 1, "commit": 1, "abort": 0, "resolve": 1, "fence": 0}
	for op, n := range want {
		if got := counterValue(t, x.sinkErrs.WithLabelValues("events", op)); got != n {
			t.Errorf("txsink_sink_errors_total{events,%s}: got %v, want %v", op, got, n)
		}
	}
	if got := fake.Committed(); len(got) != 1 {
		t.Errorf("fake sink: %d committed records after Resolve, want 1 (the wrapper must pass calls through)", len(got))
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
