package systemtest

// The MySQL/MariaDB sink through XA, end to end: the built sidecar as a
// process, a real MariaDB (mysqltest, binary log on) and, where Kafka is
// involved, the kfake broker process. Visibility is always checked from a
// plain connection of the test, never through the sidecar.

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/mysqltest"
	"github.com/txsink/txsink/twopc"
)

// xaFormatID is the formatID of every XA branch of txsink ("txs1").
const xaFormatID = 0x74787331

const tableT = "CREATE TABLE t(id BIGINT AUTO_INCREMENT PRIMARY KEY, k VARCHAR(64), v VARCHAR(255), UNIQUE KEY(v))"

// mdb is one test's database and job name, seen from a plain connection.
type mdb struct {
	t   *testing.T
	dsn string
	db  *sql.DB
	job string
}

// newMDB opens dsn, runs the DDL, picks a job name unique on the server
// (XA RECOVER is server-wide) and, at the end of the test, asserts that no
// XA branch of that job is left (see assertNoXA). Call it before newNode so
// that the assertion runs after the sidecar is gone.
func newMDB(t *testing.T, dsn string, ddl ...string) *mdb {
	t.Helper()
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, q := range ddl {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	m := &mdb{t: t, dsn: dsn, db: db, job: "m" + hex.EncodeToString(b[:])}
	t.Cleanup(m.assertNoXA)
	return m
}

// sinkYAML is a mysql sink named name on this database (indented under sinks:).
func (m *mdb) sinkYAML(name string, maxInflight int, stmts map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  %s:\n    kind: mysql\n    dsn: %q\n", name, m.dsn)
	if maxInflight > 0 {
		fmt.Fprintf(&b, "    max_inflight: %d\n", maxInflight)
	}
	b.WriteString("    statements:\n")
	names := make([]string, 0, len(stmts))
	for n := range stmts {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(&b, "      %s: %q\n", n, stmts[n])
	}
	return b.String()
}

var insStmts = map[string]string{"ins": "INSERT INTO t(k, v) VALUES (?, ?)"}

// rowsOf returns every v of table t, in order, read by a plain connection.
func (m *mdb) rowsOf() ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rs, err := m.db.QueryContext(ctx, "SELECT v FROM t ORDER BY v")
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []string
	for rs.Next() {
		var v string
		if err := rs.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rs.Err()
}

// wantRows checks that t holds exactly want now (sorted, each once).
func (m *mdb) wantRows(want []string) {
	m.t.Helper()
	got, err := m.rowsOf()
	if err != nil {
		m.t.Fatalf("read t: %v", err)
	}
	if !slices.Equal(got, want) {
		m.t.Fatalf("table t holds %d rows %s, want exactly %d: %s", len(got), abbrev(got), len(want), abbrev(want))
	}
}

// waitRows polls until t holds exactly want (recovery runs in the
// background), failing after a deadline.
func (m *mdb) waitRows(want []string, within time.Duration) {
	m.t.Helper()
	deadline := time.Now().Add(within)
	for {
		got, err := m.rowsOf()
		if err == nil && slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("after %v table t holds %d rows %s (err %v), want exactly %d: %s",
				within, len(got), abbrev(got), err, len(want), abbrev(want))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type xaRow struct {
	format       int64
	gtrid, bqual []byte
}

// ours lists the XA RECOVER rows of txsink's formatID whose gtrid names this
// test's job (the tag is "job/writer/sink" for our short names).
func (m *mdb) ours(ctx context.Context, conn *sql.Conn) ([]xaRow, error) {
	rs, err := conn.QueryContext(ctx, "XA RECOVER")
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []xaRow
	for rs.Next() {
		var f, gl, bl int64
		var data []byte
		if err := rs.Scan(&f, &gl, &bl, &data); err != nil {
			return nil, err
		}
		if f != xaFormatID || int64(len(data)) < gl+bl {
			continue
		}
		x := xaRow{format: f, gtrid: data[:gl], bqual: data[gl : gl+bl]}
		if strings.HasPrefix(string(x.gtrid), m.job+"/") {
			out = append(out, x)
		}
	}
	return out, rs.Err()
}

// assertNoXA fails the test if an XA branch of its job is still in XA
// RECOVER (waiting a little: a background commit may be finishing), and
// rolls such branches back so the database can be dropped.
func (m *mdb) assertNoXA() {
	t := m.t
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := m.db.Conn(ctx)
	if err != nil {
		t.Errorf("assert no XA branches: %v", err)
		return
	}
	defer conn.Close()
	deadline := time.Now().Add(15 * time.Second)
	var xs []xaRow
	for {
		xs, err = m.ours(ctx, conn)
		if err != nil {
			t.Errorf("assert no XA branches: XA RECOVER: %v", err)
			return
		}
		if len(xs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, x := range xs {
		t.Errorf("XA branch %q,%q of job %s still in XA RECOVER at the end of the test", x.gtrid, x.bqual, m.job)
		lit := fmt.Sprintf("X'%x',X'%x',%d", x.gtrid, x.bqual, x.format)
		if _, err := conn.ExecContext(ctx, "XA ROLLBACK "+lit); err != nil {
			t.Logf("XA ROLLBACK %s: %v", lit, err)
		}
	}
}

// preparedCount is the number of our branches in XA RECOVER now.
func (m *mdb) preparedCount() int {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := m.db.Conn(ctx)
	if err != nil {
		m.t.Fatal(err)
	}
	defer conn.Close()
	xs, err := m.ours(ctx, conn)
	if err != nil {
		m.t.Fatal(err)
	}
	return len(xs)
}

func jsonArg(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// bothSinks is each value as a Kafka record of sink events and an "ins" row of sink db.
func bothSinks(vals []string) []*twopc.Record {
	return append(records(vals), insRecords("db", vals)...)
}

// insRecords are "ins" records of sink db, one per value (k = "k").
func insRecords(sink string, vals []string) []*twopc.Record {
	out := make([]*twopc.Record, len(vals))
	for i, v := range vals {
		out[i] = &twopc.Record{Sink: sink, Stmt: "ins", Args: []json.RawMessage{jsonArg("k"), jsonArg(v)}}
	}
	return out
}

// tctx is a bounded context for one call.
func tctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustWriteRecs(t *testing.T, c *client.Client, job, writer string, epoch uint64, recs []*twopc.Record) {
	t.Helper()
	if _, err := c.Write(tctx(t), job, writer, epoch, nil, recs); err != nil {
		t.Fatalf("write %s/%s: %v", job, writer, err)
	}
}

func mustCheckpoint(t *testing.T, c *client.Client, job, writer string, epoch uint64, n int64, want string) {
	t.Helper()
	r, err := c.Checkpoint(tctx(t), job, writer, epoch, n, []byte(fmt.Sprintf("s%d", n)), "")
	if err != nil || r.Status != want {
		t.Fatalf("checkpoint %d of %s/%s: %+v %v, want status %s", n, job, writer, r, err, want)
	}
}

func mustSession(t *testing.T, c *client.Client, job, writer string, restore *int64) twopc.SessionInfo {
	t.Helper()
	s, err := c.OpenSession(tctx(t), job, writer, restore)
	if err != nil {
		t.Fatalf("open session %s/%s: %v", job, writer, err)
	}
	return s
}

func wantProblem(t *testing.T, what string, err error, status int, code string) {
	t.Helper()
	var e *client.Error
	if !errors.As(err, &e) || e.Status != status || e.Code != code {
		t.Fatalf("%s: got %v, want %d %s", what, err, status, code)
	}
}

// 1. Rows are invisible to a plain connection until their checkpoint
// commits, and visible exactly once after, in both commit modes.
func TestMySQLVisibleOnlyAfterCommit(t *testing.T) {
	for _, mode := range []twopc.Mode{twopc.ModeAuto, twopc.ModeExternal} {
		t.Run(string(mode), func(t *testing.T) {
			m := newMDB(t, mysqltest.DSN(t), tableT)
			n := newNode(t, m.sinkYAML("db", 0, insStmts))
			c := n.start()
			if _, err := c.PutJob(tctx(t), m.job, mode, nil); err != nil {
				t.Fatal(err)
			}
			s := mustSession(t, c, m.job, "0", nil)
			mustWriteRecs(t, c, m.job, "0", s.Epoch, insRecords("db", values(0, 50)))
			m.wantRows(nil)
			mustWriteRecs(t, c, m.job, "0", s.Epoch, insRecords("db", values(50, 100)))
			m.wantRows(nil)
			if mode == twopc.ModeAuto {
				mustCheckpoint(t, c, m.job, "0", s.Epoch, 1, twopc.StatusCommitted)
			} else {
				mustCheckpoint(t, c, m.job, "0", s.Epoch, 1, twopc.StatusPrepared)
				m.wantRows(nil)
				if r, err := c.Commit(tctx(t), m.job, 1); err != nil || r.Status != twopc.StatusCommitted {
					t.Fatalf("commit 1: %+v %v", r, err)
				}
			}
			m.wantRows(values(0, 100))
			// a second checkpoint adds its rows only
			mustWriteRecs(t, c, m.job, "0", s.Epoch, insRecords("db", values(100, 110)))
			m.wantRows(values(0, 100))
			if mode == twopc.ModeAuto {
				mustCheckpoint(t, c, m.job, "0", s.Epoch, 2, twopc.StatusCommitted)
			} else {
				mustCheckpoint(t, c, m.job, "0", s.Epoch, 2, twopc.StatusPrepared)
				if r, err := c.Commit(tctx(t), m.job, 2); err != nil || r.Status != twopc.StatusCommitted {
					t.Fatalf("commit 2: %+v %v", r, err)
				}
			}
			m.wantRows(values(0, 110))
		})
	}
}

// 2a. Auto mode: the sidecar kills itself right after the journal entry
// (prepared + decided); after a restart, with no call from the app,
// recovery commits the branch and the rows appear exactly once.
func TestMySQLKillAfterJournalAutoMode(t *testing.T) {
	m := newMDB(t, mysqltest.DSN(t), tableT)
	n := newNode(t, m.sinkYAML("db", 0, insStmts))
	c := n.start("TXSINK_FAILPOINT=after-journal:2")
	s := openJob(t, c, m.job, twopc.ModeAuto, "0")
	mustWriteRecs(t, c, m.job, "0", s.Epoch, insRecords("db", values(0, 10)))
	mustCheckpoint(t, c, m.job, "0", s.Epoch, 1, twopc.StatusCommitted)
	mustWriteRecs(t, c, m.job, "0", s.Epoch, insRecords("db", values(10, 20)))
	cmd := n.cmd
	if _, err := c.Checkpoint(tctx(t), m.job, "0", s.Epoch, 2, []byte("s2"), ""); err == nil {
		t.Fatal("checkpoint 2 succeeded; want the process killed after the journal entry")
	}
	n.waitExit()
	if !n.exitedBySIGKILL(cmd) {
		t.Fatalf("sidecar exited with %v, want SIGKILL at after-journal", cmd.ProcessState)
	}
	m.wantRows(values(0, 10)) // prepared, not committed yet
	if got := m.preparedCount(); got != 1 {
		t.Fatalf("%d branches of ours in XA RECOVER after the kill, want the 1 prepared", got)
	}

	c = n.start() // no failpoint, no call from the app
	m.waitRows(values(0, 20), 30*time.Second)
	s2 := mustSession(t, c, m.job, "0", nil)
	if s2.Checkpoint != 2 || string(s2.State) != "s2" {
		t.Fatalf("reopen: got checkpoint %d state %q, want 2 s2", s2.Checkpoint, s2.State)
	}
	m.wantRows(values(0, 20))
}

// 2b. External mode: kill -9 after the checkpoint is prepared; after the
// restart the rows stay invisible (recovery must not decide for the app),
// then commit n or a session restoring n makes them visible once.
func TestMySQLKillExternalAfterPrepare(t *testing.T) {
	for _, how := range []string{"commit", "restore"} {
		t.Run(how, func(t *testing.T) {
			m := newMDB(t, mysqltest.DSN(t), tableT)
			n := newNode(t, m.sinkYAML("db", 0, insStmts))
			c := n.start()
			if _, err := c.PutJob(tctx(t), m.job, twopc.ModeExternal, nil); err != nil {
				t.Fatal(err)
			}
			var want []string
			for w, writer := range []string{"0", "1"} {
				s := mustSession(t, c, m.job, writer, nil)
				vals := values(w*1000, w*1000+30)
				want = append(want, vals...)
				mustWriteRecs(t, c, m.job, writer, s.Epoch, insRecords("db", vals))
				mustCheckpoint(t, c, m.job, writer, s.Epoch, 7, twopc.StatusPrepared)
			}
			m.wantRows(nil)
			n.kill()
			m.wantRows(nil)
			if got := m.preparedCount(); got != 2 {
				t.Fatalf("%d branches of ours in XA RECOVER after the kill, want 2 prepared", got)
			}

			c = n.start()
			m.wantRows(nil) // still in doubt
			if got := m.preparedCount(); got != 2 {
				t.Fatalf("%d branches of ours in XA RECOVER after the restart, want 2 still prepared", got)
			}
			switch how {
			case "commit":
				r, err := c.Commit(tctx(t), m.job, 7)
				if err != nil || r.Status != twopc.StatusCommitted {
					t.Fatalf("commit 7: %+v %v", r, err)
				}
				m.wantRows(want)
			case "restore":
				seven := int64(7)
				s := mustSession(t, c, m.job, "0", &seven)
				if s.Checkpoint != 7 || string(s.State) != "s7" {
					t.Fatalf("restore 7 for writer 0: %+v", s)
				}
				// writer 0's rows are committed by its session open; writer
				// 1's by its own (or by the job-wide decision): both once.
				s = mustSession(t, c, m.job, "1", &seven)
				if s.Checkpoint != 7 || string(s.State) != "s7" {
					t.Fatalf("restore 7 for writer 1: %+v", s)
				}
				m.waitRows(want, 30*time.Second)
			}
		})
	}
}

// 3. One checkpoint spans Kafka and MySQL; the sidecar dies between the
// commits of its two branches (db is committed first, then events). After
// the restart recovery finishes the other: both show everything once.
func TestMySQLKafkaKillBetweenSinkCommits(t *testing.T) {
	broker := startBroker(t)
	m := newMDB(t, mysqltest.DSN(t), tableT)
	n := newNode(t, m.sinkYAML("db", 0, insStmts)+kafkaSinkYAML(broker))
	c := n.start("TXSINK_FAILPOINT=after-commit-first-sink:2")
	s := openJob(t, c, m.job, twopc.ModeAuto, "0")
	mustWriteRecs(t, c, m.job, "0", s.Epoch, bothSinks(values(0, 10)))
	mustCheckpoint(t, c, m.job, "0", s.Epoch, 1, twopc.StatusCommitted)
	mustWriteRecs(t, c, m.job, "0", s.Epoch, bothSinks(values(10, 20)))
	cmd := n.cmd
	if _, err := c.Checkpoint(tctx(t), m.job, "0", s.Epoch, 2, []byte("s2"), ""); err == nil {
		t.Fatal("checkpoint 2 succeeded; want the process killed between the sink commits")
	}
	n.waitExit()
	if !n.exitedBySIGKILL(cmd) {
		t.Fatalf("sidecar exited with %v, want SIGKILL at after-commit-first-sink", cmd.ProcessState)
	}
	// db (first in name order) is committed; events is not yet.
	m.wantRows(values(0, 20))
	wantExactly(t, broker, values(0, 10))

	c = n.start()
	wantExactly(t, broker, values(0, 20))
	m.wantRows(values(0, 20))
	s2 := mustSession(t, c, m.job, "0", nil)
	if s2.Checkpoint != 2 || string(s2.State) != "s2" {
		t.Fatalf("reopen: got checkpoint %d state %q, want 2 s2", s2.Checkpoint, s2.State)
	}
	if got := kcatValues(t, broker); got != nil && !slices.Equal(got, values(0, 20)) {
		t.Fatalf("kcat read %v, want %v", abbrev(got), abbrev(values(0, 20)))
	}
}

// 3b. A statement error in MySQL (duplicate on UNIQUE v) in a checkpoint
// that also wrote to Kafka: the record is poison (422 record_rejected naming
// it), and because the call's Kafka records were already produced the
// session failed: neither sink shows any record of that checkpoint; the
// reopened writer replays without the poison record and commits.
func TestMySQLKafkaStatementErrorAbortsBoth(t *testing.T) {
	broker := startBroker(t)
	m := newMDB(t, mysqltest.DSN(t), tableT)
	n := newNode(t, m.sinkYAML("db", 0, insStmts)+kafkaSinkYAML(broker))
	c := n.start()
	s := openJob(t, c, m.job, twopc.ModeAuto, "0")
	mustWriteRecs(t, c, m.job, "0", s.Epoch, bothSinks(values(0, 10)))
	mustCheckpoint(t, c, m.job, "0", s.Epoch, 1, twopc.StatusCommitted)

	// checkpoint 2: a good call to both sinks, then a duplicate v0003.
	mustWriteRecs(t, c, m.job, "0", s.Epoch, bothSinks(values(10, 20)))
	bad := append(records(values(20, 25)), insRecords("db", []string{"v0020", "v0003"})...)
	_, err := c.Write(tctx(t), m.job, "0", s.Epoch, nil, bad)
	wantProblem(t, "write with a duplicate key", err, 422, "record_rejected")
	if e, _ := errors.AsType[*client.Error](err); e.Record != 7 || !strings.Contains(e.Detail, "session failed") {
		t.Fatalf("write with a duplicate key: got record %d (%s), want record 7 and the session failed", e.Record, e.Detail)
	}
	// the failed session takes nothing more
	if _, err := c.Checkpoint(tctx(t), m.job, "0", s.Epoch, 2, []byte("s2"), ""); err == nil {
		t.Fatal("checkpoint after a sink failure succeeded; want an error (the writer must reopen)")
	}
	m.wantRows(values(0, 10))
	wantExactly(t, broker, values(0, 10))

	s2 := mustSession(t, c, m.job, "0", nil)
	if s2.Checkpoint != 1 || string(s2.State) != "s1" {
		t.Fatalf("reopen: got checkpoint %d state %q, want 1 s1", s2.Checkpoint, s2.State)
	}
	mustWriteRecs(t, c, m.job, "0", s2.Epoch, bothSinks(values(10, 25)))
	mustCheckpoint(t, c, m.job, "0", s2.Epoch, 2, twopc.StatusCommitted)
	m.wantRows(values(0, 25))
	wantExactly(t, broker, values(0, 25))
}

// 4. kill -9 of mariadbd while the sidecar holds a prepared branch
// (external mode). Prepared branches survive a server crash, and their
// preparing connection is gone: the commit must go through recovery (a new
// connection, boot id changed) and be verified through the marker row.
//
//   - live: mariadbd restarts, then commit n on the same sidecar;
//   - down: commit n while mariadbd is down (202 committing or committed
//     later), then mariadbd restarts and the recovery loop finishes;
//   - sidecar-restart: mariadbd restarts, the sidecar is killed and
//     restarted too, then commit n.
func TestMySQLKillMariaDB(t *testing.T) {
	for _, how := range []string{"live", "down", "sidecar-restart"} {
		t.Run(how, func(t *testing.T) {
			srv := mysqltest.PrivateServer(t)
			m := newMDB(t, srv.Database(t), tableT)
			n := newNode(t, m.sinkYAML("db", 0, insStmts))
			c := n.start()
			if _, err := c.PutJob(tctx(t), m.job, twopc.ModeExternal, nil); err != nil {
				t.Fatal(err)
			}
			s := mustSession(t, c, m.job, "0", nil)
			mustWriteRecs(t, c, m.job, "0", s.Epoch, insRecords("db", values(0, 10)))
			mustCheckpoint(t, c, m.job, "0", s.Epoch, 1, twopc.StatusPrepared)
			if r, err := c.Commit(tctx(t), m.job, 1); err != nil || r.Status != twopc.StatusCommitted {
				t.Fatalf("commit 1: %+v %v", r, err)
			}
			mustWriteRecs(t, c, m.job, "0", s.Epoch, insRecords("db", values(10, 30)))
			mustCheckpoint(t, c, m.job, "0", s.Epoch, 2, twopc.StatusPrepared)
			m.wantRows(values(0, 10))

			srv.Kill9()
			switch how {
			case "down":
				r, err := c.Commit(tctx(t), m.job, 2)
				if err != nil || (r.Status != twopc.StatusCommitting && r.Status != twopc.StatusCommitted) {
					t.Fatalf("commit 2 with mariadbd down: %+v %v, want committing", r, err)
				}
				srv.Restart(t)
			case "live":
				srv.Restart(t)
				m.wantRows(values(0, 10))
				if got := m.preparedCount(); got != 1 {
					t.Fatalf("%d branches of ours in XA RECOVER after the server restart, want 1 prepared", got)
				}
				r, err := c.Commit(tctx(t), m.job, 2)
				if err != nil || (r.Status != twopc.StatusCommitting && r.Status != twopc.StatusCommitted) {
					t.Fatalf("commit 2: %+v %v", r, err)
				}
			case "sidecar-restart":
				srv.Restart(t)
				n.kill()
				c = n.start()
				m.wantRows(values(0, 10))
				if got := m.preparedCount(); got != 1 {
					t.Fatalf("%d branches of ours in XA RECOVER after both restarts, want 1 prepared", got)
				}
				r, err := c.Commit(tctx(t), m.job, 2)
				if err != nil || r.Status != twopc.StatusCommitted {
					t.Fatalf("commit 2: %+v %v", r, err)
				}
				m.wantRows(values(0, 30))
			}
			m.waitRows(values(0, 30), 45*time.Second)
			// the journal learns it too: the checkpoint ends committed
			waitCommitted(t, c, m.job, "0", 2)
			// and the writer goes on (a new session; the old one may have
			// lost its connection)
			s2 := mustSession(t, c, m.job, "0", nil)
			mustWriteRecs(t, c, m.job, "0", s2.Epoch, insRecords("db", values(30, 35)))
			mustCheckpoint(t, c, m.job, "0", s2.Epoch, 3, twopc.StatusPrepared)
			if r, err := c.Commit(tctx(t), m.job, 3); err != nil || r.Status != twopc.StatusCommitted {
				t.Fatalf("commit 3: %+v %v", r, err)
			}
			m.wantRows(values(0, 35))
		})
	}
}

// waitCommitted polls the job until the writer's last committed checkpoint
// is at least n and nothing of it is in doubt.
func waitCommitted(t *testing.T, c *client.Client, job, writer string, n int64) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for {
		ji, err := c.Job(tctx(t), job)
		if err == nil {
			for _, w := range ji.Writers {
				if w.Name == writer && w.LastCommitted >= n && len(w.InDoubt) == 0 {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("checkpoint %d of %s/%s not committed in the journal after 45s: %+v", n, job, writer, ji)
			}
		} else if time.Now().After(deadline) {
			t.Fatalf("job %s: %v", job, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// 5. At most max_inflight unfinished checkpoints per writer in the mysql
// sink: the next write gets 429 backpressure without effect; after the
// commit writes work again.
func TestMySQLBackpressure(t *testing.T) {
	m := newMDB(t, mysqltest.DSN(t), tableT)
	n := newNode(t, m.sinkYAML("db", 2, insStmts))
	c := n.start()
	if _, err := c.PutJob(tctx(t), m.job, twopc.ModeExternal, nil); err != nil {
		t.Fatal(err)
	}
	s := mustSession(t, c, m.job, "0", nil)
	mustWriteRecs(t, c, m.job, "0", s.Epoch, insRecords("db", values(0, 5)))
	mustCheckpoint(t, c, m.job, "0", s.Epoch, 1, twopc.StatusPrepared)
	mustWriteRecs(t, c, m.job, "0", s.Epoch, insRecords("db", values(5, 10)))
	mustCheckpoint(t, c, m.job, "0", s.Epoch, 2, twopc.StatusPrepared)
	if got := m.preparedCount(); got != 2 {
		t.Fatalf("%d branches of ours in XA RECOVER, want 2 prepared", got)
	}
	_, err := c.Write(tctx(t), m.job, "0", s.Epoch, nil, insRecords("db", values(10, 15)))
	wantProblem(t, "third write with two checkpoints in flight", err, 429, "backpressure")
	// without effect, and the session is still usable
	_, err = c.Write(tctx(t), m.job, "0", s.Epoch, nil, insRecords("db", values(10, 15)))
	wantProblem(t, "repeated third write", err, 429, "backpressure")
	m.wantRows(nil)

	if r, err := c.Commit(tctx(t), m.job, 2); err != nil || r.Status != twopc.StatusCommitted {
		t.Fatalf("commit 2: %+v %v", r, err)
	}
	m.wantRows(values(0, 10))
	mustWriteRecs(t, c, m.job, "0", s.Epoch, insRecords("db", values(10, 15)))
	mustCheckpoint(t, c, m.job, "0", s.Epoch, 3, twopc.StatusPrepared)
	if r, err := c.Commit(tctx(t), m.job, 3); err != nil || r.Status != twopc.StatusCommitted {
		t.Fatalf("commit 3: %+v %v", r, err)
	}
	m.wantRows(values(0, 15))
}

// 6. Two writers update the same two rows in opposite orders. InnoDB picks
// one as the deadlock victim (or a lock wait times out): that writer's call
// fails cleanly with 502 sink_failure and its branch is rolled back; the
// other commits; the victim reopens, replays and commits too.
func TestMySQLDeadlockBetweenWriters(t *testing.T) {
	m := newMDB(t, mysqltest.DSN(t),
		"CREATE TABLE acct(id INT PRIMARY KEY, n INT NOT NULL)",
		"INSERT INTO acct VALUES (1, 0), (2, 0)")
	n := newNode(t, m.sinkYAML("db", 0, map[string]string{"upd": "UPDATE acct SET n = n + 1 WHERE id = ?"}))
	c := n.start()
	if _, err := c.PutJob(tctx(t), m.job, twopc.ModeAuto, nil); err != nil {
		t.Fatal(err)
	}
	upd := func(id int) []*twopc.Record {
		return []*twopc.Record{{Sink: "db", Stmt: "upd", Args: []json.RawMessage{jsonArg(id)}}}
	}
	acct := func() (int, int) {
		t.Helper()
		var a, b int
		if err := m.db.QueryRow("SELECT (SELECT n FROM acct WHERE id = 1), (SELECT n FROM acct WHERE id = 2)").Scan(&a, &b); err != nil {
			t.Fatal(err)
		}
		return a, b
	}
	writers := []string{"a", "b"}
	first := map[string]int{"a": 1, "b": 2}
	second := map[string]int{"a": 2, "b": 1}
	sess := map[string]twopc.SessionInfo{}
	for _, w := range writers {
		sess[w] = mustSession(t, c, m.job, w, nil)
		mustWriteRecs(t, c, m.job, w, sess[w].Epoch, upd(first[w])) // a locks row 1, b row 2
	}
	// Now each goes for the other's row: a cycle.
	errs := make(map[string]error)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			_, err := c.Write(ctx, m.job, w, sess[w].Epoch, nil, upd(second[w]))
			if err == nil {
				_, err = c.Checkpoint(ctx, m.job, w, sess[w].Epoch, 1, []byte("s1"), "")
			}
			mu.Lock()
			errs[w] = err
			mu.Unlock()
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(100 * time.Second):
		t.Fatal("the two writers did not finish within 100s")
	}
	var victim, winner string
	switch {
	case errs["a"] != nil && errs["b"] == nil:
		victim, winner = "a", "b"
	case errs["b"] != nil && errs["a"] == nil:
		victim, winner = "b", "a"
	default:
		t.Fatalf("want exactly one writer to fail: a: %v; b: %v", errs["a"], errs["b"])
	}
	wantProblem(t, "victim "+victim, errs[victim], 502, "sink_failure")
	if d := errs[victim].Error(); !strings.Contains(d, "deadlock") && !strings.Contains(d, "lock wait") {
		t.Fatalf("victim's error names neither a deadlock nor a lock wait timeout: %v", d)
	}
	t.Logf("victim %s: %v", victim, errs[victim])
	// the winner committed its two updates, the victim's branch is gone
	if a, b := acct(); a != 1 || b != 1 {
		t.Fatalf("acct = (%d, %d) after the winner %s committed, want (1, 1)", a, b, winner)
	}
	if got := m.preparedCount(); got != 0 {
		t.Fatalf("%d branches of ours in XA RECOVER after the deadlock, want 0", got)
	}
	// the victim's session is failed: it must reopen
	if _, err := c.Write(tctx(t), m.job, victim, sess[victim].Epoch, nil, upd(1)); err == nil {
		t.Fatalf("write on the failed session of %s succeeded; want an error", victim)
	}
	s := mustSession(t, c, m.job, victim, nil)
	if s.Checkpoint != 0 {
		t.Fatalf("victim reopened at checkpoint %d, want 0", s.Checkpoint)
	}
	mustWriteRecs(t, c, m.job, victim, s.Epoch, upd(first[victim]))
	mustWriteRecs(t, c, m.job, victim, s.Epoch, upd(second[victim]))
	mustCheckpoint(t, c, m.job, victim, s.Epoch, 1, twopc.StatusCommitted)
	if a, b := acct(); a != 2 || b != 2 {
		t.Fatalf("acct = (%d, %d) after both committed, want (2, 2)", a, b)
	}
}

// Bad input for the MySQL sink through the real API: an unknown statement, a
// wrong number of arguments, an argument that is not a JSON scalar, a field
// of the Kafka kind, and raw NDJSON the client library would never send.
// Each is a 400 problem; nothing is written, and the session keeps working.
func TestMySQLBadInput(t *testing.T) {
	m := newMDB(t, mysqltest.DSN(t), tableT)
	n := newNode(t, m.sinkYAML("db", 0, insStmts))
	c := n.start()
	s := openJob(t, c, m.job, twopc.ModeAuto, "0")
	arg := func(v string) json.RawMessage { return json.RawMessage(v) }
	for _, tc := range []struct {
		name string
		rec  twopc.Record
		code string
	}{
		{"unknown statement", twopc.Record{Sink: "db", Stmt: "drop_everything", Args: []json.RawMessage{arg(`"k"`), arg(`"v"`)}}, "invalid_request"},
		{"too few args", twopc.Record{Sink: "db", Stmt: "ins", Args: []json.RawMessage{arg(`"k"`)}}, "invalid_request"},
		{"too many args", twopc.Record{Sink: "db", Stmt: "ins", Args: []json.RawMessage{arg(`"k"`), arg(`"v"`), arg(`1`)}}, "invalid_request"},
		{"object arg", twopc.Record{Sink: "db", Stmt: "ins", Args: []json.RawMessage{arg(`"k"`), arg(`{"a":1}`)}}, "invalid_request"},
		{"array arg", twopc.Record{Sink: "db", Stmt: "ins", Args: []json.RawMessage{arg(`["k"]`), arg(`"v"`)}}, "invalid_request"},
		{"kafka field", twopc.Record{Sink: "db", Stmt: "ins", Topic: "t", Args: []json.RawMessage{arg(`"k"`), arg(`"v"`)}}, "invalid_request"},
		{"unknown sink", twopc.Record{Sink: "nope", Stmt: "ins", Args: []json.RawMessage{arg(`"k"`), arg(`"v"`)}}, "unknown_sink"},
	} {
		// a good record first in the same call: the bad one must stop both
		good := insRecords("db", []string{"good-" + tc.name})[0]
		_, err := c.Write(tctx(t), m.job, "0", s.Epoch, nil, []*twopc.Record{good, &tc.rec})
		wantProblem(t, tc.name, err, 400, tc.code)
	}
	_, err := c.WriteNDJSON(tctx(t), m.job, "0", s.Epoch, nil, []byte(`{"sink":"db","stmt":"ins","args":["k","v"],"sql":"DROP TABLE t"}`+"\n"))
	wantProblem(t, "unknown field sql", err, 400, "malformed_body")
	mustWriteRecs(t, c, m.job, "0", s.Epoch, insRecords("db", []string{"ok"}))
	mustCheckpoint(t, c, m.job, "0", s.Epoch, 1, twopc.StatusCommitted)
	m.wantRows([]string{"ok"})
}

// 3c. A poison record in a MySQL-only call (issue 9): 422 record_rejected
// naming its line, the call changes nothing, and the same session goes on
// without it; the checkpoint commits every other record exactly once.
func TestMySQLPoisonRecordIsNamed(t *testing.T) {
	m := newMDB(t, mysqltest.DSN(t), tableT)
	n := newNode(t, m.sinkYAML("db", 0, insStmts))
	c := n.start()
	s := openJob(t, c, m.job, twopc.ModeAuto, "0")
	mustWriteRecs(t, c, m.job, "0", s.Epoch, insRecords("db", values(0, 10)))
	bad := insRecords("db", []string{"v0010", "v0011", "v0003", "v0012"})
	_, err := c.Write(tctx(t), m.job, "0", s.Epoch, nil, bad)
	wantProblem(t, "write with a duplicate key", err, 422, "record_rejected")
	if e, _ := errors.AsType[*client.Error](err); e.Record != 3 || !strings.Contains(e.Detail, "Duplicate entry") {
		t.Fatalf("got record %d (%s), want record 3 and the server's message", e.Record, e.Detail)
	}
	// the app dead-letters record 3 and sends the call again without it
	mustWriteRecs(t, c, m.job, "0", s.Epoch, insRecords("db", []string{"v0010", "v0011", "v0012"}))
	mustCheckpoint(t, c, m.job, "0", s.Epoch, 1, twopc.StatusCommitted)
	m.wantRows(values(0, 13))
}
