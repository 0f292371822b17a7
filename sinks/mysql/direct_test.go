package mysql

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txsink/txsink/twopc"
)

// TestDirectAtLeastOnce: a direct branch's writes are invisible until
// Flush commits them, Flush begins the next transaction on the same
// connection, a rejected record leaves the transaction as it was, Close
// rolls back what was not flushed, and nothing is left in XA RECOVER.
func TestDirectAtLeastOnce(t *testing.T) {
	e := testEnv(t)
	s := e.sink("db")
	ctx := ctxT(t, 30*time.Second)
	d, err := s.BeginDirect(ctx, e.id("0", 1, 1, 0), twopc.DirectOptions{Guarantee: twopc.GuaranteeAtLeastOnce})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Write(ctx, []*twopc.Record{put("a", 1), put("b", 2)}); err != nil {
		t.Fatal(err)
	}
	if got := e.count("1"); got != 0 {
		t.Fatalf("%d rows visible before Flush, want 0", got)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.count("1"); got != 2 {
		t.Fatalf("%d rows after Flush, want 2", got)
	}
	// A duplicate key is rejected; the call changes nothing, the branch goes on.
	err = d.Write(ctx, []*twopc.Record{put("c", 3), put("a", 9)})
	var re *twopc.RecordError
	if !errors.As(err, &re) || re.Line != 2 || !errors.Is(err, twopc.ErrRecordRejected) || errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("duplicate key: got %v, want record 2 rejected", err)
	}
	if err := d.Write(ctx, []*twopc.Record{put("d", 4)}); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.count("k IN ('c','d')"); got != 1 {
		t.Fatalf("%d of c, d after the second Flush, want only d", got)
	}
	if err := d.Flush(ctx); err != nil { // nothing new
		t.Fatal(err)
	}
	if err := d.Write(ctx, []*twopc.Record{put("e", 5)}); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.count("k = 'e'"); got != 0 {
		t.Fatal("a record not flushed survived Close")
	}
	if err := d.Write(ctx, []*twopc.Record{put("f", 6)}); !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("Write after Close: got %v, want sink failure", err)
	}
	if p := e.prepared(); len(p) != 0 {
		t.Fatalf("XA branches of a direct branch: %v", p)
	}
	if s.liveBranch(e.id("0", 1, 1, 0)) != nil {
		t.Fatal("closed direct branch still live")
	}
}

// TestDirectFlushFailure: a transaction the server lost (connection
// killed) fails Flush, so the checkpoint is not journaled.
func TestDirectFlushFailure(t *testing.T) {
	e := testEnv(t)
	s := e.sink("db")
	ctx := ctxT(t, 30*time.Second)
	d, err := s.BeginDirect(ctx, e.id("0", 1, 1, 0), twopc.DirectOptions{Guarantee: twopc.GuaranteeAtLeastOnce})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Write(ctx, []*twopc.Record{put("a", 1)}); err != nil {
		t.Fatal(err)
	}
	id := d.(*direct).b.sess.id
	if _, err := e.db.Exec("KILL " + itoa(int(id))); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); !errors.Is(err, twopc.ErrSinkFailure) {
		t.Fatalf("Flush after the connection was killed: got %v, want sink failure", err)
	}
	if got := e.count("1"); got != 0 {
		t.Fatalf("%d rows, want 0", got)
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestDirectNone: every write call commits at once; refused records are
// left out and counted, the rest of the call is kept; a lost connection
// counts the call and the next call reconnects.
func TestDirectNone(t *testing.T) {
	e := testEnv(t)
	s := e.sink("db")
	ctx := ctxT(t, 30*time.Second)
	var failed atomic.Int64
	var lastErr atomic.Value
	opt := twopc.DirectOptions{Guarantee: twopc.GuaranteeNone, OnFailed: func(n int, err error) {
		failed.Add(int64(n))
		lastErr.Store(err.Error())
	}}
	d, err := s.BeginDirect(ctx, e.id("0", 1, 1, 0), opt)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Write(ctx, []*twopc.Record{put("a", 1), put("b", 2)}); err != nil {
		t.Fatal(err)
	}
	if got := e.count("1"); got != 2 {
		t.Fatalf("%d rows right after the write, want 2", got)
	}
	if err := d.Write(ctx, []*twopc.Record{put("c", 3), put("a", 9), put("d", 4), put("b", 9), put("e", 5)}); err != nil {
		t.Fatalf("none Write with refused records: got %v, want nil", err)
	}
	if got, f := e.count("1"), failed.Load(); got != 5 || f != 2 {
		t.Fatalf("%d rows, %d failed; want 5 rows (a-e), 2 failed", got, f)
	}
	id := d.(*direct).b.sess.id
	if _, err := e.db.Exec("KILL " + itoa(int(id))); err != nil {
		t.Fatal(err)
	}
	if err := d.Write(ctx, []*twopc.Record{put("x", 1)}); err != nil {
		t.Fatal(err)
	}
	if f := failed.Load(); f != 3 {
		t.Fatalf("failed %d after a lost connection, want 3 (last error %v)", f, lastErr.Load())
	}
	if err := d.Write(ctx, []*twopc.Record{put("y", 1)}); err != nil {
		t.Fatal(err)
	}
	if got := e.count("k = 'y'"); got != 1 {
		t.Fatal("the write after a lost connection did not reconnect")
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.BeginDirect(ctx, e.id("0", 1, 2, 0), twopc.DirectOptions{Guarantee: twopc.GuaranteeNone}); !errors.Is(err, twopc.ErrInvalid) {
		t.Fatalf("none without OnFailed: got %v", err)
	}
}
