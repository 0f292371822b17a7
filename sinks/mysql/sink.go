// Package mysql is txsink's MySQL/MariaDB sink: every branch is an XA
// transaction on its own pinned connection, prepared with XA PREPARE and
// finished with XA COMMIT or XA ROLLBACK, from its own session normally and
// from any session in recovery, verified through a marker row.
//
// See DESIGN.md in this folder.
package mysql

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/txsink/txsink/twopc"
)

// MariaDB/MySQL error numbers we act on.
const (
	errLockWaitTimeout = 1205
	errDeadlock        = 1213
	errXANota          = 1397 // XAER_NOTA: unknown XID (also: already finished, or attached to a live session)
	errXARMFail        = 1399 // XAER_RMFAIL: wrong state
)

// Sink is a twopc.Sink writing into one MySQL/MariaDB database.
type Sink struct {
	cfg Config
	// db holds the branches' connections (Config.MaxConns); rdb is the
	// small reserved pool of recovery (Resolve/Fence from a new session)
	// and set-up, so recovery never queues behind writers' branches.
	db     *sql.DB
	rdb    *sql.DB
	log    *slog.Logger
	stmts  map[string]*statement
	marker string // quoted marker table
	boot   string // quoted boot table
	// driverArgs: Write leaves the arguments to the driver's interpolation
	// (placeholders stay in the text) instead of rendering them itself,
	// because a statement may change the session's sql_mode, on which
	// escaping depends (see statement and DESIGN.md "Writes").
	driverArgs bool
	// merge: consecutive records of a statement with a row tuple become one
	// multi-row INSERT. Off when a statement reads what a multi-row INSERT
	// reports differently from single-row ones (LAST_INSERT_ID, ROW_COUNT).
	merge bool
	// clientMaxPacket is the driver's own bound on a command (the DSN's
	// maxAllowedPacket; 0: the server's, read per connection).
	clientMaxPacket int

	// mu guards live: branches of this process that hold a connection,
	// and ended: ids of pooled connections on which a branch's XA
	// transaction ended (they wait in the pool or serve a newer branch).
	// Recovery runs on the separate pool rdb, so it can no longer count
	// on getting the preparer's own connection back; ended tells it that
	// a live preparer session holds nothing of the branch. sessions:
	// what connInfo answered for a branch-pool connection, keyed by the
	// driver's connection (the key keeps it from being freed, so its
	// address is never another connection's): the connection id, the
	// boot id and max_allowed_packet cannot change while it lives, and
	// its sql_mode only through a statement that makes driverArgs true.
	mu       sync.Mutex
	live     map[liveKey]*branch
	ended    map[uint64]bool
	sessions map[any]session
}

// session returns what connInfo answered for conn before, or asks it once
// (one round trip per new connection instead of one per branch).
func (s *Sink) session(ctx context.Context, conn *sql.Conn) (session, error) {
	var key any
	if err := conn.Raw(func(dc any) error { key = dc; return nil }); err != nil {
		return session{}, err
	}
	s.mu.Lock()
	ss, ok := s.sessions[key]
	s.mu.Unlock()
	if ok {
		return ss, nil
	}
	ss, err := s.connInfo(ctx, conn)
	if err != nil {
		return ss, err
	}
	s.mu.Lock()
	// The key keeps the driver's connection (and its buffers) reachable,
	// so entries of connections the pool closed by itself must not pile
	// up: the pool never holds more than the sink's connections.
	if len(s.sessions) >= 2*(s.cfg.MaxConns+s.cfg.ReservedConns)+8 {
		clear(s.sessions) // connections the pool dropped by itself: ask again
	}
	s.sessions[key] = ss
	s.mu.Unlock()
	return ss, nil
}

// forgetSession drops the answer for a connection that is being closed.
func (s *Sink) forgetSession(conn *sql.Conn) {
	_ = conn.Raw(func(dc any) error {
		s.mu.Lock()
		delete(s.sessions, dc)
		s.mu.Unlock()
		return nil
	})
}

// maxEnded bounds Sink.ended; connections the pool closes by itself leave
// stale ids, which are harmless (ids are not reused before a restart).
const maxEnded = 4096

