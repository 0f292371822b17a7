package mysql

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/txsink/txsink/internal/mysqltest"
	"github.com/txsink/txsink/twopc"
)

func TestXIDRoundTrip(t *testing.T) {
	long := strings.Repeat("a", 64)
	for _, id := range []twopc.BranchID{
		{Job: "j", Writer: "0", Sink: "db", Epoch: 1, Seq: 2, Slot: 3, After: 4},
		{Job: long, Writer: long, Sink: long, Epoch: ^uint64(0), Seq: ^uint64(0), Slot: 1<<16 - 1, After: 1<<63 - 1},
	} {
		x := newXID(id, ^uint64(0), "0123456789abcdef")
		if len(x.gtrid) > 64 || len(x.bqual) > 64 {
			t.Fatalf("got gtrid %d bytes, bqual %d bytes, want ≤ 64", len(x.gtrid), len(x.bqual))
		}
		got, empty, err := xidOf(id, x.handle())
		if err != nil || empty {
			t.Fatalf("xidOf: %v %v", empty, err)
		}
		if got.epoch != id.Epoch || got.seq != id.Seq || got.slot != id.Slot || got.after != id.After || got.connID != x.connID || got.boot != x.boot {
			t.Fatalf("got %+v, want %+v", got, x)
		}
		other := id
		other.Writer = "other"
		if _, _, err := xidOf(other, x.handle()); !errors.Is(err, twopc.ErrInvalid) {
			t.Fatalf("handle of another branch: got %v, want ErrInvalid", err)
		}
	}
}

