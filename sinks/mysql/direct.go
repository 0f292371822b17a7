package mysql

import (
	"context"
	"errors"
	"fmt"

	"github.com/txsink/txsink/twopc"
)

// Direct branches serve jobs with guarantee at_least_once or none (see
// twopc.DirectBranch and DESIGN.md "Direct branches"). One pins one
// connection for the session's life and runs the same statements as an XA
// branch (Write is shared, savepoints and rejected records included)
// inside plain transactions: at_least_once commits at each checkpoint
// (Flush) and begins the next on the same connection; none commits every
// write call at once. No marker row, no XA: nothing is ever in doubt, so
// Fence and Resolve never meet them.

var _ twopc.DirectSink = (*Sink)(nil)

// BeginDirect implements twopc.DirectSink: it takes the connection (a full
// pool is twopc.ErrBackpressure, as for Begin); the transaction begins at
// the first Write.
func (s *Sink) BeginDirect(ctx context.Context, id twopc.BranchID, opt twopc.DirectOptions) (twopc.DirectBranch, error) {
	if opt.Guarantee != twopc.GuaranteeAtLeastOnce && opt.Guarantee != twopc.GuaranteeNone {
		return nil, fmt.Errorf("%w: mysql sink %q: direct branch %v with guarantee %q", twopc.ErrInvalid, s.cfg.Name, id, opt.Guarantee)
	}
	if opt.Guarantee == twopc.GuaranteeNone && opt.OnFailed == nil {
		return nil, fmt.Errorf("%w: mysql sink %q: direct branch %v: guarantee none needs OnFailed", twopc.ErrInvalid, s.cfg.Name, id)
	}
	if id.Sink != s.cfg.Name {
		return nil, fmt.Errorf("%w: branch %v is not of mysql sink %q", twopc.ErrInvalid, id, s.cfg.Name)
	}
	if s.liveBranch(id) != nil {
		return nil, fmt.Errorf("%w: branch %v is already open", twopc.ErrInvalid, id)
	}
	conn, err := s.takeConn(ctx, id)
	if err != nil {
		return nil, err
	}
	b := &branch{s: s, id: id, conn: conn, plain: true}
	s.mu.Lock()
	k := liveKey{id.Job, id.Writer, id.Epoch, id.Seq}
	if _, dup := s.live[k]; dup {
		s.mu.Unlock()
		_ = conn.Close()
		return nil, fmt.Errorf("%w: branch %v is already open", twopc.ErrInvalid, id)
	}
	s.live[k] = b // Sink.Close drops its connection
	s.mu.Unlock()
	return &direct{b: b, none: opt.Guarantee == twopc.GuaranteeNone, onFailed: opt.OnFailed}, nil
}

type direct struct {
	b        *branch
	none     bool
	onFailed func(int, error)
	closed   bool
}

func (d *direct) failf(format string, args ...any) error {
	return fmt.Errorf("%w: mysql sink %q: direct branch %v: %s", twopc.ErrSinkFailure, d.b.s.cfg.Name, d.b.id, fmt.Sprintf(format, args...))
}

// Write runs recs in the open transaction (at_least_once), or commits them
// at once (none).
func (d *direct) Write(ctx context.Context, recs []*twopc.Record) error {
	if d.closed {
		return d.failf("write to a closed branch")
	}
	if !d.none {
		return d.b.Write(ctx, recs)
	}
	return d.writeNone(ctx, recs)
}

// writeNone commits recs in one transaction, leaving out the records the
// server refuses for good (each is counted), and counts the rest of the
// call as failed if the server or the connection fails (the next call
// takes a new connection). It returns nil: nothing of a none job's write
// is the caller's to retry.
func (d *direct) writeNone(ctx context.Context, recs []*twopc.Record) error {
	b := d.b
	b.mu.Lock()
	if b.state == stateFailed || b.conn == nil {
		b.dropConn()
		b.state = stateNew
		b.mu.Unlock()
		conn, err := b.s.takeConn(ctx, b.id)
		if err != nil {
			d.onFailed(len(recs), err)
			return nil
		}
		b.mu.Lock()
		b.conn = conn
	}
	b.mu.Unlock()
	rest := recs
	for len(rest) > 0 {
		err := b.Write(ctx, rest)
		if err == nil {
			break
		}
		re, ok := errors.AsType[*twopc.RecordError](err)
		if !ok || !errors.Is(err, twopc.ErrRecordRejected) || errors.Is(err, twopc.ErrSinkFailure) || re.Line < 1 || re.Line > len(rest) {
			d.onFailed(len(rest), err)
			d.rollback(ctx)
			return nil
		}
		// The call was undone: run it again without the refused record.
		d.onFailed(1, err)
		rest = append(rest[:re.Line-1:re.Line-1], rest[re.Line:]...)
	}
	if err := d.commit(ctx); err != nil {
		d.onFailed(len(rest), err)
	}
	return nil
}

// commit commits the open transaction, if any; the next Write begins the
// next one on the same connection.
func (d *direct) commit(ctx context.Context) error {
	b := d.b
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case stateNew:
		return nil
	case stateActive:
	default:
		return d.failf("commit in state %s", b.state)
	}
	if _, err := b.conn.ExecContext(ctx, "COMMIT"); err != nil {
		// Committed or not is unknown: the caller replays (at_least_once)
		// or counts (none). The connection is not trusted any more.
		err = b.fail("COMMIT", err)
		b.dropConn()
		return err
	}
	b.state = stateNew
	return nil
}

// rollback ends the open transaction, dropping the connection if that
// fails. b.mu is not held.
func (d *direct) rollback(ctx context.Context) {
	b := d.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn != nil && (b.state == stateActive || b.state == stateFailed) {
		if _, err := b.conn.ExecContext(ctx, "ROLLBACK"); err != nil {
			b.dropConn()
			b.state = stateFailed
			return
		}
		b.state = stateNew
	}
}

// Flush commits what the branch wrote since the last Flush (at_least_once).
func (d *direct) Flush(ctx context.Context) error {
	if d.closed {
		return d.failf("flush of a closed branch")
	}
	if d.none {
		return nil
	}
	return d.commit(ctx)
}

// Close rolls back what was not flushed and gives the connection back.
func (d *direct) Close(ctx context.Context) error {
	if d.closed {
		return nil
	}
	d.closed = true
	d.rollback(ctx)
	b := d.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == stateFailed {
		b.dropConn()
	}
	b.state = stateDone
	b.release() // returns a clean connection (or none) and forgets the branch
	return nil
}
