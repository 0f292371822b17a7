package mysql

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/internal/mysqltest"
	"github.com/txsink/txsink/twopc"
)

var testStmts = map[string]string{
	"put":  "INSERT INTO kv (k, v) VALUES (?, ?)",
	"bump": "UPDATE kv SET v = v + ? WHERE k = ?",
}

// env is one test's database, with the kv table and a unique job name.
type env struct {
	t   *testing.T
	dsn string
	db  *sql.DB
	job string
}

func newEnv(t *testing.T, dsn string) *env {
	t.Helper()
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.Exec("CREATE TABLE kv (k VARCHAR(64) PRIMARY KEY, v BIGINT NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	e := &env{t: t, dsn: dsn, db: db, job: "j" + hex.EncodeToString(b[:])}
	t.Cleanup(e.assertNoBranches)
	return e
}

func testEnv(t *testing.T) *env { return newEnv(t, mysqltest.DSN(t)) }

// assertNoBranches fails the test if a branch of its job is still prepared
// (and rolls it back so the server stays clean).
func (e *env) assertNoBranches() {
	t := e.t
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := e.db.Conn(ctx)
	if err != nil {
		t.Errorf("assert no branches: %v", err)
		return
	}
	defer conn.Close()
	xs, err := recoverXIDs(ctx, conn)
	if err != nil {
		t.Errorf("assert no branches: %v", err)
		return
	}
	for _, x := range xs {
		if strings.HasPrefix(string(x.gtrid), e.job+"/") {
			t.Errorf("branch %s,%s still in XA RECOVER at the end of the test", x.gtrid, x.bqual)
			lit := xid{gtrid: x.gtrid, bqual: x.bqual}.literal()
			if _, err := conn.ExecContext(ctx, "XA ROLLBACK "+lit); err != nil {
				t.Logf("XA ROLLBACK %s: %v", lit, err)
			}
		}
	}
}

func (e *env) sink(name string, mod ...func(*Config)) *Sink {
	e.t.Helper()
	cfg := DefaultConfig()
	cfg.Name, cfg.DSN, cfg.Statements = name, e.dsn, testStmts
	for _, m := range mod {
		m(&cfg)
	}
	s, err := New(context.Background(), cfg)
	if err != nil {
		e.t.Fatalf("New: %v", err)
	}
	e.t.Cleanup(func() { s.Close() })
	return s
}

func (e *env) id(writer string, epoch, seq uint64, slot int) twopc.BranchID {
	return twopc.BranchID{Job: e.job, Writer: writer, Sink: "db", Epoch: epoch, Seq: seq, Slot: slot}
}

func put(k string, v int) *twopc.Record {
	return &twopc.Record{Sink: "db", Stmt: "put", Args: []json.RawMessage{json.RawMessage(`"` + k + `"`), json.RawMessage(itoa(v))}}
}

func itoa(v int) string { b, _ := json.Marshal(v); return string(b) }

// count is what a plain (autocommit) connection sees.
func (e *env) count(where string) int {
	e.t.Helper()
	var n int
	if err := e.db.QueryRow("SELECT COUNT(*) FROM kv WHERE " + where).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

func (e *env) prepared() map[string]bool {
	e.t.Helper()
	conn, err := e.db.Conn(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close()
	xs, err := recoverXIDs(context.Background(), conn)
	if err != nil {
		e.t.Fatal(err)
	}
	m := map[string]bool{}
	for _, x := range xs {
		if strings.HasPrefix(string(x.gtrid), e.job+"/") {
			m[string(x.gtrid)] = true
		}
	}
	return m
}

// begin opens a branch, writes recs and prepares it.
func prepare(t *testing.T, s *Sink, id twopc.BranchID, recs ...*twopc.Record) (twopc.Branch, twopc.Handle) {
	t.Helper()
	ctx := context.Background()
	b, err := s.Begin(ctx, id)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	if len(recs) > 0 {
		if err := b.Write(ctx, recs); err != nil {
			t.Fatalf("Write: %v", err)
		}
	}
	h, err := b.Prepare(ctx)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	return b, h
}

// killPreparer closes the branch's physical connection, as if its process
// died: the branch stays prepared, detached.
func killPreparer(b twopc.Branch) {
	br := b.(*branch)
	br.mu.Lock()
	defer br.mu.Unlock()
	br.dropConn()
	br.state = stateClosed
	br.s.forget(br)
}

func gtridOf(t *testing.T, h twopc.Handle) string {
	t.Helper()
	var hd handle
	if err := json.Unmarshal(h, &hd); err != nil {
		t.Fatal(err)
	}
	g, _ := hex.DecodeString(hd.Gtrid)
	return string(g)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
