package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

// ckptRecords is the size of a small checkpoint: records per sink per
// checkpoint (issue 12).
const ckptRecords = 10

// ckptCase measures small checkpoints: each writer loops {write
// ckptRecords records, checkpoint} as fast as it can, and the row reports
// checkpoints/s and the latency of one loop (write call start → the
// checkpoint acknowledged committed).
//
//   - ckpt-kafka-direct: one franz-go transactional producer per writer;
//     a loop is BeginTransaction, ckptRecords async produces, Flush,
//     EndTransaction(commit).
//   - ckpt-kafka-sidecar: one session per writer (job mode auto, sink
//     events); a loop is one NDJSON write of ckptRecords records and a
//     checkpoint that waits for committed, over the Unix socket.
//   - ckpt-both-direct: the Kafka loop above plus, on one connection per
//     writer, XA START, one ckptRecords-row INSERT, XA END, XA PREPARE;
//     then the Kafka commit, then XA COMMIT. It is the fair two-phase
//     baseline for the work a checkpoint does in the sinks, but it keeps no
//     durable coordinator log (a crash between the two commits leaves the XA
//     branch prepared with nobody to decide it) and prepares and commits the
//     sinks one after the other, as a plain app would.
//   - ckpt-both-sidecar: the same records to both sinks (events and db) in
//     one write call, then a checkpoint that waits for committed.
//
// Every record is verified like the other rows: the topic with
// read_committed, the table by COUNT(*) and COUNT(DISTINCT k).
//
// The sidecar rows come once per delivery guarantee g (guarantees.go):
// ckpt-kafka-sidecar-{eo,alo,none}-wN, the same loop against a job of that
// guarantee.
func ckptCase(sinks, path, g string, writers int) *benchCase {
	name := caseName("ckpt-"+sinks, path, g, 0, writers)
	if writers == 1 {
		name += "-w1" // the ckpt rows always name their writer count
	}
	c := &benchCase{name: name, kind: "ckpt-" + sinks, path: path, guarantee: g, writers: writers, mysql: sinks == "both",
		lat: &latencies{}}
	topic := "bench-" + name
	table := "bench"
	if path == "direct" {
		table = "bench_direct"
	}
	c.run = func(ctx context.Context, e *env, d time.Duration) (int64, time.Duration, error) {
		if err := e.createTopic(ctx, topic); err != nil {
			return 0, 0, err
		}
		if c.mysql {
			if _, err := e.db.ExecContext(ctx, "TRUNCATE TABLE "+table); err != nil {
				return 0, 0, err
			}
		}
		if path == "direct" {
			return runWriters(ctx, name, writers, d, func(ctx context.Context, w int, end time.Time, n *atomic.Int64) (int64, error) {
				return ckptDirectWriter(ctx, e, c, topic, w, end, n)
			})
		}
		job := "bench-" + name
		js := []string{"events"}
		if c.mysql {
			js = append(js, "db")
		}
		if err := putJob(ctx, e.unix, job, js, g); err != nil {
			return 0, 0, err
		}
		return countXA(ctx, e, c, func() (int64, time.Duration, error) {
			return runWriters(ctx, name, writers, d, func(ctx context.Context, w int, end time.Time, n *atomic.Int64) (int64, error) {
				return ckptSidecarWriter(ctx, e, c, job, topic, w, end, n)
			})
		})
	}
	c.verify = func(ctx context.Context, e *env, records int64) error {
		err := verifyTopic(ctx, e, c, topic, records)
		if c.mysql {
			err = errors.Join(err, verifyTable(ctx, e, c, table, records), checkXA(c, records/ckptRecords))
		}
		return err
	}
	return c
}