// connEnded records that the XA transaction on connection id ended and the
// connection went back to the pool (ended=true), or that a branch pinned or
// closed it (ended=false).
func (s *Sink) connEnded(id uint64, ended bool) {
	if id == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !ended {
		delete(s.ended, id)
		return
	}
	if len(s.ended) >= maxEnded {
		clear(s.ended) // at worst a resolve waits for that connection to close
	}
	s.ended[id] = true
}

func (s *Sink) endedOn(id uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended[id]
}

// es is a branch's (epoch, seq): unique per writer.
type es struct{ epoch, seq uint64 }

type liveKey struct {
	job, writer string
	epoch, seq  uint64
}

var _ twopc.Sink = (*Sink)(nil)

// defaultDialTimeout bounds opening a connection when the DSN has no timeout.
const defaultDialTimeout = 10 * time.Second

// New connects, creates the marker tables if missing and prepares every
// statement once: a statement the server rejects fails New with its name.
func New(ctx context.Context, cfg Config) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	dsn, err := cfg.dsn()
	if err != nil {
		return nil, err
	}
	mc, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("mysql sink %q: dsn: %w", cfg.Name, err)
	}
	if mc.DBName == "" {
		return nil, fmt.Errorf("mysql sink %q: dsn names no database", cfg.Name)
	}
	// Arguments are interpolated by the driver (escaped for the server's
	// SQL mode), so a run of records goes to the server as one
	// multi-statement round trip (see branch.Write). Statements come only
	// from the config; clients send arguments.
	mc.InterpolateParams = true
	mc.MultiStatements = true
	// Every call runs under a context with a deadline and the driver
	// honours it (it closes the connection), but opening a connection
	// gets a dial bound of its own unless the DSN sets one (timeout=).
	if mc.Timeout == 0 {
		mc.Timeout = defaultDialTimeout
	}
	connector, err := mysql.NewConnector(mc)
	if err != nil {
		return nil, fmt.Errorf("mysql sink %q: %w", cfg.Name, err)
	}
	db := sql.OpenDB(connector)
	db.SetMaxIdleConns(max(cfg.MaxInflight, 4))
	if cfg.MaxConns > 0 {
		// Bounded: keep them all rather than reconnect under load.
		db.SetMaxOpenConns(cfg.MaxConns)
		db.SetMaxIdleConns(cfg.MaxConns)
	}
	rdb := sql.OpenDB(connector)
	rdb.SetMaxOpenConns(cfg.ReservedConns)
	rdb.SetMaxIdleConns(cfg.ReservedConns)
	rdb.SetConnMaxIdleTime(time.Minute)
	s := &Sink{
		cfg: cfg, db: db, rdb: rdb, log: cfg.Logger.With("sink", cfg.Name),
		stmts:    make(map[string]*statement, len(cfg.Statements)),
		marker:   "`" + cfg.MarkerTable + "`",
		boot:     "`" + cfg.MarkerTable + "_boot`",
		live:     make(map[liveKey]*branch),
		ended:    make(map[uint64]bool),
		sessions: make(map[any]session),
		merge:    true,
		// The driver's default is 64 MiB, far above any batch.
		clientMaxPacket: mc.MaxAllowedPacket,
	}
	if err := s.setup(ctx); err != nil {
		db.Close()
		rdb.Close()
		return nil, err
	}
	return s, nil
}

