package mysql

import (
	"testing"
	"time"

	"github.com/txsink/txsink/twopc"
)

// TestDelayedXACommitFromDeposedNodeCommitsNothingLater: the MySQL side of
// the invariant that a late commit from a node that lost the writer can
// never commit a later transaction. Node 1 prepares x and lets go of it
// (Detach, as it does when the journal gives the writer to another node);
// node 2 commits x from its handle and then writes y for the same writer on
// the same slot. Node 1's delayed XA COMMIT of x, arriving now, names x's
// xid — epoch and seq make it unique to x — so it is refused and y stays
// uncommitted until node 2 commits it.
func TestDelayedXACommitFromDeposedNodeCommitsNothingLater(t *testing.T) {
	e := testEnv(t)
	s1, s2 := e.sink("db"), e.sink("db")
	ctx := ctxT(t, 60*time.Second)

	idX := e.id("w", 1, 1, 0)
	bx, hx := prepare(t, s1, idX, put("x", 1))
	bx.(twopc.Detacher).Detach()
	if err := s2.Resolve(ctx, idX, hx, true); err != nil {
		t.Fatalf("node 2 commits x from its handle after node 1 detached it: %v", err)
	}
	idY := e.id("w", 2, 1, 0) // the writer's next session, same slot
	by, _ := prepare(t, s2, idY, put("y", 1))

	x, _, err := xidOf(idX, hx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.ExecContext(ctx, "XA COMMIT "+x.literal()); err == nil {
		t.Fatal("the delayed XA COMMIT of x succeeded; x was committed already and must be unknown now")
	}
	if got := e.count("k = 'y'"); got != 0 {
		t.Fatalf("y visible after the delayed XA COMMIT of x: %d rows", got)
	}
	if err := by.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if gx, gy := e.count("k = 'x'"), e.count("k = 'y'"); gx != 1 || gy != 1 {
		t.Fatalf("rows: x %d, y %d; want each once", gx, gy)
	}
}
