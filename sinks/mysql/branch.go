package mysql

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
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
	x     xid
	// maybePrepared: XA PREPARE was sent; without an answer the branch may
	// be prepared, so cleanup must go through XA RECOVER.
	maybePrepared bool
	committed     bool
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
	connID, boot, err := b.s.connInfo(ctx, conn)
	if err != nil {
		return b.fail("connection id", err)
	}
	b.s.connEnded(connID, false)
	b.x = newXID(b.id, connID, boot)
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
	// statements are joined with a newline and ";" and sent together (the driver
	// interpolates every argument), in chunks well below the server's
	// max_allowed_packet (16 MiB by default in MariaDB 10.11). A failing
	// statement stops its chunk. Each chunk starts with a savepoint, the
	// first one also with the call's, so a record the server refuses for
	// good can be found and the call undone (see DESIGN.md "Poison
	// records"); any other failure fails the branch.
	var q strings.Builder
	args := make([]any, 0, 2*min(len(recs), maxBatchStmts))
	n, size, prev, first := 0, 0, "", 0
	flush := func(end int) error {
		if n == 0 {
			return nil
		}
		if _, err := b.conn.ExecContext(ctx, q.String(), args...); err != nil {
			if rejected(err) {
				return b.reject(ctx, recs, first, end, err)
			}
			what := fmt.Sprintf("statement %q", prev)
			if n > 1 {
				what = fmt.Sprintf("one of %d records sent together", n)
			}
			return b.fail(what, err)
		}
		q.Reset()
		args, n, size, prev, first = args[:0], 0, 0, "", end
		return nil
	}
	for i, r := range recs {
		stmt, ok := b.s.sql[r.Stmt]
		if !ok {
			b.state = stateFailed
			return fmt.Errorf("%w: mysql sink %q: unknown statement %q", twopc.ErrInvalid, b.s.cfg.Name, r.Stmt)
		}
		recSize := len(stmt) + 1
		for _, a := range r.Args {
			recSize += len(a) + 8
		}
		if n == maxBatchStmts || (n > 0 && size+recSize > maxBatchBytes) {
			if err := flush(i); err != nil {
				return err
			}
		}
		for _, a := range r.Args {
			v, err := argValue(a)
			if err != nil {
				b.state = stateFailed
				return fmt.Errorf("%w: mysql sink %q: statement %q: %v", twopc.ErrInvalid, b.s.cfg.Name, r.Stmt, err)
			}
			args = append(args, v)
		}
		switch tuple, ok := b.s.tuple[r.Stmt]; {
		case n > 0 && ok && r.Stmt == prev:
			q.WriteByte(',') // one more row of the same INSERT … VALUES
			q.WriteString(tuple)
		case n > 0:
			q.WriteString("\n;")
			q.WriteString(stmt)
		default:
			if i == 0 {
				q.WriteString(savepointCall + "\n;")
			}
			q.WriteString(savepointChunk + "\n;")
			q.WriteString(stmt)
		}
		prev = r.Stmt
		n++
		size += recSize
	}
	return flush(len(recs))
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
		args := make([]any, len(r.Args))
		for j, a := range r.Args {
			args[j], _ = argValue(a) // checked when the chunk was built
		}
		if _, err := b.conn.ExecContext(ctx, b.s.sql[r.Stmt], args...); err != nil {
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

// Bounds of one multi-statement round trip in Write.
const (
	maxBatchStmts = 1000
	maxBatchBytes = 1 << 20
)

// Prepare inserts the marker row, then XA END and XA PREPARE.
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
	_, err := b.conn.ExecContext(ctx, "INSERT INTO "+b.s.marker+
		" (format_id, gtrid, bqual, job, writer, sink, epoch, seq, after_checkpoint, slot, conn_id)"+
		" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
		FormatID, x.gtrid, x.bqual, b.id.Job, b.id.Writer, b.id.Sink, b.id.Epoch, b.id.Seq, b.id.After, b.id.Slot, x.connID)
	if err != nil {
		return nil, b.fail("insert marker row", err)
	}
	if _, err := b.conn.ExecContext(ctx, "XA END "+x.literal()); err != nil {
		return nil, b.fail("XA END", err)
	}
	b.maybePrepared = true
	if _, err := b.conn.ExecContext(ctx, "XA PREPARE "+x.literal()); err != nil {
		return nil, b.fail("XA PREPARE", err)
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
