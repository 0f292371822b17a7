package mysql

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"sync"

	"github.com/txsink/txsink/twopc"
)

type branchState int

const (
	stateNew      branchState = iota // no connection, no XA transaction yet
	stateActive                      // XA START done, writes go here
	stateFailed                      // a write or prepare failed: only Abort is allowed
	statePrepared                    // XA PREPARE answered OK
	stateEmpty                       // prepared with no writes: nothing in the database
	stateDone                        // committed or rolled back; connection released
	stateClosed                      // Sink.Close detached it
)

// branch is one XA transaction on one pinned connection.
type branch struct {
	s  *Sink
	id twopc.BranchID

	// mu serialises the coordinator's calls with Resolve and Fence.
	mu    sync.Mutex
	state branchState
	conn  *sql.Conn
	sess  session // what start learnt about conn
	x     xid
	// maybePrepared: XA PREPARE was sent; without an answer the branch may
	// be prepared, so cleanup must go through XA RECOVER.
	maybePrepared bool
	committed     bool
	// plain: a direct branch's plain transaction (BEGIN … COMMIT, no XA;
	// direct.go). Write works the same; Prepare is never called.
	plain bool
}

func (b *branch) fail(op string, err error) error {
	b.state = stateFailed
	return b.s.wrapID(b.id, op, err)
}

func (b *branch) start(ctx context.Context) error {
	if b.conn == nil { // Begin takes it; a dropped one is not replaced
		return b.fail("connect", errors.New("the branch's connection is gone"))
	}
	conn := b.conn
	sess, err := b.s.session(ctx, conn)
	if err != nil {
		return b.fail("connection id", err)
	}
	b.sess = sess
	b.s.connEnded(sess.id, false)
	b.x = newXID(b.id, sess.id, sess.boot)
	if b.plain {
		if _, err := conn.ExecContext(ctx, "BEGIN"); err != nil {
			return b.fail("BEGIN", err)
		}
		b.state = stateActive
		return nil
	}
	if _, err := conn.ExecContext(ctx, "XA START "+b.x.literal()); err != nil {
		return b.fail("XA START", err)
	}
	b.state = stateActive
	return nil
}

// Write runs the named statements inside the XA transaction.
func (b *branch) Write(ctx context.Context, recs []*twopc.Record) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == stateNew {
		if err := b.start(ctx); err != nil {
			return err
		}
	}
	if b.state != stateActive {
		return fmt.Errorf("%w: mysql sink %q: write to branch %v in state %s", twopc.ErrSinkFailure, b.s.cfg.Name, b.id, b.state)
	}
	// One round trip per run of records instead of one per record: the
	// statements are joined with a newline and ";" and sent together,
	// consecutive records of an INSERT … VALUES (…) as one multi-row
	// INSERT, in chunks below the server's max_allowed_packet. The
	// arguments are rendered into the text (args.go). A failing statement
	// stops its chunk. Each chunk starts with a savepoint, the first one
	// also with the call's, so a record the server refuses for good can be
	// found and the call undone (see DESIGN.md "Poison records"); any
	// other failure fails the branch.
	bp := textPool.Get().(*[]byte)
	q, args := (*bp)[:0], []any(nil)
	n, extra, prev, first := 0, 0, "", 0
	defer func() {
		if cap(q) <= 2*maxBatchBytes { // one chunk's worth; a rare giant record's buffer goes
			*bp = q[:0]
			textPool.Put(bp)
		}
	}()
	flush := func(end int) error {
		if n == 0 {
			return nil
		}
		if _, err := b.conn.ExecContext(ctx, string(q), args...); err != nil {
			if rejected(err) {
				return b.reject(ctx, recs, first, end, err)
			}
			what := fmt.Sprintf("statement %q", prev)
			if n > 1 {
				what = fmt.Sprintf("one of %d records sent together", n)
			}
			return b.fail(what, err)
		}
		q, args = q[:0], args[:0]
		n, extra, prev, first = 0, 0, "", end
		return nil
	}
	limit := b.chunkLimit()
	for i := 0; i < len(recs); {
		r := recs[i]
		st, ok := b.s.stmts[r.Stmt]
		if !ok {
			b.state = stateFailed
			return fmt.Errorf("%w: mysql sink %q: unknown statement %q", twopc.ErrInvalid, b.s.cfg.Name, r.Stmt)
		}
		mark, argMark := len(q), len(args)
		asRow := n > 0 && st.row != nil && b.s.merge && r.Stmt == prev
		switch {
		case asRow:
			q = append(q, ',') // one more row of the same INSERT … VALUES
		case n > 0:
			q = append(q, "\n;"...)
		default:
			if i == 0 {
				q = append(q, savepointCall+"\n;"...)
			}
			q = append(q, savepointChunk+"\n;"...)
		}
		var more int
		var err error
		q, args, more, err = st.render(q, args, r.Args, asRow, b.s.driverArgs, b.sess.noBackslash)
		if err != nil {
			b.state = stateFailed
			return fmt.Errorf("%w: mysql sink %q: %v", twopc.ErrInvalid, b.s.cfg.Name, err)
		}
		if n > 0 && (n == maxBatchStmts || len(q)+extra+more > limit) {
			// Send the chunk without this record, which starts the next.
			q, args = q[:mark], args[:argMark]
			if err := flush(i); err != nil {
				return err
			}
			continue
		}
		if n == 0 && len(q)+more > b.packetLimit() {
			return b.tooLarge(ctx, recs, i, len(q)+more)
		}
		extra += more
		prev = r.Stmt
		n++
		i++
	}
	return flush(len(recs))
}

