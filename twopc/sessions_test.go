package twopc_test

import (
	"testing"

	"github.com/txsink/txsink/twopc"
)

func TestSessionsCount(t *testing.T) {
	e := newEnv(t, 2)
	e.job("j", twopc.ModeAuto)
	if got := e.c.Sessions(); got != 0 {
		t.Fatalf("Sessions() = %d before any session, want 0", got)
	}
	e.open("j", "w1", nil)
	e.open("j", "w2", nil)
	e.open("j", "w1", nil) // replaces w1's session: still one per writer
	if got := e.c.Sessions(); got != 2 {
		t.Errorf("Sessions() = %d with writers w1 and w2 open, want 2", got)
	}
}
