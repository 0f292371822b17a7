package mysql

import (
	"testing"
	"time"
)

// TestFenceWithOneReservedConn: Fence must not hold a connection of the
// reserved pool while it rolls a branch back through that pool. Otherwise
// one reserved connection deadlocks a single Fence, and reserved_conns
// concurrent Fences (the start-up backlog runs 4) deadlock each other
// until their contexts end, which the background fence's never does.
func TestFenceWithOneReservedConn(t *testing.T) {
	e := testEnv(t)
	s1 := e.sink("db")
	b, h := prepare(t, s1, e.id("0", 1, 1, 0), put("left", 1))
	killPreparer(b) // a dead process's unjournaled prepared branch

	s2 := e.sink("db", func(c *Config) { c.ReservedConns = 1 })
	ctx := ctxT(t, 5*time.Second)
	if err := s2.Fence(ctx, e.job, "0", nil); err != nil {
		t.Fatalf("Fence with one reserved connection: %v", err)
	}
	if p := e.prepared(); p[gtridOf(t, h)] {
		t.Fatalf("branch still prepared after Fence: %v", p)
	}
	if err := s2.Resolve(ctx, e.id("0", 1, 1, 0), h, false); err != nil {
		t.Fatalf("Resolve(abort) after Fence: %v", err)
	}
}