// Bounds of one multi-statement round trip in Write: at most maxBatchStmts
// records and maxBatchBytes bytes (or less if the server's
// max_allowed_packet is smaller). packetSlack leaves room for the command
// byte and packet headers.
const (
	maxBatchStmts = 1000
	maxBatchBytes = 1 << 20
	packetSlack   = 1024
)

// packetLimit is the longest statement text this connection can send: the
// server's max_allowed_packet and the driver's own bound, less slack.
func (b *branch) packetLimit() int {
	limit := b.sess.maxPacket
	if c := b.s.clientMaxPacket; c > 0 && (limit <= 0 || c < limit) {
		limit = c
	}
	if limit <= 0 {
		limit = maxBatchBytes // not reported: assume the 1 MiB of old servers
	}
	return limit - packetSlack
}

func (b *branch) chunkLimit() int { return min(maxBatchBytes, b.packetLimit()) }

// textPool holds Write's statement text buffers: a branch usually gets one
// Write per checkpoint, so a buffer kept per branch would grow from nothing
// on every call.
var textPool = sync.Pool{New: func() any { return new([]byte) }}

// tooLarge answers a record whose statement alone exceeds what the server
// takes in one packet: the server would refuse it on every replay, so it
// is rejected like a poison record, and the call's earlier chunks (if any
// ran) are undone.
func (b *branch) tooLarge(ctx context.Context, recs []*twopc.Record, i, size int) error {
	rej := &twopc.RecordError{Line: i + 1, Err: fmt.Errorf("%w: mysql sink %q: statement %q with its arguments is %d bytes, more than the server's max_allowed_packet allows (%d)",
		twopc.ErrRecordRejected, b.s.cfg.Name, recs[i].Stmt, size, b.packetLimit()+packetSlack)}
	if i == 0 {
		return rej // nothing of the call was sent
	}
	if _, err := b.conn.ExecContext(ctx, "ROLLBACK TO SAVEPOINT txsink_call"); err != nil {
		return errors.Join(rej, b.fail("rollback to the call's savepoint after a record too large", err))
	}
	return rej
}

// Savepoints of a Write call: the call's (set before its first record) and
// the current chunk's. MariaDB keeps an XA branch ACTIVE when a statement
// fails with one of the errors of rejected (only that statement is rolled
// back), and ROLLBACK TO SAVEPOINT works inside XA branches.
const (
	savepointCall  = "SAVEPOINT txsink_call"
	savepointChunk = "SAVEPOINT txsink_chunk"
)