func TestNewStatements(t *testing.T) {
	e := testEnv(t)
	ctx := context.Background()
	for _, tc := range []struct{ name, sql, want string }{
		{"typo", "INSRT INTO kv VALUES (?)", `statement "typo"`},
		{"notable", "INSERT INTO nope (a) VALUES (?)", `statement "notable"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Name, cfg.DSN = "db", e.dsn
			cfg.Statements = map[string]string{"put": testStmts["put"], tc.name: tc.sql}
			s, err := New(ctx, cfg)
			if err == nil {
				s.Close()
				t.Fatal("got nil error, want one")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want it to name %s", err, tc.want)
			}
		})
	}
	s := e.sink("db", func(c *Config) { c.Statements["none"] = "DELETE FROM kv" })
	for name, want := range map[string]int{"put": 2, "bump": 2, "none": 0} {
		if got, ok := s.Placeholders(name); !ok || got != want {
			t.Errorf("Placeholders(%q): got %d %v, want %d", name, got, ok, want)
		}
	}
	delete(testStmts, "none")
}

func TestValidate(t *testing.T) {
	e := testEnv(t)
	s := e.sink("db")
	raw := func(ss ...string) []json.RawMessage {
		var out []json.RawMessage
		for _, x := range ss {
			out = append(out, json.RawMessage(x))
		}
		return out
	}
	p := int32(1)
	for _, tc := range []struct {
		name string
		r    twopc.Record
		ok   bool
	}{
		{"ok", twopc.Record{Stmt: "put", Args: raw(`"a"`, `1`)}, true},
		{"ok scalars", twopc.Record{Stmt: "put", Args: raw(`null`, `1.5e3`)}, true},
		{"ok bool", twopc.Record{Stmt: "bump", Args: raw(`true`, `"x"`)}, true},
		{"no stmt", twopc.Record{Args: raw(`"a"`, `1`)}, false},
		{"unknown stmt", twopc.Record{Stmt: "drop_all", Args: raw()}, false},
		{"too few args", twopc.Record{Stmt: "put", Args: raw(`"a"`)}, false},
		{"too many args", twopc.Record{Stmt: "put", Args: raw(`"a"`, `1`, `2`)}, false},
		{"array arg", twopc.Record{Stmt: "put", Args: raw(`"a"`, `[1]`)}, false},
		{"object arg", twopc.Record{Stmt: "put", Args: raw(`{"a":1}`, `1`)}, false},
		{"bad json", twopc.Record{Stmt: "put", Args: raw(`"a`, `1`)}, false},
		{"topic", twopc.Record{Stmt: "put", Args: raw(`"a"`, `1`), Topic: "t"}, false},
		{"key", twopc.Record{Stmt: "put", Args: raw(`"a"`, `1`), Key: json.RawMessage(`"k"`)}, false},
		{"value", twopc.Record{Stmt: "put", Args: raw(`"a"`, `1`), ValueB64: []byte("v")}, false},
		{"headers", twopc.Record{Stmt: "put", Args: raw(`"a"`, `1`), Headers: map[string]string{}}, false},
		{"partition", twopc.Record{Stmt: "put", Args: raw(`"a"`, `1`), Partition: &p}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Validate(&tc.r)
			if tc.ok && err != nil {
				t.Fatalf("got %v, want nil", err)
			}
			if !tc.ok && !errors.Is(err, twopc.ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
		})
	}
	err := s.Validate(&twopc.Record{Stmt: "drop_all"})
	if err == nil || !strings.Contains(err.Error(), `"drop_all"`) {
		t.Fatalf("got %v, want it to name the statement", err)
	}
	if got := e.count("1"); got != 0 {
		t.Fatalf("got %d rows after Validate, want 0", got)
	}
}

func TestCommitVisibility(t *testing.T) {
	e := testEnv(t)
	s := e.sink("db")
	ctx := ctxT(t, 30*time.Second)
	b, h := prepare(t, s, e.id("0", 1, 1, 0), put("a", 1), put("b", 2))
	if got := e.count("1"); got != 0 {
		t.Fatalf("got %d rows visible while prepared, want 0", got)
	}
	if !e.prepared()[gtridOf(t, h)] {
		t.Fatalf("got branch not in XA RECOVER after Prepare, want it there")
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.count("1"); got != 2 {
		t.Fatalf("got %d rows after commit, want 2", got)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatalf("second Commit: got %v, want nil", err)
	}
	if err := s.Resolve(ctx, e.id("0", 1, 1, 0), h, true); err != nil {
		t.Fatalf("Resolve after Commit: got %v, want nil", err)
	}

	// An empty branch prepares and commits without touching the database.
	b, h = prepare(t, s, e.id("0", 1, 2, 1))
	if string(h) != string(emptyHandle) {
		t.Fatalf("got handle %s, want %s", h, emptyHandle)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Resolve(ctx, e.id("0", 1, 2, 1), h, true); err != nil {
		t.Fatal(err)
	}

	// Abort of an open and of a prepared branch.
	b1, err := s.Begin(ctx, e.id("0", 1, 3, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := b1.Write(ctx, []*twopc.Record{put("c", 3)}); err != nil {
		t.Fatal(err)
	}
	if err := b1.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	b2, _ := prepare(t, s, e.id("0", 1, 4, 1), put("d", 4))
	if err := b2.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b2.Abort(ctx); err != nil {
		t.Fatalf("second Abort: got %v, want nil", err)
	}
	if got := e.count("k IN ('c','d')"); got != 0 {
		t.Fatalf("got %d aborted rows, want 0", got)
	}
}

func TestResolveFromAnotherProcess(t *testing.T) {
	e := testEnv(t)
	s1 := e.sink("db")
	ctx := ctxT(t, 60*time.Second)
	idC, idA := e.id("0", 1, 1, 0), e.id("0", 1, 2, 1)
	bc, hc := prepare(t, s1, idC, put("c", 1))
	ba, ha := prepare(t, s1, idA, put("a", 1))

	// While the preparer is alive, another process must wait, not finish.
	s2 := e.sink("db")
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err := s2.Resolve(short, idC, hc, true)
	cancel()
	if !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("Resolve with live preparer: got %v, want ErrSinkFailure", err)
	}
	if !e.prepared()[gtridOf(t, hc)] {
		t.Fatal("branch left XA RECOVER while its preparer was alive")
	}

	killPreparer(bc)
	killPreparer(ba)
	for i := 0; i < 3; i++ { // repeats are harmless
		if err := s2.Resolve(ctx, idC, hc, true); err != nil {
			t.Fatalf("Resolve(commit) #%d: %v", i, err)
		}
		if err := s2.Resolve(ctx, idA, ha, false); err != nil {
			t.Fatalf("Resolve(abort) #%d: %v", i, err)
		}
	}
	if got := e.count("k = 'c'"); got != 1 {
		t.Fatalf("got %d committed rows, want 1", got)
	}
	if got := e.count("k = 'a'"); got != 0 {
		t.Fatalf("got %d aborted rows, want 0", got)
	}
	if err := s1.Resolve(ctx, idC, hc, true); err != nil {
		t.Fatalf("Resolve from the first sink: %v", err)
	}
	// The other way round is not idempotence: it is reported.
	if err := s2.Resolve(ctx, idA, ha, true); !errors.Is(err, twopc.ErrDataLoss) {
		t.Fatalf("commit of an aborted branch: got %v, want ErrDataLoss", err)
	}
	if err := s2.Resolve(ctx, idC, hc, false); err == nil || errors.Is(err, twopc.ErrDataLoss) {
		t.Fatalf("abort of a committed branch: got %v, want a sink failure", err)
	}
}

// TestResolveAfterPreparerFinished: the preparing process ended the branch
// itself and kept its connection (a node that committed a branch but could
// not journal that, then lost the writer). Another process must finish or
// report it from the marker at once, not wait for that connection to leave
// the server, which may never happen.
func TestResolveAfterPreparerFinished(t *testing.T) {
	e := testEnv(t)
	s1 := e.sink("db")
	ctx := ctxT(t, 60*time.Second)
	idC, idA := e.id("0", 1, 1, 0), e.id("0", 1, 2, 1)
	bc, hc := prepare(t, s1, idC, put("c", 1))
	ba, ha := prepare(t, s1, idA, put("a", 1))
	if err := bc.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ba.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	xc, _, err := xidOf(idC, hc)
	if err != nil {
		t.Fatal(err)
	}
	var alive int
	if err := e.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?", xc.connID).Scan(&alive); err != nil {
		t.Fatal(err)
	}
	if alive != 1 {
		t.Fatalf("the preparer's connection %d is not connected any more (%d): the test would not test the wait", xc.connID, alive)
	}

	s2 := e.sink("db")
	short, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	t0 := time.Now()
	if err := s2.Resolve(short, idC, hc, true); err != nil {
		t.Fatalf("Resolve(commit) of a branch its preparer committed: %v (after %v)", err, time.Since(t0))
	}
	if err := s2.Resolve(short, idA, ha, false); err != nil {
		t.Fatalf("Resolve(abort) of a branch its preparer aborted: %v", err)
	}
	if err := s2.Resolve(short, idA, ha, true); !errors.Is(err, twopc.ErrDataLoss) {
		t.Fatalf("Resolve(commit) of a branch its preparer aborted: got %v, want ErrDataLoss", err)
	}
	if got := e.count("k = 'c'"); got != 1 {
		t.Fatalf("got %d committed rows, want 1", got)
	}
}

func TestFence(t *testing.T) {
	e := testEnv(t)
	s1 := e.sink("db")
	ctx := ctxT(t, 60*time.Second)
	keep, drop, other := e.id("0", 1, 1, 0), e.id("0", 1, 2, 1), e.id("1", 1, 1, 0)
	bk, hk := prepare(t, s1, keep, put("keep", 1))
	bd, hd := prepare(t, s1, drop, put("drop", 1))
	bo, ho := prepare(t, s1, other, put("other", 1))
	for _, b := range []twopc.Branch{bk, bd, bo} {
		killPreparer(b)
	}
	// An open branch of the old session in this process is fenced too.
	open, err := s1.Begin(ctx, e.id("0", 1, 3, 2))
	if err != nil {
		t.Fatal(err)
	}
	if err := open.Write(ctx, []*twopc.Record{put("open", 1)}); err != nil {
		t.Fatal(err)
	}

	s2 := e.sink("db")
	if err := s2.Fence(ctx, e.job, "0", []twopc.BranchID{keep}); err != nil {
		t.Fatal(err)
	}
	if err := s1.Fence(ctx, e.job, "0", []twopc.BranchID{keep}); err != nil {
		t.Fatal(err)
	}
	p := e.prepared()
	if !p[gtridOf(t, hk)] || p[gtridOf(t, hd)] || !p[gtridOf(t, ho)] {
		t.Fatalf("after Fence got prepared %v, want keep and other only", p)
	}
	if _, err := open.Prepare(ctx); !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("Prepare of a fenced open branch: got %v, want ErrSinkFailure", err)
	}
	if err := s2.Resolve(ctx, keep, hk, true); err != nil {
		t.Fatal(err)
	}
	if err := s2.Resolve(ctx, other, ho, false); err != nil {
		t.Fatal(err)
	}
	if err := s2.Resolve(ctx, drop, hd, false); err != nil {
		t.Fatalf("Resolve(abort) of a fenced branch: %v", err)
	}
	if got := e.count("1"); got != 1 {
		t.Fatalf("got %d rows, want 1 (keep)", got)
	}
	// A later Fence drops the marker rows of finished branches.
	if err := s2.Fence(ctx, e.job, "0", nil); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := e.db.QueryRow("SELECT COUNT(*) FROM txsink_xa_marker WHERE job = ? AND writer = '0'", e.job).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("got %d marker rows after Fence, want 0", n)
	}
}

func TestKill9Server(t *testing.T) {
	srv := mysqltest.PrivateServer(t)
	e := newEnv(t, srv.Database(t))
	s1 := e.sink("db")
	ctx := ctxT(t, 90*time.Second)
	var ids []twopc.BranchID
	var hs []twopc.Handle
	for i := 0; i < 3; i++ {
		id := e.id("0", 1, uint64(i+1), i)
		_, h := prepare(t, s1, id, put(fmt.Sprint("k", i), i), put(fmt.Sprint("l", i), i))
		ids, hs = append(ids, id), append(hs, h)
	}
	// One open branch too: the crash must roll it back.
	open, err := s1.Begin(ctx, e.id("0", 1, 9, 3))
	if err != nil {
		t.Fatal(err)
	}
	if err := open.Write(ctx, []*twopc.Record{put("open", 1)}); err != nil {
		t.Fatal(err)
	}
	srv.Kill9()
	srv.Restart(t)
	s1.Close()

	if got := len(e.prepared()); got != 3 {
		t.Fatalf("got %d prepared branches after restart, want 3", got)
	}
	s2 := e.sink("db")
	for round := 0; round < 2; round++ {
		for i, id := range ids {
			if err := s2.Resolve(ctx, id, hs[i], true); err != nil {
				t.Fatalf("Resolve %v: %v", id, err)
			}
		}
	}
	if got := e.count("1"); got != 6 {
		t.Fatalf("got %d rows, want 6", got)
	}
	if err := s2.Fence(ctx, e.job, "0", nil); err != nil {
		t.Fatal(err)
	}
}

func TestDeadlock(t *testing.T) {
	e := testEnv(t)
	if _, err := e.db.Exec("INSERT INTO kv VALUES ('x', 0), ('y', 0)"); err != nil {
		t.Fatal(err)
	}
	s := e.sink("db")
	ctx := ctxT(t, 60*time.Second)
	bump := func(k string) []*twopc.Record {
		return []*twopc.Record{{Sink: "db", Stmt: "bump", Args: []json.RawMessage{json.RawMessage("1"), json.RawMessage(`"` + k + `"`)}}}
	}
	a, _ := s.Begin(ctx, e.id("0", 1, 1, 0))
	b, _ := s.Begin(ctx, e.id("1", 1, 1, 0))
	if err := a.Write(ctx, bump("x")); err != nil {
		t.Fatal(err)
	}
	if err := b.Write(ctx, bump("y")); err != nil {
		t.Fatal(err)
	}
	errA := make(chan error, 1)
	go func() { errA <- a.Write(ctx, bump("y")) }()
	// Wait until a's UPDATE runs (it waits for b's lock). Not INNODB_TRX:
	// MariaDB refreshes that cache only after 100 ms without readers.
	aID := a.(*branch).x.connID
	waitFor(t, func() bool {
		var n int
		err := e.db.QueryRow("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ? AND INFO LIKE 'UPDATE%'", aID).Scan(&n)
		return err == nil && n > 0
	})
	errB := b.Write(ctx, bump("x"))
	ea := <-errA
	if (ea == nil) == (errB == nil) {
		t.Fatalf("got errors %v and %v, want exactly one deadlock", ea, errB)
	}
	winner, loser, err := a, b, errB
	if ea != nil {
		winner, loser, err = b, a, ea
	}
	if !errors.Is(err, twopc.ErrSinkFailure) || !strings.Contains(err.Error(), "deadlock") {
		t.Fatalf("got %v, want ErrSinkFailure naming the deadlock", err)
	}
	if _, err := loser.Prepare(ctx); !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("Prepare after deadlock: got %v, want ErrSinkFailure", err)
	}
	if err := loser.Abort(ctx); err != nil {
		t.Fatalf("Abort after deadlock: %v", err)
	}
	if _, err := winner.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if err := winner.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.count("v = 1"); got != 2 {
		t.Fatalf("got %d rows bumped once, want 2 (the winner's)", got)
	}
}

