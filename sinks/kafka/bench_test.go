package kafka_test

import (
	"context"
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// benchBatch is the sidecar's typical write call: 1,000 records with a
// short string key and a 100-byte string value, as the api decodes them
// (JSON strings, not yet normalised).
const benchBatch = 1000

func benchRecords() []twopc.Record {
	recs := make([]twopc.Record, benchBatch)
	for i := range recs {
		recs[i] = twopc.Record{
			Sink:  "events",
			Topic: "events",
			Key:   []byte(fmt.Sprintf(`"0:%d"`, i)),
			Value: []byte(fmt.Sprintf(`"%0100d"`, i)),
		}
	}
	return recs
}

// BenchmarkValidateAndWrite measures what one write call costs the Kafka
// sink: Validate of every record (as the coordinator calls it) and the
// branch's Write into franz-go, against kfake in process. A transaction is
// committed every 100 calls (outside the timer) so the buffer stays
// bounded; franz-go's background produce goroutines run meanwhile, so
// their allocations are part of what this measures. allocs/record is
// allocs/op over the batch. cpu-ns/record is the process's CPU time per
// record, which includes franz-go's background produce and kfake itself
// (the broker runs in this process): compare it between versions, not with
// the sidecar's.
func BenchmarkValidateAndWrite(b *testing.B) {
	c := kafkatest.NewCluster(b, kfake.SeedTopics(1, "events"))
	s := newSink(b, kafkatest.Addr(c))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	tmpl := benchRecords()
	work := make([]twopc.Record, len(tmpl))
	ptrs := make([]*twopc.Record, len(tmpl))
	for i := range work {
		ptrs[i] = &work[i]
	}
	var seq uint64
	begin := func() twopc.Branch {
		seq++
		br, err := s.Begin(ctx, bid("w0", seq, 0))
		if err != nil {
			b.Fatalf("Begin: %v", err)
		}
		return br
	}
	finish := func(br twopc.Branch) {
		if _, err := br.Prepare(ctx); err != nil {
			b.Fatalf("Prepare: %v", err)
		}
		if err := br.Commit(ctx); err != nil {
			b.Fatalf("Commit: %v", err)
		}
	}
	br := begin()
	calls := 0
	b.ReportAllocs()
	b.SetBytes(int64(benchBatch * 100))
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	mallocs, cpu0 := ms.Mallocs, cpuTime()
	for b.Loop() {
		copy(work, tmpl) // Validate normalises in place
		for _, r := range ptrs {
			if err := s.Validate(r); err != nil {
				b.Fatalf("Validate: %v", err)
			}
		}
		if err := br.Write(ctx, ptrs); err != nil {
			b.Fatalf("Write: %v", err)
		}
		if calls++; calls%100 == 0 {
			b.StopTimer()
			finish(br)
			br = begin()
			b.StartTimer()
		}
	}
	cpu := cpuTime() - cpu0
	runtime.ReadMemStats(&ms)
	n := float64(b.N) * benchBatch
	b.ReportMetric(float64(cpu.Nanoseconds())/n, "cpu-ns/record")
	b.ReportMetric(float64(ms.Mallocs-mallocs)/n, "allocs/record")
	b.StopTimer()
	finish(br)
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCheckpoint compares one checkpoint's worth of work per guarantee
// (docs/DESIGN.md §11) for 10 and 1,000 records against kfake in process:
// exactly_once is Begin, Write, Prepare (flush, producer id, DescribeTransactions),
// Commit (EndTxn) on a slot client; at_least_once is Write and Flush on a
// direct branch of the shared idempotent producer.
func BenchmarkCheckpoint(b *testing.B) {
	c := kafkatest.NewCluster(b, kfake.SeedTopics(1, "events"))
	s := newSink(b, kafkatest.Addr(c))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	seq := uint64(0)
	for _, n := range []int{10, benchBatch} {
		recs := records(b, s, "events", "r", n)
		b.Run(fmt.Sprintf("exactly_once/records=%d", n), func(b *testing.B) {
			for b.Loop() {
				seq++
				if err := twopctest.CommitBranch(ctx, s, bid("eo", seq, 0), recs); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("at_least_once/records=%d", n), func(b *testing.B) {
			seq++
			d, err := s.BeginDirect(ctx, bid("alo", seq, 0), twopc.DirectOptions{Guarantee: twopc.GuaranteeAtLeastOnce})
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close(ctx)
			for b.Loop() {
				if err := d.Write(ctx, recs); err != nil {
					b.Fatal(err)
				}
				if err := d.Flush(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkValidateValue is Validate of one record, per record, for the two
// common shapes of value: a JSON object (~100 bytes), as most JSON apps
// send them, unchecked (the sink scans it) and JSONChecked (the API's
// decoder scanned it, so the sink does not); and a 100-byte JSON string,
// as `make bench` sends them, unmarked (the sink scans it for escapes) and
// marked plain by the API's decoder (KeyPlain, ValuePlain: no scan).
func BenchmarkValidateValue(b *testing.B) {
	c := kafkatest.NewCluster(b, kfake.SeedTopics(1, "events"))
	s := newSink(b, kafkatest.Addr(c))
	object := []byte(`{"user":"u-12345","page":"/products/42?ref=home","at":"2026-12-03T08:00:00Z","n":42,"tags":["a","b"]}`)
	str := []byte(fmt.Sprintf(`"%0100d"`, 42))
	for _, tc := range []struct {
		name           string
		value          []byte
		checked, plain bool
	}{
		{"object", object, false, false},
		{"object/checked", object, true, false},
		{"string", str, true, false},
		{"string/plain", str, true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r := twopc.Record{Sink: "events", Key: []byte(`"u-12345"`), Value: tc.value, JSONChecked: tc.checked,
					KeyPlain: tc.plain, ValuePlain: tc.plain}
				if err := s.Validate(&r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