// reject handles a deterministic error of the chunk recs[first:end]: it
// undoes the chunk, runs its records one at a time to find the one the
// server refuses, then undoes the whole call, so the branch is as it was
// before the call and stays usable. The answer is a *twopc.RecordError
// wrapping twopc.ErrRecordRejected. If the branch cannot be restored it
// is failed and the error wraps twopc.ErrSinkFailure as well.
func (b *branch) reject(ctx context.Context, recs []*twopc.Record, first, end int, chunkErr error) error {
	line, cause := 0, chunkErr
	if _, err := b.conn.ExecContext(ctx, "ROLLBACK TO SAVEPOINT txsink_chunk"); err != nil {
		return b.fail("rollback to the chunk's savepoint after a rejected record", err)
	}
	for i := first; i < end && line == 0; i++ {
		r := recs[i]
		// Checked when the chunk was built.
		q, args, _, _ := b.s.stmts[r.Stmt].render(nil, nil, r.Args, false, b.s.driverArgs, b.sess.noBackslash)
		if _, err := b.conn.ExecContext(ctx, string(q), args...); err != nil {
			if !rejected(err) {
				return b.fail(fmt.Sprintf("statement %q (finding the rejected record)", r.Stmt), err)
			}
			line, cause = i+1, err
		}
	}
	var what string
	if line > 0 {
		what = fmt.Sprintf("statement %q", recs[line-1].Stmt)
	} else {
		// No record fails alone (e.g. a trigger that depends on the
		// batch): name the chunk's first record and its range.
		line = first + 1
		what = fmt.Sprintf("one of records %d..%d sent together", first+1, end)
	}
	rej := &twopc.RecordError{Line: line, Err: fmt.Errorf("%w: mysql sink %q: %s: %w",
		twopc.ErrRecordRejected, b.s.cfg.Name, what, cause)}
	if _, err := b.conn.ExecContext(ctx, "ROLLBACK TO SAVEPOINT txsink_call"); err != nil {
		return errors.Join(rej, b.fail("rollback to the call's savepoint after a rejected record", err))
	}
	return rej
}

// rejected reports whether err is a server error that the same statement
// with the same arguments would get again: the record is poison, not the
// connection or the moment.
func rejected(err error) bool {
	switch errNumber(err) {
	case 1048, // column cannot be null
		1062, 1586, // duplicate key
		1216, 1217, 1451, 1452, // foreign key
		1264, 1690, // out of range
		1265, 1292, 1366, 1367, 1411, // data truncated, incorrect or illegal value
		1364, // field has no default value
		1365, // division by 0
		1406, // data too long
		3819, // check constraint (MySQL)
		4025: // CONSTRAINT_FAILED (MariaDB)
		return true
	}
	return false
}

// Prepare inserts the marker row, then XA END and XA PREPARE, in one round
// trip.
func (b *branch) Prepare(ctx context.Context) (twopc.Handle, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case stateNew, stateEmpty:
		b.state = stateEmpty
		return emptyHandle, nil
	case statePrepared:
		return b.x.handle(), nil
	case stateActive:
	default:
		return nil, fmt.Errorf("%w: mysql sink %q: prepare branch %v in state %s", twopc.ErrSinkFailure, b.s.cfg.Name, b.id, b.state)
	}
	x := b.x
	// One round trip for the three statements (each round trip costs the
	// sidecar ~0.1 ms of CPU and the checkpoint its latency): the server
	// stops at the first that fails. Whether XA PREPARE ran is then
	// unknown, so maybePrepared is set before sending and cleanup goes
	// through XA RECOVER if the branch's own XA ROLLBACK fails (Abort).
	b.maybePrepared = true
	_, err := b.conn.ExecContext(ctx, "INSERT INTO "+b.s.marker+
		" (format_id, gtrid, bqual, job, writer, sink, epoch, seq, after_checkpoint, slot, conn_id)"+
		" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)\n;XA END "+x.literal()+"\n;XA PREPARE "+x.literal(),
		FormatID, x.gtrid, x.bqual, b.id.Job, b.id.Writer, b.id.Sink, b.id.Epoch, b.id.Seq, b.id.After, b.id.Slot, x.connID)
	if err != nil {
		return nil, b.fail("insert marker row, XA END, XA PREPARE", err)
	}
	b.state = statePrepared
	return x.handle(), nil
}

// Commit commits the prepared branch on its own connection; if that
// connection fails it finishes the branch from a new one.
func (b *branch) Commit(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case stateEmpty:
		b.release()
		return nil
	case stateDone:
		if b.committed {
			return nil
		}
		return fmt.Errorf("%w: mysql sink %q: commit of rolled back branch %v", twopc.ErrSinkFailure, b.s.cfg.Name, b.id)
	case statePrepared, stateClosed:
	default:
		return fmt.Errorf("%w: mysql sink %q: commit of branch %v in state %s", twopc.ErrSinkFailure, b.s.cfg.Name, b.id, b.state)
	}
	if done, err := b.finishLocal(ctx, true); done {
		return err
	}
	if err := b.s.resolveXID(ctx, b.id, b.x, true); err != nil {
		return err
	}
	b.state, b.committed = stateDone, true
	b.release()
	return nil
}