func TestLockWaitTimeoutAndLostConnection(t *testing.T) {
	e := testEnv(t)
	s := e.sink("db", func(c *Config) {
		mc, err := gomysql.ParseDSN(c.DSN)
		if err != nil {
			t.Fatal(err)
		}
		mc.Params = map[string]string{"innodb_lock_wait_timeout": "1"}
		c.DSN = mc.FormatDSN()
	})
	ctx := ctxT(t, 60*time.Second)
	a, _ := s.Begin(ctx, e.id("0", 1, 1, 0))
	b, _ := s.Begin(ctx, e.id("1", 1, 1, 0))
	if err := a.Write(ctx, []*twopc.Record{put("x", 1)}); err != nil {
		t.Fatal(err)
	}
	err := b.Write(ctx, []*twopc.Record{put("x", 2)})
	if !errors.Is(err, twopc.ErrSinkFailure) || !strings.Contains(err.Error(), "lock wait timeout") {
		t.Fatalf("got %v, want ErrSinkFailure naming the lock wait timeout", err)
	}
	if err := b.Abort(ctx); err != nil {
		t.Fatal(err)
	}

	// The branch's connection is killed while open, then while prepared.
	killConn := func(br twopc.Branch) {
		if _, err := e.db.Exec(fmt.Sprintf("KILL CONNECTION %d", br.(*branch).x.connID)); err != nil {
			t.Fatal(err)
		}
	}
	killConn(a)
	err = a.Write(ctx, []*twopc.Record{put("y", 1)})
	if !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("write on a killed connection: got %v, want ErrSinkFailure", err)
	}
	t.Logf("write on a killed connection: %v", err)
	if err := a.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	c, h := prepare(t, s, e.id("0", 1, 2, 1), put("z", 1))
	killConn(c)
	if err := c.Abort(ctx); err != nil {
		t.Fatalf("Abort of a prepared branch whose connection died: %v", err)
	}
	if e.prepared()[gtridOf(t, h)] {
		t.Fatal("branch still prepared after Abort")
	}
	if got := e.count("1"); got != 0 {
		t.Fatalf("got %d rows, want 0", got)
	}
}