func (s *Sink) setup(ctx context.Context) error {
	for _, q := range []string{
		`CREATE TABLE IF NOT EXISTS ` + s.marker + ` (
			format_id INT NOT NULL,
			gtrid VARBINARY(64) NOT NULL,
			bqual VARBINARY(64) NOT NULL,
			job VARCHAR(64) NOT NULL,
			writer VARCHAR(64) NOT NULL,
			sink VARCHAR(64) NOT NULL,
			epoch BIGINT UNSIGNED NOT NULL,
			seq BIGINT UNSIGNED NOT NULL,
			after_checkpoint BIGINT NOT NULL,
			slot INT NOT NULL,
			conn_id BIGINT UNSIGNED NOT NULL,
			prepared_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
			PRIMARY KEY (format_id, gtrid, bqual),
			KEY by_writer (job, writer, sink)
		) ENGINE=InnoDB`,
		// Emptied by every server restart: its row names the incarnation.
		`CREATE TABLE IF NOT EXISTS ` + s.boot + ` (k INT PRIMARY KEY, id CHAR(16) NOT NULL) ENGINE=MEMORY`,
	} {
		if _, err := s.rdb.ExecContext(ctx, q); err != nil {
			return s.wrap("create marker table", err)
		}
	}
	conn, err := s.rdb.Conn(ctx)
	if err != nil {
		return s.wrap("connect", err)
	}
	defer conn.Close()
	var bad []error
	names := make([]string, 0, len(s.cfg.Statements))
	for n := range s.cfg.Statements {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		q := s.cfg.Statements[name]
		err := conn.Raw(func(dc any) error {
			p, ok := dc.(driver.ConnPrepareContext)
			if !ok {
				return errors.New("driver cannot prepare")
			}
			st, err := p.PrepareContext(ctx, q)
			if err != nil {
				return err
			}
			n := st.NumInput()
			if err := st.Close(); err != nil {
				return err
			}
			stmt, err := newStatement(name, q, n)
			if err != nil {
				return err
			}
			s.stmts[name] = stmt
			s.driverArgs = s.driverArgs || stmt.modeDependent
			s.merge = s.merge && !stmt.readsInsertResult
			return nil
		})
		if err != nil {
			bad = append(bad, fmt.Errorf("statement %q: %w", name, err))
		}
	}
	if err := errors.Join(bad...); err != nil {
		return fmt.Errorf("mysql sink %q: %w", s.cfg.Name, err)
	}
	return nil
}

// Name is the sink's configured name.
func (s *Sink) Name() string { return s.cfg.Name }

// MaxInflight bounds the unresolved branches of one writer.
func (s *Sink) MaxInflight() int { return s.cfg.MaxInflight }

// Placeholders returns the number of ? placeholders of statement name, and
// whether it exists.
func (s *Sink) Placeholders(name string) (int, bool) {
	st, ok := s.stmts[name]
	if !ok {
		return 0, false
	}
	return st.n, true
}

// Close detaches every branch of this process (open ones are rolled back by
// the server, prepared ones stay prepared for recovery) and closes the pool.
func (s *Sink) Close() error {
	s.mu.Lock()
	bs := make([]*branch, 0, len(s.live))
	for _, b := range s.live {
		bs = append(bs, b)
	}
	s.mu.Unlock()
	for _, b := range bs {
		b.mu.Lock()
		b.dropConn()
		b.state = stateClosed
		b.mu.Unlock()
	}
	return errors.Join(s.db.Close(), s.rdb.Close())
}

// Validate checks a record: a known statement, as many args as it has
// placeholders, every arg a JSON scalar, no Kafka fields.
func (s *Sink) Validate(r *twopc.Record) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: mysql sink %q: %s", twopc.ErrInvalid, s.cfg.Name, fmt.Sprintf(format, a...))
	}
	switch {
	case r.Topic != "":
		return bad("field topic is for Kafka sinks")
	case r.Key != nil || r.KeyB64 != nil:
		return bad("field key is for Kafka sinks")
	case r.Value != nil || r.ValueB64 != nil:
		return bad("field value is for Kafka sinks")
	case r.Headers != nil:
		return bad("field headers is for Kafka sinks")
	case r.Partition != nil:
		return bad("field partition is for Kafka sinks")
	case r.Stmt == "":
		return bad("stmt is required")
	}
	st, ok := s.stmts[r.Stmt]
	if !ok {
		return bad("unknown statement %q", r.Stmt)
	}
	if len(r.Args) != st.n {
		return bad("statement %q takes %d args, got %d", r.Stmt, st.n, len(r.Args))
	}
	for i, a := range r.Args {
		if _, err := scalarOf(a); err != nil {
			return bad("statement %q arg %d: %v", r.Stmt, i, err)
		}
	}
	return nil
}