// verifyTable checks that table holds records rows with distinct keys.
// Rows whose sidecar commits after the answer (async: wait=prepared; none:
// fire and forget) may still be catching up: the distinct count must reach
// records within 10 s. Duplicates (count > distinct) fail exactly-once rows
// and are counted into c.dups for alo and none. none may also lose the
// records the sidecar counted as failed (lostOK).
func verifyTable(ctx context.Context, e *env, c *benchCase, table string, records int64) error {
	settles := c.path == "async" || c.guarantee == "none"
	deadline := time.Now().Add(10 * time.Second)
	for {
		var count, distinct, lost int64
		if err := e.db.QueryRowContext(ctx, "SELECT COUNT(*), COUNT(DISTINCT k) FROM "+table).Scan(&count, &distinct); err != nil {
			return err
		}
		if c.guarantee == "none" {
			var err error
			if lost, err = e.recordsFailed(ctx, "bench-"+c.name, "db"); err != nil {
				return err
			}
		}
		c.dups = count - distinct
		dupsOK := dupsAllowed(c.guarantee) || count == distinct
		if lostOK(c, distinct, records, lost) && dupsOK {
			if c.guarantee == "none" {
				c.lost += records - distinct
			}
			return nil
		}
		if distinct > records || !dupsOK || !settles || time.Now().After(deadline) {
			return fmt.Errorf("%w: %s has %d rows (%d distinct keys), want %d committed (%d counted as failed)",
				errMismatch, table, count, distinct, records, lost)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func ckptDirectWriter(ctx context.Context, e *env, c *benchCase, topic string, w int, end time.Time, progress *atomic.Int64) (int64, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokerAddr), kgo.DefaultProduceTopic(topic),
		kgo.TransactionalID(fmt.Sprintf("bench-direct.%s.%d", topic, w)))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	var conn *sql.Conn
	var stmt *sql.Stmt
	if c.mysql {
		if conn, err = e.db.Conn(ctx); err != nil {
			return 0, err
		}
		defer conn.Close()
		q := "INSERT INTO bench_direct(k, v) VALUES " + strings.Repeat("(?, ?),", ckptRecords-1) + "(?, ?)"
		if stmt, err = conn.PrepareContext(ctx, q); err != nil {
			return 0, err
		}
		defer stmt.Close()
	}
	var pe produceErrs
	promise := pe.promise
	prefix := strconv.Itoa(w) + ":"
	args := make([]any, 2*ckptRecords)
	var committed int64
	for n := int64(1); time.Now().Before(end); n++ {
		t0 := time.Now()
		if err := cl.BeginTransaction(); err != nil {
			return committed, err
		}
		for i := range ckptRecords {
			k := prefix + strconv.FormatInt(committed+int64(i), 10)
			cl.Produce(ctx, &kgo.Record{Key: []byte(k), Value: valueAt(w, committed+int64(i))}, promise)
			args[2*i], args[2*i+1] = k, valueAt(w, committed+int64(i))
		}
		xid := fmt.Sprintf("'bench-%d-%d'", w, n)
		if c.mysql {
			if err := xaPrepare(ctx, conn, stmt, xid, args); err != nil {
				return committed, err
			}
		}
		err := cl.Flush(ctx)
		if err == nil {
			err = pe.err()
		}
		if err == nil {
			if err = cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
				err = fmt.Errorf("commit: %w", err)
			}
		}
		if err != nil {
			if c.mysql {
				// Kafka did not commit: roll the XA branch back, or it
				// would stay prepared on the server after this run.
				_, rerr := conn.ExecContext(context.WithoutCancel(ctx), "XA ROLLBACK "+xid)
				err = errors.Join(err, rerr)
			}
			return committed, err
		}
		if c.mysql {
			if _, err := conn.ExecContext(ctx, "XA COMMIT "+xid); err != nil {
				return committed, fmt.Errorf("xa commit: %w", err)
			}
		}
		c.lat.add(time.Since(t0))
		committed += ckptRecords
		progress.Add(ckptRecords)
	}
	return committed, nil
}

// xaPrepare runs one XA branch up to PREPARE on conn; when a step fails
// it ends and rolls the branch back (best effort), so nothing stays
// prepared on the server.
func xaPrepare(ctx context.Context, conn *sql.Conn, stmt *sql.Stmt, xid string, args []any) error {
	if _, err := conn.ExecContext(ctx, "XA START "+xid); err != nil {
		return fmt.Errorf("xa start: %w", err)
	}
	err := func() error {
		if _, err := stmt.ExecContext(ctx, args...); err != nil {
			return fmt.Errorf("insert: %w", err)
		}
		if _, err := conn.ExecContext(ctx, "XA END "+xid); err != nil {
			return fmt.Errorf("xa end: %w", err)
		}
		if _, err := conn.ExecContext(ctx, "XA PREPARE "+xid); err != nil {
			return fmt.Errorf("xa prepare: %w", err)
		}
		return nil
	}()
	if err != nil {
		bg := context.WithoutCancel(ctx)
		_, _ = conn.ExecContext(bg, "XA END "+xid) // fails harmlessly when already ended
		_, _ = conn.ExecContext(bg, "XA ROLLBACK "+xid)
	}
	return err
}

func ckptSidecarWriter(ctx context.Context, e *env, c *benchCase, job, topic string, w int, end time.Time, progress *atomic.Int64) (int64, error) {
	cl := e.unix
	writer := strconv.Itoa(w)
	sess, err := cl.OpenSession(ctx, job, writer, nil)
	if err != nil {
		return 0, fmt.Errorf("open session: %w", err)
	}
	var body bytes.Buffer
	var committed int64
	for n := int64(1); time.Now().Before(end); n++ {
		body.Reset()
		for i := range ckptRecords {
			k := writer + ":" + strconv.FormatInt(committed+int64(i), 10)
			v := valueAt(w, committed+int64(i))
			fmt.Fprintf(&body, `{"sink":"events","topic":%q,"key":%q,"value":%q}`+"\n", topic, k, v)
			if c.mysql {
				fmt.Fprintf(&body, `{"sink":"db","stmt":"ins","args":[%q,%q]}`+"\n", k, v)
			}
		}
		t0 := time.Now()
		if _, err := cl.WriteNDJSON(ctx, job, writer, sess.Epoch, client.Seq(n), body.Bytes()); err != nil {
			return committed, errors.Join(fmt.Errorf("write: %w", err), e.sidecarAlive())
		}
		if err := checkpoint(ctx, e, cl, job, writer, sess.Epoch, n, twopc.WaitCommitted); err != nil {
			return committed, err
		}
		c.lat.add(time.Since(t0))
		committed += ckptRecords
		progress.Add(ckptRecords)
	}
	return committed, nil
}

// latencies collects durations from many goroutines.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) reset() {
	l.mu.Lock()
	l.d = l.d[:0]
	l.mu.Unlock()
}

// quantile returns the q-quantile (nearest rank), 0 when empty.
func (l *latencies) quantile(q float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	s := slices.Clone(l.d)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}
