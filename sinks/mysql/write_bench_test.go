package mysql

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/txsink/txsink/internal/mysqltest"
	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// The write path's cost against the real server, per 1,000-record call (the
// shape of `make bench`: 1,000 records of a two-column INSERT, a 100-byte
// value each, one XA branch per call). Run with
//
//	go test ./sinks/mysql -run '^$' -bench . -benchmem
//
// allocs/op and B/op are per call of 1,000 records. cpu-ns/record is the
// CPU time (user+system) of this process per record: what the sink costs the
// sidecar, independent of how busy the machine is, unlike ns/op. The server's
// CPU is not in it. BenchmarkDirect is the same work done the way an app
// does it without the sidecar (one prepared 1,000-row INSERT per
// transaction), as the reference.

const benchRecords = 1000

func benchDB(b *testing.B) (string, *sql.DB) {
	b.Helper()
	dsn := mysqltest.DSN(b)
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	if _, err := db.Exec(`CREATE TABLE bench (id BIGINT AUTO_INCREMENT PRIMARY KEY,
		k VARCHAR(32) NOT NULL, v VARCHAR(200) NOT NULL) ENGINE=InnoDB`); err != nil {
		b.Fatal(err)
	}
	return dsn, db
}

// benchValue is a 100-byte alphanumeric value, different per record.
func benchValue(i int) string {
	const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	var sb strings.Builder
	for j := range 100 {
		sb.WriteByte(alnum[(i*31+j*7)%len(alnum)])
	}
	return sb.String()
}

func benchRecs() []*twopc.Record {
	recs := make([]*twopc.Record, benchRecords)
	for i := range recs {
		recs[i] = &twopc.Record{Sink: "db", Stmt: "ins", Args: []json.RawMessage{
			json.RawMessage(`"w:` + strconv.Itoa(i) + `"`), json.RawMessage(`"` + benchValue(i) + `"`)}}
	}
	return recs
}

// cpuNow is the CPU time (user+system) of this process.
func cpuNow(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportPerRecord(b *testing.B, cpu0 time.Duration) {
	cpu := cpuNow(b) - cpu0
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*benchRecords), "cpu-ns/record")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchRecords), "ns/record")
}

// benchSink is a sink with the one statement the benchmarks run.
func benchSink(b *testing.B, dsn string) *Sink {
	b.Helper()
	cfg := DefaultConfig()
	cfg.Name, cfg.DSN = "db", dsn
	cfg.Statements = map[string]string{"ins": "INSERT INTO bench(k, v) VALUES (?, ?)"}
	s, err := New(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkWrite is one branch per op: Begin, Write of 1,000 records,
// Prepare, Commit, as the sidecar does per checkpoint.
func BenchmarkWrite(b *testing.B) {
	dsn, db := benchDB(b)
	s := benchSink(b, dsn)
	recs := benchRecs()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuNow(b)
	for i := 0; b.Loop(); i++ {
		id := twopc.BranchID{Job: "bench", Writer: "w", Sink: "db", Epoch: 1, Seq: uint64(i + 1)}
		if err := twopctest.CommitBranch(ctx, s, id, recs); err != nil {
			b.Fatal(err)
		}
	}
	reportPerRecord(b, cpu0)
	b.StopTimer()
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM bench").Scan(&n); err != nil {
		b.Fatal(err)
	}
	if n != b.N*benchRecords {
		b.Fatalf("bench has %d rows, want %d", n, b.N*benchRecords)
	}
}

// BenchmarkValidate is what the coordinator checks per call before Write.
func BenchmarkValidate(b *testing.B) {
	dsn, _ := benchDB(b)
	s := benchSink(b, dsn)
	recs := benchRecs()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuNow(b)
	for b.Loop() {
		for _, r := range recs {
			if err := s.Validate(r); err != nil {
				b.Fatal(err)
			}
		}
	}
	reportPerRecord(b, cpu0)
}

// BenchmarkDirect is the reference: what an app without the sidecar does
// for the same rows, one prepared 1,000-row INSERT per transaction.
func BenchmarkDirect(b *testing.B) {
	_, db := benchDB(b)
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	stmt, err := conn.PrepareContext(ctx, "INSERT INTO bench(k, v) VALUES "+strings.Repeat("(?, ?),", benchRecords-1)+"(?, ?)")
	if err != nil {
		b.Fatal(err)
	}
	defer stmt.Close()
	vals := make([]string, benchRecords)
	for i := range vals {
		vals[i] = benchValue(i)
	}
	args := make([]any, 2*benchRecords)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuNow(b)
	for b.Loop() {
		for i := range benchRecords {
			args[2*i], args[2*i+1] = "w:"+strconv.Itoa(i), vals[i]
		}
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := tx.StmtContext(ctx, stmt).ExecContext(ctx, args...); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	reportPerRecord(b, cpu0)
}

// BenchmarkCheckpoint compares one checkpoint's worth of work per guarantee
// (docs/DESIGN.md §11) for 10 and 1,000 rows: exactly_once is Begin, Write,
// Prepare (marker row, XA END, XA PREPARE), Commit (XA COMMIT);
// at_least_once is Write and Flush (COMMIT) on a direct branch that lives
// across checkpoints, as a session's does.
func BenchmarkCheckpoint(b *testing.B) {
	dsn, _ := benchDB(b)
	s := benchSink(b, dsn)
	ctx := context.Background()
	seq := uint64(0) // branch ids are never reused: b.Run may run a body several times
	for _, n := range []int{10, benchRecords} {
		recs := benchRecs()[:n]
		b.Run(fmt.Sprintf("exactly_once/rows=%d", n), func(b *testing.B) {
			for b.Loop() {
				seq++
				id := twopc.BranchID{Job: "bench", Writer: "eo", Sink: "db", Epoch: 1, Seq: seq}
				if err := twopctest.CommitBranch(ctx, s, id, recs); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("at_least_once/rows=%d", n), func(b *testing.B) {
			seq++
			d, err := s.BeginDirect(ctx, twopc.BranchID{Job: "bench", Writer: "alo", Sink: "db", Epoch: 1, Seq: seq},
				twopc.DirectOptions{Guarantee: twopc.GuaranteeAtLeastOnce})
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
