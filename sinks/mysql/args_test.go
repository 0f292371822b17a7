package mysql

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/txsink/txsink/internal/mysqltest"
	"github.com/txsink/txsink/twopc"
)

// refArgValue is the conversion the sink did with encoding/json before it
// had a fast path: the reference scalarOf must agree with.
func refArgValue(a json.RawMessage) (any, error) {
	t := strings.TrimSpace(string(a))
	if t == "" {
		return nil, errors.New("empty value")
	}
	switch c := t[0]; {
	case c == '"':
		var s string
		if err := json.Unmarshal([]byte(t), &s); err != nil {
			return nil, err
		}
		return s, nil
	case t == "null":
		return nil, nil
	case t == "true":
		return true, nil
	case t == "false":
		return false, nil
	case c == '-' || (c >= '0' && c <= '9'):
		var num json.Number
		if err := json.Unmarshal([]byte(t), &num); err != nil {
			return nil, err
		}
		if i, err := strconv.ParseInt(t, 10, 64); err == nil {
			return i, nil
		}
		if u, err := strconv.ParseUint(t, 10, 64); err == nil {
			return u, nil
		}
		return t, nil
	case c == '[' || c == '{':
		return nil, errors.New("arrays and objects are not allowed, only JSON scalars")
	default:
		return nil, fmt.Errorf("invalid JSON %q", t)
	}
}

var scalarSeeds = []string{
	`"plain"`, `""`, `"it's"`, `"a\"b"`, `"back\\slash"`, `"nl\n\r\t"`, `"\u0000nul"`, `"\u001a"`, `"é ü 日本"`,
	"\"bad \xff utf8\"", "\"ctl \x01\"", `"unterminated`, `"a"b"`, `"\ud800"`, `"\/"`,
	`0`, `-0`, `1`, `-1`, `007`, `+1`, `1.`, `.5`, `1.5`, `-1.5e3`, `1E+2`, `1e`, `9223372036854775807`,
	`9223372036854775808`, `-9223372036854775808`, `-9223372036854775809`, `18446744073709551615`,
	`18446744073709551616`, `123456789012345678901234567890.123`, `1 2`, `0x10`,
	`null`, `true`, `false`, `nul`, `True`, `[1]`, `{}`, ``, ` `, ` "x" `, "\t1\n", "\"x\"\u00a0", "1\v",
}

func TestScalarOfMatchesEncodingJSON(t *testing.T) {
	for _, a := range scalarSeeds {
		checkScalar(t, a)
	}
}

func FuzzScalarOf(f *testing.F) {
	for _, a := range scalarSeeds {
		f.Add(a)
	}
	f.Fuzz(func(t *testing.T, a string) { checkScalar(t, a) })
}

func checkScalar(t *testing.T, a string) {
	t.Helper()
	want, wantErr := refArgValue(json.RawMessage(a))
	v, err := scalarOf(json.RawMessage(a))
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("scalarOf(%q): error %v, want error %v", a, err, wantErr)
	}
	if err != nil {
		return
	}
	if got := v.value(); !reflect.DeepEqual(got, want) {
		t.Fatalf("scalarOf(%q).value(): got %#v, want %#v", a, got, want)
	}
	// Write's one-pass path for plain strings renders what appendLiteral does.
	for _, nb := range []bool{false, true} {
		lit := appendLiteral([]byte("x"), v, nb)
		got, ok := appendPlainLiteral([]byte("x"), trimJSONSpace(json.RawMessage(a)), nb)
		switch _, plain := plainString(trimJSONSpace(json.RawMessage(a))); {
		case ok != plain:
			t.Fatalf("appendPlainLiteral(%q): ok %v, but plainString says %v", a, ok, plain)
		case ok && string(got) != string(lit):
			t.Fatalf("appendPlainLiteral(%q, %v): got %q, want %q", a, nb, got, lit)
		case !ok && string(got) != "x":
			t.Fatalf("appendPlainLiteral(%q, %v): not plain, but the buffer became %q", a, nb, got)
		}
	}
}

func TestSplitPlaceholders(t *testing.T) {
	for _, tc := range []struct {
		q           string
		want        []string
		noBackslash []string // if different
	}{
		{"INSERT INTO t VALUES (?, ?)", []string{"INSERT INTO t VALUES (", ", ", ")"}, nil},
		{"SELECT '?', \"?\", `?`, ?", []string{"SELECT '?', \"?\", `?`, ", ""}, nil},
		{"SELECT ? -- ?\n, ? # ?\n, /* ? */ ?", []string{"SELECT ", " -- ?\n, ", " # ?\n, /* ? */ ", ""}, nil},
		{"SELECT 1--?", []string{"SELECT 1--", ""}, nil},
		{`SELECT 'a\'?', ?`, []string{`SELECT 'a\'?', `, ""}, []string{`SELECT 'a\'`, `', ?`}},
	} {
		got := splitPlaceholders(tc.q, false)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("splitPlaceholders(%q): got %q, want %q", tc.q, got, tc.want)
		}
		want := tc.noBackslash
		if want == nil {
			want = tc.want
		}
		if got := splitPlaceholders(tc.q, true); !reflect.DeepEqual(got, want) {
			t.Errorf("splitPlaceholders(%q, noBackslash): got %q, want %q", tc.q, got, want)
		}
	}
}