// Begin opens a branch; it takes a connection and starts the XA transaction
// at the first Write. A branch with no writes prepares to an empty handle and
// touches nothing.
func (s *Sink) Begin(ctx context.Context, id twopc.BranchID) (twopc.Branch, error) {
	if id.Sink != s.cfg.Name {
		return nil, fmt.Errorf("%w: branch %v is not of mysql sink %q", twopc.ErrInvalid, id, s.cfg.Name)
	}
	if err := errors.Join(twopc.CheckName("job", id.Job), twopc.CheckName("writer", id.Writer)); err != nil {
		return nil, err
	}
	if id.Slot < 0 || id.Slot >= s.cfg.MaxInflight || id.After < 0 {
		return nil, fmt.Errorf("%w: branch %v: slot must be in 0..%d and after ≥ 0", twopc.ErrInvalid, id, s.cfg.MaxInflight-1)
	}
	k := liveKey{id.Job, id.Writer, id.Epoch, id.Seq}
	if s.liveBranch(id) != nil {
		return nil, fmt.Errorf("%w: branch %v is already open", twopc.ErrInvalid, id)
	}
	conn, err := s.takeConn(ctx, id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.live[k]; dup {
		_ = conn.Close()
		return nil, fmt.Errorf("%w: branch %v is already open", twopc.ErrInvalid, id)
	}
	b := &branch{s: s, id: id, conn: conn}
	s.live[k] = b
	return b, nil
}

// takeConn takes the connection a new branch pins, waiting at most
// Config.ConnWait: a full pool is backpressure for the writer, not an error
// of the server (which would also take the administrator's connections).
//
// Only a pool whose connections are all pinned is backpressure. A wait can
// also run out while one of them is still being dialled (a slow server, a
// loaded machine): that connection is counted open but not in use, and is
// the waiter's as soon as it is up, so the wait is repeated (a few times)
// rather than answering "all pinned" with a connection about to be free.
func (s *Sink) takeConn(ctx context.Context, id twopc.BranchID) (*sql.Conn, error) {
	const attempts = 4
	for attempt := 1; ; attempt++ {
		wctx, cancel := context.WithTimeout(ctx, s.cfg.ConnWait)
		conn, err := s.db.Conn(wctx)
		cancel()
		if err == nil {
			return conn, nil
		}
		if ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) || s.cfg.MaxConns <= 0 {
			return nil, s.wrapID(id, "connect", err)
		}
		st := s.db.Stats()
		if st.InUse >= s.cfg.MaxConns {
			return nil, fmt.Errorf("%w: mysql sink %q: branch %v: all %d connections (max_conns) are pinned by open or prepared branches; checkpoint, or retry later",
				twopc.ErrBackpressure, s.cfg.Name, id, s.cfg.MaxConns)
		}
		if attempt == attempts {
			return nil, s.wrapID(id, "connect", fmt.Errorf("no connection within %d waits of %v (%d open, %d in use, max_conns %d): %w",
				attempts, s.cfg.ConnWait, st.OpenConnections, st.InUse, s.cfg.MaxConns, err))
		}
	}
}

func (s *Sink) forget(b *branch) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := liveKey{b.id.Job, b.id.Writer, b.id.Epoch, b.id.Seq}
	if s.live[k] == b {
		delete(s.live, k)
	}
}

func (s *Sink) liveBranch(id twopc.BranchID) *branch {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live[liveKey{id.Job, id.Writer, id.Epoch, id.Seq}]
}

// Resolve commits or rolls back a prepared branch from its handle. If this
// process still holds the branch's connection it finishes it there;
// otherwise from a new session, once the preparer's session is gone, and it
// verifies the outcome through the marker row and XA RECOVER.
func (s *Sink) Resolve(ctx context.Context, id twopc.BranchID, h twopc.Handle, commit bool) error {
	x, empty, err := xidOf(id, h)
	if err != nil || empty {
		return err
	}
	if b := s.liveBranch(id); b != nil {
		b.mu.Lock()
		defer b.mu.Unlock()
		if done, err := b.finishLocal(ctx, commit); done {
			return err
		}
		// Its connection is gone (e.g. an earlier Commit lost it): finish
		// from a new session, then forget the branch like Commit does, or
		// a later Fence would try to abort what this just committed.
		if err := s.resolveXID(ctx, id, x, commit); err != nil {
			return err
		}
		b.state, b.committed = stateDone, commit
		b.release()
		return nil
	}
	return s.resolveXID(ctx, id, x, commit)
}