func TestMaxInflight(t *testing.T) {
	e := testEnv(t)
	s := e.sink("db", func(c *Config) { c.MaxInflight = 4 })
	ctx := ctxT(t, 60*time.Second)
	if _, err := s.Begin(ctx, e.id("0", 1, 9, 4)); !errors.Is(err, twopc.ErrInvalid) {
		t.Fatalf("slot 4 of MaxInflight 4: got %v, want ErrInvalid", err)
	}
	var wg sync.WaitGroup
	bs := make([]twopc.Branch, 4)
	errs := make([]error, 4)
	for i := range bs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := s.Begin(ctx, e.id("0", 1, uint64(i+1), i))
			if err == nil {
				err = b.Write(ctx, []*twopc.Record{put(fmt.Sprint("k", i), i)})
			}
			if err == nil {
				_, err = b.Prepare(ctx)
			}
			bs[i], errs[i] = b, err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("branch %d: %v", i, err)
		}
	}
	if got := len(e.prepared()); got != 4 {
		t.Fatalf("got %d prepared branches, want 4", got)
	}
	for _, b := range bs {
		if err := b.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.count("1"); got != 4 {
		t.Fatalf("got %d rows, want 4", got)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestWriteBatches: one Write of more records than one round trip carries,
// mixing statements (one ending in ';' and a comment, one with a quote in an
// argument), lands every row exactly as sent.
func TestWriteBatches(t *testing.T) {
	e := testEnv(t)
	s := e.sink("db", func(c *Config) {
		c.Statements = map[string]string{
			"put":  "INSERT INTO kv (k, v) VALUES (?, ?); -- trailing comment",
			"bump": "UPDATE kv SET v = v + ? WHERE k = ?",
		}
	})
	var recs []*twopc.Record
	n := maxBatchStmts*2 + 7
	for i := range n {
		recs = append(recs, put(fmt.Sprintf("k%d", i), i))
	}
	recs = append(recs, &twopc.Record{Sink: "db", Stmt: "bump",
		Args: []json.RawMessage{json.RawMessage(`1000000`), json.RawMessage(`"k0"`)}})
	quotedKey, _ := json.Marshal(`it's;"quoted"`)
	recs = append(recs, &twopc.Record{Sink: "db", Stmt: "put", Args: []json.RawMessage{quotedKey, json.RawMessage(`-1`)}})
	for _, r := range recs {
		if err := s.Validate(r); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := prepare(t, s, e.id("0", 1, 1, 0), recs...)
	if err := b.Commit(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := e.count("1"); got != n+1 {
		t.Fatalf("got %d rows, want %d", got, n+1)
	}
	var v int
	if err := e.db.QueryRow("SELECT v FROM kv WHERE k = 'k0'").Scan(&v); err != nil || v != 1000000 {
		t.Fatalf("k0: got %d %v, want 1000000 (the bump ran after its insert)", v, err)
	}
	if got := e.count(`k = 'it''s;"quoted"'`); got != 1 {
		t.Fatalf("quoted key: got %d rows, want 1", got)
	}
}

func TestTrimSQL(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"INSERT INTO t VALUES (?)", "INSERT INTO t VALUES (?)"},
		{"INSERT INTO t VALUES (?);  \n", "INSERT INTO t VALUES (?)"},
		{"INSERT INTO t VALUES (?); -- note", "INSERT INTO t VALUES (?)"},
		{"INSERT INTO t VALUES (?) # note\n;", "INSERT INTO t VALUES (?)"},
		{"INSERT INTO t VALUES (?) /* a; b */ ;", "INSERT INTO t VALUES (?)"},
		{"INSERT INTO t VALUES ('a;-- b')", "INSERT INTO t VALUES ('a;-- b')"},
		{`INSERT INTO t VALUES ('it''s', "q\"; #", ?)`, `INSERT INTO t VALUES ('it''s', "q\"; #", ?)`},
		{"UPDATE `we;ird` SET v = v - 1 -- x", "UPDATE `we;ird` SET v = v - 1"},
	} {
		if got := trimSQL(tc.in); got != tc.want {
			t.Errorf("trimSQL(%q): got %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestValuesTuple(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"INSERT INTO t(k, v) VALUES (?, ?)", "(?, ?)", true},
		{"insert into t values(?,now(),?)", "(?,now(),?)", true},
		{"REPLACE INTO t (a) VALUE (?)", "(?)", true},
		// two rows, one literal: repeating the statement repeats the literal
		// row, a merged statement would not, so it is not merged
		{"INSERT INTO t(k) VALUES ('a)?'), (?)", "", false},
		{"INSERT INTO t(k, v) VALUES ('?', ?)", "('?', ?)", true},
		{"INSERT INTO t(k, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = v + 1", "", false},
		{"INSERT INTO t(k) SELECT ? FROM dual WHERE x IN (1)", "", false},
		{"UPDATE t SET v = (?)", "", false},
		{"INSERT INTO t(k, v) VALUES (?, (SELECT MAX(v) FROM u WHERE w = ?))", "(?, (SELECT MAX(v) FROM u WHERE w = ?))", true},
	} {
		got, ok := valuesTuple(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("valuesTuple(%q): got %q %v, want %q %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}
