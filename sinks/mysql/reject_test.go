package mysql

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/txsink/txsink/twopc"
)

func rec(stmt string, args ...string) *twopc.Record {
	r := &twopc.Record{Sink: "db", Stmt: stmt}
	for _, a := range args {
		r.Args = append(r.Args, json.RawMessage(a))
	}
	return r
}

func row(id int, args ...string) *twopc.Record {
	return rec("ins", append([]string{itoa(id)}, args...)...)
}

// Records the server refuses for good are named (line = index in the call,
// 1-based), the call is undone and the branch stays usable: the same branch
// then takes the call without the poison record and commits exactly it.
func TestPoisonRecords(t *testing.T) {
	many := func(n, dupAt, dupOf int) []*twopc.Record {
		var out []*twopc.Record
		for i := range n {
			id := 100 + i
			if i+1 == dupAt {
				id = 100 + dupOf - 1
			}
			out = append(out, row(id, `"x"`, `1`, `null`))
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		before []*twopc.Record // an earlier, accepted write of the branch
		call   []*twopc.Record
		line   int
		errNo  uint16
	}{
		{"duplicate key in the call", nil, []*twopc.Record{row(1, `"a"`, `1`, `null`), row(2, `"b"`, `1`, `null`), row(1, `"c"`, `1`, `null`)}, 3, 1062},
		{"duplicate key of an earlier write", []*twopc.Record{row(5, `"a"`, `1`, `null`)}, []*twopc.Record{row(6, `"b"`, `1`, `null`), row(5, `"c"`, `1`, `null`)}, 2, 1062},
		{"out of range", nil, []*twopc.Record{row(1, `"a"`, `1`, `null`), row(2, `"b"`, `300`, `null`)}, 2, 1264},
		{"incorrect value", nil, []*twopc.Record{row(1, `"a"`, `"abc"`, `null`)}, 1, 1366},
		{"too long", nil, []*twopc.Record{row(1, `"a"`, `1`, `null`), row(2, `"toolong"`, `1`, `null`), row(3, `"c"`, `1`, `null`)}, 2, 1406},
		{"null", nil, []*twopc.Record{row(1, `null`, `1`, `null`)}, 1, 1048},
		{"foreign key", nil, []*twopc.Record{row(1, `"a"`, `1`, `1`), row(2, `"b"`, `1`, `99`)}, 2, 1452},
		{"in a later chunk, duplicate of the first", []*twopc.Record{row(1, `"a"`, `1`, `null`)}, many(maxBatchStmts+200, maxBatchStmts+150, 3), maxBatchStmts + 150, 1062},
		{"statement joined after another", nil, []*twopc.Record{rec("bump", `1`, `"k"`), row(1, `"a"`, `1`, `null`), rec("bump", `1`, `"k"`), row(1, `"b"`, `1`, `null`)}, 4, 1062},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := testEnv(t)
			for _, q := range []string{
				"CREATE TABLE parent (id INT PRIMARY KEY)",
				"INSERT INTO parent VALUES (1)",
				"CREATE TABLE poison (id INT PRIMARY KEY, name VARCHAR(5) NOT NULL, n TINYINT, parent INT NULL, FOREIGN KEY (parent) REFERENCES parent(id))",
			} {
				if _, err := e.db.Exec(q); err != nil {
					t.Fatal(err)
				}
			}
			s := e.sink("db", func(c *Config) {
				c.Statements = map[string]string{
					"ins":  "INSERT INTO poison (id, name, n, parent) VALUES (?, ?, ?, ?)",
					"bump": "UPDATE kv SET v = v + ? WHERE k = ?",
				}
			})
			for _, r := range append(tc.before, tc.call...) {
				if err := s.Validate(r); err != nil {
					t.Fatalf("Validate: %v", err)
				}
			}
			ctx := ctxT(t, 60*time.Second)
			b, err := s.Begin(ctx, e.id("0", 1, 1, 0))
			if err != nil {
				t.Fatal(err)
			}
			if len(tc.before) > 0 {
				if err := b.Write(ctx, tc.before); err != nil {
					t.Fatalf("earlier write: %v", err)
				}
			}
			err = b.Write(ctx, tc.call)
			re, ok := errors.AsType[*twopc.RecordError](err)
			if !ok || !errors.Is(err, twopc.ErrRecordRejected) || re.Line != tc.line || errNumber(err) != tc.errNo {
				t.Fatalf("Write: got %v, want record %d rejected with error %d", err, tc.line, tc.errNo)
			}
			if errors.Is(err, twopc.ErrSinkFailure) {
				t.Fatalf("Write: got %v, want the branch restored (no ErrSinkFailure)", err)
			}
			// Skip the poison record and go on in the same branch.
			rest := append(append([]*twopc.Record{}, tc.call[:tc.line-1]...), tc.call[tc.line:]...)
			if err := b.Write(ctx, rest); err != nil {
				t.Fatalf("Write without the poison record: %v", err)
			}
			if _, err := b.Prepare(ctx); err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			if err := b.Commit(ctx); err != nil {
				t.Fatalf("Commit: %v", err)
			}
			want := 0
			for _, r := range append(tc.before, rest...) {
				if r.Stmt == "ins" {
					want++
				}
			}
			var got int
			if err := e.db.QueryRow("SELECT COUNT(*) FROM poison").Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("committed %d rows, want %d (the earlier write and the call without the poison record, once)", got, want)
			}
		})
	}
}

// A transient error is not a rejection: the branch fails as before.
func TestRejectedIsOnlyDeterministic(t *testing.T) {
	for n, want := range map[uint16]bool{1062: true, 1406: true, 1452: true, 1213: false, 1205: false, 2006: false, 0: false} {
		err := error(fmt.Errorf("x"))
		if n != 0 {
			err = fmt.Errorf("wrapped: %w", &gomysql.MySQLError{Number: n})
		}
		if got := rejected(err); got != want {
			t.Errorf("rejected(%d): got %v, want %v", n, got, want)
		}
	}
}