// resolveXID finishes branch x from a new session. Idempotent.
func (s *Sink) resolveXID(ctx context.Context, id twopc.BranchID, x xid, commit bool) error {
	verb := map[bool]string{true: "COMMIT", false: "ROLLBACK"}[commit]
	conn, err := s.rdb.Conn(ctx)
	if err != nil {
		return s.wrapID(id, "resolve: connect", err)
	}
	defer conn.Close()
	if err := s.waitPreparerGone(ctx, conn, x); err != nil {
		return s.wrapID(id, "resolve", err)
	}
	wait := 5 * time.Millisecond
	for attempt := 1; ; attempt++ {
		_, xerr := conn.ExecContext(ctx, "XA "+verb+" "+x.literal())
		if xerr != nil && errNumber(xerr) != errXANota && errNumber(xerr) != errXARMFail {
			return s.wrapID(id, "resolve: XA "+verb, xerr)
		}
		prepared, marker, err := s.check(ctx, conn, x)
		if err != nil {
			return s.wrapID(id, "resolve: verify", err)
		}
		switch {
		case commit && marker && !prepared:
			return nil
		case !commit && !marker && !prepared:
			return nil
		case !commit && marker:
			return fmt.Errorf("%w: mysql sink %q: branch %v (xid %s) was committed; it cannot be aborted",
				twopc.ErrSinkFailure, s.cfg.Name, id, x)
		case commit && !marker && !prepared:
			s.log.Error("prepared branch lost: decided to commit, but it is neither prepared nor committed",
				"branch", id.String(), "xid", x.String(), "xa_commit_err", xerr)
			return fmt.Errorf("%w: mysql sink %q: branch %v (xid %s) is neither prepared nor committed",
				twopc.ErrDataLoss, s.cfg.Name, id, x)
		}
		// Still prepared: the XA statement came too early (preparer still
		// detaching) or answered OK without effect. Try again.
		if attempt == 10 {
			s.log.Warn("branch still prepared after XA "+verb+"; retrying", "branch", id.String(), "xid", x.String(), "err", xerr)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: mysql sink %q: branch %v (xid %s) still prepared after XA %s: %v",
				twopc.ErrSinkFailure, s.cfg.Name, id, x, verb, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// check reports whether x is still prepared (in XA RECOVER) and whether its
// marker row is committed (visible to a plain read).
func (s *Sink) check(ctx context.Context, conn *sql.Conn, x xid) (prepared, marker bool, err error) {
	xs, err := recoverXIDs(ctx, conn)
	if err != nil {
		return false, false, err
	}
	for _, r := range xs {
		if string(r.gtrid) == string(x.gtrid) && string(r.bqual) == string(x.bqual) {
			prepared = true
		}
	}
	var one int
	err = conn.QueryRowContext(ctx, "SELECT 1 FROM "+s.marker+" WHERE format_id = ? AND gtrid = ? AND bqual = ?",
		FormatID, x.gtrid, x.bqual).Scan(&one)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return prepared, false, nil
	case err != nil:
		return false, false, err
	}
	return prepared, true, nil
}

type rawXID struct{ gtrid, bqual []byte }

// recoverXIDs lists the prepared XA branches with our formatID.
func recoverXIDs(ctx context.Context, conn *sql.Conn) ([]rawXID, error) {
	rows, err := conn.QueryContext(ctx, "XA RECOVER")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []rawXID
	for rows.Next() {
		var fid, gl, bl int64
		var data []byte
		if err := rows.Scan(&fid, &gl, &bl, &data); err != nil {
			return nil, err
		}
		if fid != FormatID || gl < 0 || bl < 0 || int(gl+bl) != len(data) {
			continue
		}
		out = append(out, rawXID{gtrid: data[:gl:gl], bqual: data[gl:]})
	}
	return out, rows.Err()
}

// session is what a branch and recovery learn about their connection in
// one query.
type session struct {
	id   uint64 // CONNECTION_ID()
	boot string // the server incarnation (the boot table's row)
	// noBackslash: sql_mode has NO_BACKSLASH_ESCAPES, so string literals
	// escape only quotes (as the driver's interpolation does).
	noBackslash bool
	maxPacket   int // @@max_allowed_packet: the longest statement the server takes
}

// safeCharset are the client character sets in which no byte of a
// multi-byte character is 0x5C (backslash) or 0x27 (quote), so escaping
// byte by byte is sound. GBK, Big5, SJIS and their kin are not: there
// 0xBF5C is one character and an escape could be swallowed by it.
var safeCharset = map[string]bool{"utf8mb4": true, "utf8mb3": true, "utf8": true, "latin1": true, "ascii": true, "binary": true}

// connInfo returns the session's CONNECTION_ID(), the server incarnation,
// its sql_mode's escaping and max_allowed_packet, and refuses a character
// set in which the sink's own escaping (args.go) would be unsafe.
func (s *Sink) connInfo(ctx context.Context, conn *sql.Conn) (session, error) {
	var ss session
	var boot sql.NullString
	var mode, charset string
	q := "SELECT CONNECTION_ID(), (SELECT id FROM " + s.boot + " WHERE k = 1), @@SESSION.sql_mode, @@SESSION.max_allowed_packet, @@SESSION.character_set_client"
	if err := conn.QueryRowContext(ctx, q).Scan(&ss.id, &boot, &mode, &ss.maxPacket, &charset); err != nil {
		return ss, err
	}
	if !safeCharset[strings.ToLower(charset)] {
		return ss, fmt.Errorf("mysql sink %q: the connection's character set is %s; the sink escapes string literals itself, "+
			"which is only safe where a backslash or quote byte is never part of a multi-byte character: use charset=utf8mb4 "+
			"(the default) or utf8mb3, latin1, ascii or binary in the DSN", s.cfg.Name, charset)
	}
	if !boot.Valid {
		// First session since the server started: name this incarnation.
		// Racing sessions agree through the primary key.
		if _, err := conn.ExecContext(ctx, "INSERT IGNORE INTO "+s.boot+" (k, id) VALUES (1, LOWER(HEX(RANDOM_BYTES(8))))"); err != nil {
			return ss, err
		}
		if err := conn.QueryRowContext(ctx, q).Scan(&ss.id, &boot, &mode, &ss.maxPacket, &charset); err != nil {
			return ss, err
		}
	}
	ss.boot = strings.ToLower(boot.String)
	for m := range strings.SplitSeq(mode, ",") {
		if strings.EqualFold(strings.TrimSpace(m), "NO_BACKSLASH_ESCAPES") {
			ss.noBackslash = true
		}
	}
	return ss, nil
}

// waitPreparerGone waits until the session that prepared x has left the
// server: committing a branch from another session while its preparer is
// still detaching can answer OK and leave it prepared (docs/DESIGN.md §10). A server
// restart since (another boot id) means it is gone. So does x no longer
// being prepared: XA RECOVER lists a prepared branch whether or not its
// session is still attached, so the preparer (or someone) ended it, and
// the caller's marker check tells how. Waiting for the session then would
// never end when the preparer finished the branch itself and its process
// kept the connection (a pooled connection of a node that committed the
// branch but could not journal that).
func (s *Sink) waitPreparerGone(ctx context.Context, conn *sql.Conn, x xid) error {
	self, err := s.connInfo(ctx, conn)
	if err != nil {
		return err
	}
	if !strings.EqualFold(self.boot, x.boot) || self.id == x.connID {
		return nil
	}
	start := time.Now()
	warned := false
	for {
		var n int
		err := conn.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?", x.connID).Scan(&n)
		if err != nil {
			return err
		}
		if n == 0 || s.endedOn(x.connID) {
			return nil
		}
		if prepared, _, err := s.check(ctx, conn, x); err != nil {
			return err
		} else if !prepared {
			return nil
		}
		if !warned && time.Since(start) > 5*time.Second {
			warned = true
			s.log.Warn("waiting for the preparer's session to end before finishing its branch",
				"xid", x.String(), "conn_id", x.connID)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("preparer session %d still connected: %w", x.connID, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Fence rolls back every prepared branch of this writer in this sink that is
// not kept, and every open branch of it held by this process; then it drops
// the marker rows of finished branches that are not kept.
func (s *Sink) Fence(ctx context.Context, job, writer string, keep []twopc.BranchID) error {
	kept := make(map[es]bool, len(keep))
	for _, k := range keep {
		kept[es{k.Epoch, k.Seq}] = true
	}
	// Open branches of an older session in this process.
	s.mu.Lock()
	var mine []*branch
	for k, b := range s.live {
		if k.job == job && k.writer == writer && !kept[es{k.epoch, k.seq}] {
			mine = append(mine, b)
		}
	}
	s.mu.Unlock()
	var errs []error
	for _, b := range mine {
		if err := b.Abort(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	// The reserved pool is small (reserved_conns, maybe 1) and
	// resolveXID takes a connection of it: holding one across the
	// rollbacks would deadlock a Fence with itself, or reserved_conns
	// concurrent Fences with each other.
	xs, err := s.recoverXIDs(ctx)
	if err != nil {
		return s.wrap("fence: XA RECOVER", err)
	}
	want := tag(job, writer, s.cfg.Name)
	for _, r := range xs {
		x, t, err := parseXID(r.gtrid, r.bqual)
		if err != nil || t != want || kept[es{x.epoch, x.seq}] {
			continue
		}
		id := twopc.BranchID{Job: job, Writer: writer, Sink: s.cfg.Name, Epoch: x.epoch, Seq: x.seq, Slot: x.slot, After: x.after}
		s.log.Info("fence: rolling back unjournaled prepared branch", "branch", id.String(), "xid", x.String())
		if err := s.resolveXID(ctx, id, x, false); err != nil {
			errs = append(errs, err)
		}
	}
	conn, err := s.rdb.Conn(ctx)
	if err != nil {
		return errors.Join(append(errs, s.wrap("fence: connect", err))...)
	}
	defer conn.Close()
	if err := s.gcMarkers(ctx, conn, job, writer, kept); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// recoverXIDs lists the prepared XA branches on a connection of the
// reserved pool that it hands back before returning.
func (s *Sink) recoverXIDs(ctx context.Context) ([]rawXID, error) {
	conn, err := s.rdb.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return recoverXIDs(ctx, conn)
}

// gcMarkers deletes the marker rows of this writer's finished branches: once
// a branch is not kept by the coordinator, nobody resolves it again. It reads
// without locking and deletes by primary key, so the locked marker rows of
// prepared branches are never waited for.
func (s *Sink) gcMarkers(ctx context.Context, conn *sql.Conn, job, writer string, kept map[es]bool) error {
	rows, err := conn.QueryContext(ctx, "SELECT gtrid, bqual, epoch, seq FROM "+s.marker+
		" WHERE job = ? AND writer = ? AND sink = ?", job, writer, s.cfg.Name)
	if err != nil {
		return s.wrap("fence: read markers", err)
	}
	var del []rawXID
	for rows.Next() {
		var r rawXID
		var e, q uint64
		if err := rows.Scan(&r.gtrid, &r.bqual, &e, &q); err != nil {
			rows.Close()
			return s.wrap("fence: read markers", err)
		}
		if !kept[es{e, q}] {
			del = append(del, r)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return s.wrap("fence: read markers", err)
	}
	for _, r := range del {
		if _, err := conn.ExecContext(ctx, "DELETE FROM "+s.marker+" WHERE format_id = ? AND gtrid = ? AND bqual = ?",
			FormatID, r.gtrid, r.bqual); err != nil {
			return s.wrap("fence: delete marker", err)
		}
	}
	return nil
}

// errNumber returns the server error number of err, or 0.
func errNumber(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

// connLost reports whether err means the connection is gone.
func connLost(err error) bool {
	var ne net.Error
	return errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysql.ErrInvalidConn) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &ne) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// describe says what a driver error means for a branch.
func describe(err error) string {
	switch n := errNumber(err); {
	case n == errDeadlock:
		return "deadlock: the server rolled the branch back"
	case n == errLockWaitTimeout:
		return "lock wait timeout"
	case n != 0:
		return "server error"
	case connLost(err):
		return "lost connection"
	}
	return "error"
}

func (s *Sink) wrap(op string, err error) error {
	return fmt.Errorf("%w: mysql sink %q: %s: %s: %w", twopc.ErrSinkFailure, s.cfg.Name, op, describe(err), err)
}

func (s *Sink) wrapID(id twopc.BranchID, op string, err error) error {
	if errors.Is(err, twopc.ErrSinkFailure) || errors.Is(err, twopc.ErrDataLoss) {
		return err
	}
	return fmt.Errorf("%w: mysql sink %q: branch %v: %s: %s: %w", twopc.ErrSinkFailure, s.cfg.Name, id, op, describe(err), err)
}

// trimSQL cuts a statement after its last significant character, dropping
// trailing semicolons, white space and comments ("-- ", "#", "/* */"), so
// that statements can be joined into one multi-statement round trip. It
// skips over quoted strings and identifiers ('…', "…", `…`, with doubled or
// backslash-escaped quotes).
func trimSQL(q string) string {
	end := 0
	for i := 0; i < len(q); i++ {
		switch c := q[i]; {
		case c == '\'' || c == '"' || c == '`':
			j := i + 1
			for j < len(q) {
				if q[j] == '\\' && c != '`' {
					j += 2
					continue
				}
				if q[j] == c {
					if j+1 < len(q) && q[j+1] == c { // doubled quote
						j += 2
						continue
					}
					break
				}
				j++
			}
			i = min(j, len(q)-1)
			end = i + 1
		case c == '#' || (c == '-' && strings.HasPrefix(q[i:], "-- ")) || (c == '-' && q[i:] == "--"):
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case c == '/' && strings.HasPrefix(q[i:], "/*"):
			j := strings.Index(q[i+2:], "*/")
			if j < 0 {
				return q[:end]
			}
			i += j + 3
		case c == ';' || c == ' ' || c == '\t' || c == '\r' || c == '\n':
		default:
			end = i + 1
		}
	}
	return q[:end]
}

// valuesTuple returns the final "(…)" of an INSERT or REPLACE statement that
// ends in VALUES (…) with every placeholder inside that tuple: consecutive
// records of such a statement are sent as one multi-row statement
// (VALUES (…),(…),…), which has the same effect as the single-row statements
// one after another, as with JDBC's rewriteBatchedStatements. q is trimmed.
func valuesTuple(q string) (string, bool) {
	head := strings.ToUpper(strings.TrimSpace(q))
	if !strings.HasPrefix(head, "INSERT") && !strings.HasPrefix(head, "REPLACE") || !strings.HasSuffix(q, ")") {
		return "", false
	}
	depth, open, lastOpen := 0, -1, -1
	for i := 0; i < len(q); i++ {
		switch c := q[i]; c {
		case '\'', '"', '`':
			j := i + 1
			for j < len(q) && q[j] != c {
				if q[j] == '\\' && c != '`' {
					j++
				}
				j++
			}
			i = j
		case '(':
			if depth == 0 {
				open = i
			}
			depth++
		case ')':
			depth--
			if depth == 0 && i == len(q)-1 {
				lastOpen = open
			}
		}
	}
	if lastOpen < 0 {
		return "", false
	}
	prefix := strings.ToUpper(strings.TrimRight(q[:lastOpen], " \t\r\n"))
	if !strings.HasSuffix(prefix, "VALUES") && !strings.HasSuffix(prefix, "VALUE") {
		return "", false
	}
	// every placeholder must be in the final tuple
	inTuple := strings.Count(stripQuoted(q[lastOpen:]), "?")
	if inTuple != strings.Count(stripQuoted(q), "?") {
		return "", false
	}
	return q[lastOpen:], true
}

// stripQuoted blanks quoted strings and identifiers, so that counting
// placeholders ignores a '?' inside a literal.
func stripQuoted(q string) string {
	b := []byte(q)
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '\'' && c != '"' && c != '`' {
			continue
		}
		j := i + 1
		for j < len(b) && b[j] != c {
			if b[j] == '\\' && c != '`' {
				b[j] = ' '
				j++
			}
			if j < len(b) {
				b[j] = ' '
			}
			j++
		}
		i = j
	}
	return string(b)
}