// Every kind of argument lands in the database exactly as encoding/json
// decodes it, whether the sink renders the literals (for either sql_mode) or
// leaves them to the driver.
func TestLiteralsRoundTrip(t *testing.T) {
	strs := []string{`"plain"`, `""`, `"it's"`, `"a\"b"`, `"back\\slash\\"`, `"\\'"`, `"nl\n\r\t"`, `"\u0000nul"`,
		`"\u001a"`, `"é ü 日本"`, `"'); DROP TABLE lit; --"`, `"?"`, `"\\"`}
	for _, tc := range []struct{ name, mode, stmt string }{
		{"rendered", "", "INSERT INTO lit (id, s, n, u, b) VALUES (?, ?, ?, ?, ?)"},
		{"rendered NO_BACKSLASH_ESCAPES", "NO_BACKSLASH_ESCAPES", "INSERT INTO lit (id, s, n, u, b) VALUES (?, ?, ?, ?, ?)"},
		{"driver interpolates", "", "INSERT INTO lit (id, s, n, u, b) VALUES (?, ?, ?, ?, ?) -- mentions sql_mode"},
		{"driver interpolates NO_BACKSLASH_ESCAPES", "NO_BACKSLASH_ESCAPES", "INSERT INTO lit (id, s, n, u, b) VALUES (?, ?, ?, ?, ?) -- sql_mode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, dsnWith(t, func(c *gomysql.Config) {
				if tc.mode != "" {
					c.Params = map[string]string{"sql_mode": "CONCAT(@@sql_mode, '," + tc.mode + "')"}
				}
			}))
			if _, err := e.db.Exec(`CREATE TABLE lit (id INT PRIMARY KEY, s VARCHAR(100) CHARACTER SET utf8mb4 NULL,
				n DECIMAL(40,10) NULL, u BIGINT UNSIGNED NULL, b BOOL NULL)`); err != nil {
				t.Fatal(err)
			}
			s := e.sink("db", func(c *Config) { c.Statements = map[string]string{"ins": tc.stmt} })
			if want := strings.Contains(tc.stmt, "sql_mode"); s.driverArgs != want {
				t.Fatalf("driverArgs: got %v, want %v", s.driverArgs, want)
			}
			var recs []*twopc.Record
			for i, a := range strs {
				recs = append(recs, rec("ins", itoa(i), a, `-1.5e3`, `18446744073709551615`, `true`))
			}
			recs = append(recs, rec("ins", itoa(len(strs)), `null`, `123456789012345678901234567890.1234567891`, `0`, `false`))
			b, _ := prepare(t, s, e.id("0", 1, 1, 0), recs...)
			if err := b.Commit(ctxT(t, 30*time.Second)); err != nil {
				t.Fatal(err)
			}
			rows, err := e.db.Query("SELECT id, s, CAST(n AS CHAR), u, b FROM lit ORDER BY id")
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			got := 0
			for rows.Next() {
				var id int
				var s, n sql.NullString
				var u uint64
				var bo bool
				if err := rows.Scan(&id, &s, &n, &u, &bo); err != nil {
					t.Fatal(err)
				}
				got++
				if id == len(strs) {
					if s.Valid || n.String != "123456789012345678901234567890.1234567891" || u != 0 || bo {
						t.Errorf("row %d: got %v %q %d %v, want NULL, the exact decimal, 0, false", id, s, n.String, u, bo)
					}
					continue
				}
				var want string
				if err := json.Unmarshal([]byte(strs[id]), &want); err != nil {
					t.Fatal(err)
				}
				if !s.Valid || s.String != want || n.String != "-1500.0000000000" || u != 18446744073709551615 || !bo {
					t.Errorf("row %d: got %q %q %d %v, want %q -1500.0000000000 18446744073709551615 true", id, s.String, n.String, u, bo, want)
				}
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			if got != len(strs)+1 {
				t.Fatalf("got %d rows, want %d", got, len(strs)+1)
			}
		})
	}
}

