package raftlog_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/txsink/txsink/raftlog"
)

// TestWaitAppliedOnAFollower: a follower's WaitApplied(i)
// returns only once its state machine has applied entry i. hashicorp/raft's
// AppliedIndex is the last index handed to the FSM goroutine, which may
// not have applied it yet ("DOES NOT mean that the application's FSM has
// yet consumed it"); a forwarded proposal that read the state right after
// WaitApplied then saw the state without its own entry (make chaos with
// CHAOS_NODES=3 saw a checkpoint answered 200 with an empty status). The
// follower's state machine is held on an earlier entry here, so a
// WaitApplied that trusts AppliedIndex fails every time, not by chance.
func TestWaitAppliedOnAFollower(t *testing.T) {
	auth := withClusterKey(t)
	ps := []*peer{openPeer(t, "w1", false, auth), openPeer(t, "w2", false, auth), openPeer(t, "w3", false, auth)}
	var servers []raftlog.Member
	for _, p := range ps {
		servers = append(servers, raftlog.Member{ID: p.id, Addr: p.n.Addr(), Voter: true})
	}
	// The followers' FSMs will stop at the command "block", until the end
	// of the test (before the nodes close: cleanups run last first).
	for _, p := range ps {
		p.sm.Block, p.sm.Blocking = make(chan struct{}), make(chan struct{})
		t.Cleanup(func() { unblock(p) })
	}
	ctx := ctxFor(t)
	for _, p := range ps {
		if err := p.n.BootstrapCluster(ctx, servers); err != nil {
			t.Fatalf("%s: BootstrapCluster: %v", p.id, err)
		}
	}
	leader := oneLeader(t, ctx, ps)
	unblock(leader) // the leader applies everything at once
	f := ps[slices.IndexFunc(ps, func(p *peer) bool { return p != leader })]
	propose(t, leader.n, "block")
	select {
	case <-f.sm.Blocking:
	case <-ctx.Done():
		t.Fatal("the follower's state machine never reached the command block")
	}
	propose(t, leader.n, "x")
	idx := leader.sm.Index()
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	err := f.n.WaitApplied(short, idx)
	if got := f.sm.State()["x"]; err == nil && got != 1 {
		t.Fatalf("%s: WaitApplied(%d) returned nil while its state machine is held before that entry (x=%d); want it to wait",
			f.id, idx, got)
	}
	if !errors.Is(err, raftlog.ErrTimeout) {
		t.Fatalf("%s: WaitApplied(%d) with the state machine held = %v, want ErrTimeout", f.id, idx, err)
	}
}

// unblock lets p's state machine go past the command "block" (once).
func unblock(p *peer) {
	select {
	case <-p.sm.Block:
	default:
		close(p.sm.Block)
	}
}