// Abort rolls the branch back, whatever its state, and never leaves it
// prepared: when its own connection cannot do it, it is rolled back from a
// new one through XA RECOVER.
func (b *branch) Abort(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case stateNew, stateEmpty:
		b.state = stateDone
		b.release()
		return nil
	case stateDone:
		if !b.committed {
			return nil
		}
		return fmt.Errorf("%w: mysql sink %q: abort of committed branch %v", twopc.ErrSinkFailure, b.s.cfg.Name, b.id)
	}
	if b.conn != nil && b.state != statePrepared {
		// Active, idle or rollback-only (deadlock): XA END fails in some of
		// these states; XA ROLLBACK decides.
		_, _ = b.conn.ExecContext(ctx, "XA END "+b.x.literal())
	}
	if done, err := b.finishLocal(ctx, false); done {
		return err
	}
	if b.x.gtrid != nil && (b.state == statePrepared || b.state == stateClosed || b.maybePrepared) {
		if err := b.s.resolveXID(ctx, b.id, b.x, false); err != nil {
			return err
		}
	}
	// Otherwise the branch never reached PREPARE: dropping its connection
	// made the server roll it back.
	b.state = stateDone
	b.release()
	return nil
}

// finishLocal runs XA COMMIT or XA ROLLBACK on the branch's own connection.
// done reports whether that settled it (err is then the result); if not, the
// connection was dropped and the caller must finish from a new session.
// b.mu is held.
func (b *branch) finishLocal(ctx context.Context, commit bool) (done bool, err error) {
	if b.state == stateDone {
		if b.committed != commit {
			return true, fmt.Errorf("%w: mysql sink %q: branch %v already finished the other way", twopc.ErrSinkFailure, b.s.cfg.Name, b.id)
		}
		return true, nil
	}
	if b.conn == nil || b.x.gtrid == nil {
		return false, nil
	}
	verb := "ROLLBACK"
	if commit {
		verb = "COMMIT"
	}
	_, err = b.conn.ExecContext(ctx, "XA "+verb+" "+b.x.literal())
	if err == nil {
		b.state, b.committed = stateDone, commit
		b.release()
		return true, nil
	}
	b.s.log.Warn("XA "+verb+" on the branch's own connection failed; finishing from a new one",
		"branch", b.id.String(), "xid", b.x.String(), "err", err)
	b.dropConn()
	return false, nil
}

// dropConn closes the physical connection: the server rolls back an open
// branch and detaches a prepared one (which stays prepared).
func (b *branch) dropConn() {
	if b.conn == nil {
		return
	}
	b.s.forgetSession(b.conn)
	_ = b.conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = b.conn.Close()
	b.conn = nil
	b.s.connEnded(b.x.connID, false)
}

// release returns a clean connection to the pool and forgets the branch.
func (b *branch) release() {
	if b.conn != nil {
		// Only a clean connection comes here: its XA transaction, if
		// any, ended on it.
		b.s.connEnded(b.x.connID, true)
		_ = b.conn.Close()
		b.conn = nil
	}
	b.s.forget(b)
}

func (st branchState) String() string {
	switch st {
	case stateNew:
		return "new"
	case stateActive:
		return "active"
	case stateFailed:
		return "failed"
	case statePrepared:
		return "prepared"
	case stateEmpty:
		return "empty"
	case stateDone:
		return "done"
	case stateClosed:
		return "closed"
	}
	return fmt.Sprintf("state(%d)", int(st))
}

// Detach lets go of a prepared branch without ending it (twopc.Detacher):
// its connection is closed, so the server keeps the XA branch prepared and
// detached, and the node that now owns the writer can finish it from its
// handle (Resolve waits for the preparer's session to be gone).
func (b *branch) Detach() {
	b.mu.Lock()
	if b.state == statePrepared {
		b.dropConn()
		b.state = stateClosed
	}
	b.mu.Unlock()
	b.s.forget(b)
}