// With a small max_allowed_packet (here the driver's, from the DSN) a call
// goes out in several chunks that each fit, and a record that cannot fit
// alone is rejected by line, its call undone, the branch still usable.
func TestPacketLimit(t *testing.T) {
	e := newEnv(t, dsnWith(t, func(c *gomysql.Config) { c.MaxAllowedPacket = 65536 }))
	if _, err := e.db.Exec("CREATE TABLE big (id INT PRIMARY KEY, v TEXT NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	s := e.sink("db", func(c *Config) {
		c.Statements = map[string]string{"ins": "INSERT INTO big (id, v) VALUES (?, ?)"}
	})
	ctx := ctxT(t, 60*time.Second)
	val := `"` + strings.Repeat("x", 200) + `"`
	var recs []*twopc.Record
	for i := range 1500 { // ~320 KB: five chunks or more
		recs = append(recs, rec("ins", itoa(i), val))
	}
	b, err := s.Begin(ctx, e.id("0", 1, 1, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Write(ctx, recs); err != nil {
		t.Fatalf("Write of 1,500 records with a 64 KiB packet limit: %v", err)
	}
	huge := rec("ins", itoa(5000), `"`+strings.Repeat("y", 70000)+`"`)
	call := []*twopc.Record{rec("ins", itoa(4000), val), huge, rec("ins", itoa(4001), val)}
	for i := range 400 { // the huge record is not in the call's first chunk
		call = append([]*twopc.Record{rec("ins", itoa(3000+i), val)}, call...)
	}
	err = b.Write(ctx, call)
	var re *twopc.RecordError
	if !errors.As(err, &re) || !errors.Is(err, twopc.ErrRecordRejected) || errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("Write with a record larger than a packet: got %v, want a record_rejected RecordError", err)
	}
	if re.Line != 402 {
		t.Fatalf("rejected line: got %d, want 402", re.Line)
	}
	call = append(call[:401], call[402:]...)
	if err := b.Write(ctx, call); err != nil {
		t.Fatalf("Write without the huge record: %v", err)
	}
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var n, small int
	if err := e.db.QueryRow("SELECT COUNT(*), SUM(LENGTH(v) = 200) FROM big").Scan(&n, &small); err != nil {
		t.Fatal(err)
	}
	if want := 1500 + 402; n != want || small != want {
		t.Fatalf("got %d rows (%d of 200 bytes), want %d", n, small, want)
	}
}

// A statement that reads LAST_INSERT_ID() sees what single-row INSERTs one
// after another leave, so the sink does not merge INSERTs into one.
func TestNoMergeWhenLastInsertIDIsRead(t *testing.T) {
	e := testEnv(t)
	for _, q := range []string{
		"CREATE TABLE parent (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(10) NOT NULL)",
		"CREATE TABLE child (parent_id INT NOT NULL, name VARCHAR(10) NOT NULL)",
	} {
		if _, err := e.db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	s := e.sink("db", func(c *Config) {
		c.Statements = map[string]string{
			"parent": "INSERT INTO parent (name) VALUES (?)",
			"child":  "INSERT INTO child (parent_id, name) VALUES (LAST_INSERT_ID(), ?)",
		}
	})
	if s.merge {
		t.Fatal("merge is on for a sink that reads LAST_INSERT_ID()")
	}
	b, _ := prepare(t, s, e.id("0", 1, 1, 0), rec("parent", `"a"`), rec("parent", `"b"`), rec("parent", `"c"`), rec("child", `"of c"`))
	if err := b.Commit(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := e.db.QueryRow("SELECT p.name FROM child c JOIN parent p ON p.id = c.parent_id").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != "c" {
		t.Fatalf("the child's parent: got %q, want \"c\" (the last INSERT before it)", got)
	}
}

// A statement whose placeholders the server and the driver count
// differently never worked through the driver's interpolation; New says so.
func TestPlaceholderCountMismatch(t *testing.T) {
	e := testEnv(t)
	cfg := DefaultConfig()
	cfg.Name, cfg.DSN = "db", e.dsn
	cfg.Statements = map[string]string{"odd": "INSERT INTO kv (k, v) VALUES (?, 1 /*! + ? */)"}
	s, err := New(context.Background(), cfg)
	if err == nil {
		s.Close()
		t.Fatal("New: got nil, want an error naming the statement")
	}
	if !strings.Contains(err.Error(), `"odd"`) || !strings.Contains(err.Error(), "placeholders") {
		t.Fatalf("New: got %v, want the statement's name and the placeholder counts", err)
	}
}

// dsnWith is a new test database's DSN changed by mod.
func dsnWith(t *testing.T, mod func(*gomysql.Config)) string {
	t.Helper()
	c, err := gomysql.ParseDSN(mysqltest.DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	mod(c)
	return c.FormatDSN()
}

// Prepare sends the marker INSERT, XA END and XA PREPARE in one round trip;
// when the first fails the others do not run, and Abort leaves nothing
// prepared and nothing written.
func TestPrepareFailsCleanly(t *testing.T) {
	e := testEnv(t)
	s := e.sink("db")
	ctx := ctxT(t, 60*time.Second)
	b, err := s.Begin(ctx, e.id("0", 1, 1, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Write(ctx, []*twopc.Record{put("a", 1), put("b", 2)}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Exec("DROP TABLE txsink_xa_marker"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Prepare(ctx); !errors.Is(err, twopc.ErrSinkFailure) || errNumber(err) != 1146 {
		t.Fatalf("Prepare without the marker table: got %v, want a sink failure with error 1146", err)
	}
	if got := len(e.prepared()); got != 0 {
		t.Fatalf("got %d prepared branches after the failed Prepare, want 0", got)
	}
	if err := b.Abort(ctx); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	if got := e.count("1"); got != 0 {
		t.Fatalf("got %d rows after Abort, want 0", got)
	}
}

// A pooled connection is asked for its CONNECTION_ID() etc. once, not per
// branch, and a dropped connection's answer is forgotten.
func TestSessionCachedPerConnection(t *testing.T) {
	e := testEnv(t)
	s := e.sink("db", func(c *Config) { c.MaxConns = 1 })
	ctx := ctxT(t, 60*time.Second)
	var ids []uint64
	for seq := uint64(1); seq <= 2; seq++ {
		b, _ := prepare(t, s, e.id("0", 1, seq, 0), put(fmt.Sprint("k", seq), 1))
		ids = append(ids, b.(*branch).x.connID)
		if err := b.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Lock()
	n := len(s.sessions)
	s.mu.Unlock()
	if ids[0] != ids[1] || n != 1 {
		t.Fatalf("two branches on one pooled connection: got connection ids %v and %d cached answers, want one id and 1", ids, n)
	}
	id := e.id("0", 1, 3, 0)
	b, h := prepare(t, s, id, put("k3", 1))
	killPreparer(b)
	s.mu.Lock()
	n = len(s.sessions)
	s.mu.Unlock()
	if n != 0 {
		t.Fatalf("after the branch's connection was dropped: got %d cached answers, want 0", n)
	}
	if err := s.Resolve(ctx, id, h, false); err != nil {
		t.Fatal(err)
	}
	if got := e.count("1"); got != 2 {
		t.Fatalf("got %d rows, want 2", got)
	}
}

// A connection in a character set where a backslash or quote byte can be
// part of a multi-byte character (GBK here) is refused: the sink escapes
// literals itself, byte by byte, which is unsafe there.
func TestUnsafeCharsetRefused(t *testing.T) {
	e := testEnv(t)
	dc, err := gomysql.ParseDSN(e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	if dc.Params == nil {
		dc.Params = map[string]string{}
	}
	dc.Params["charset"] = "gbk"
	cfg := DefaultConfig()
	cfg.Name, cfg.DSN, cfg.Statements = "db", dc.FormatDSN(), testStmts
	ctx := ctxT(t, 30*time.Second)
	s, err := New(ctx, cfg)
	if err == nil {
		t.Cleanup(func() { s.Close() })
		var b twopc.Branch
		if b, err = s.Begin(ctx, e.id("w", 1, 1, 0)); err == nil {
			err = b.Write(ctx, []*twopc.Record{put("a", 1)})
			_ = b.Abort(ctx)
		}
	}
	if err == nil || !strings.Contains(err.Error(), "character set is gbk") {
		t.Fatalf("a gbk connection: got %v, want it refused naming the character set", err)
	}
	if n := e.count("1=1"); n != 0 {
		t.Fatalf("kv has %d rows after the refused write, want 0", n)
	}
}

// A statement whose placeholders the server counted under
// NO_BACKSLASH_ESCAPES (its global sql_mode) is accepted with that split
// and left to the driver's interpolation, which follows each session's
// mode; in backslash mode the same text has no placeholder.
func TestStatementCountedWithoutBackslashEscapes(t *testing.T) {
	q := `INSERT INTO kv(k, v) VALUES ('a\', ?)`
	st, err := newStatement("s", q, 1)
	if err != nil {
		t.Fatalf("newStatement: %v", err)
	}
	if !st.modeDependent {
		t.Fatalf("modeDependent false, want true: the two splits differ")
	}
	got, args, _, err := st.render(nil, nil, []json.RawMessage{json.RawMessage(`7`)}, false, true, true)
	if err != nil || string(got) != q || len(args) != 1 {
		t.Fatalf("render with driver args: got %q %v %v, want the statement as written and one arg", got, args, err)
	}
	if _, err := newStatement("s", q, 2); err == nil {
		t.Fatalf("a count neither split finds: got no error")
	}
}
