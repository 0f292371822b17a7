package raftlog_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txsink/txsink/raftlog"
)

// oneLeader waits until one of ps leads and has applied what came before.
func oneLeader(t *testing.T, ctx context.Context, ps []*peer) *peer {
	t.Helper()
	var leader *peer
	poll(t, "one leader", func() bool {
		for _, p := range ps {
			if p.n.IsLeader() {
				leader = p
				return true
			}
		}
		return false
	})
	if err := leader.n.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	return leader
}

// TestBootstrapClusterTogether: three empty nodes, none bootstrapped alone,
// each given the same three voters (in different orders) elect one leader
// and replicate; a follower's WaitApplied covers the leader's index.
func TestBootstrapClusterTogether(t *testing.T) {
	auth := withClusterKey(t)
	ps := []*peer{openPeer(t, "b1", false, auth), openPeer(t, "b2", false, auth), openPeer(t, "b3", false, auth)}
	var servers []raftlog.Member
	for _, p := range ps {
		if p.n.HadState() {
			t.Fatalf("%s: HadState on an empty dir", p.id)
		}
		servers = append(servers, raftlog.Member{ID: p.id, Addr: p.n.Addr(), Voter: true})
	}
	ctx := ctxFor(t)
	for i, p := range ps {
		order := slices.Clone(servers)
		slices.Reverse(order[:i+1])
		if err := p.n.BootstrapCluster(ctx, order); err != nil {
			t.Fatalf("%s: BootstrapCluster: %v", p.id, err)
		}
	}
	if err := ps[0].n.BootstrapCluster(ctx, servers); !errors.Is(err, raftlog.ErrCantBootstrap) {
		t.Errorf("second BootstrapCluster = %v, want ErrCantBootstrap", err)
	}
	leader := oneLeader(t, ctx, ps)
	res := propose(t, leader.n, "x")
	idx := leader.sm.Index()
	for _, p := range ps {
		if err := p.n.WaitApplied(ctx, idx); err != nil {
			t.Fatalf("%s: WaitApplied(%d): %v", p.id, idx, err)
		}
		if p.sm.State()["x"] != 1 {
			t.Errorf("%s: after WaitApplied(%d) the state is %v, want x applied (leader answered %v)", p.id, idx, p.sm.State(), res)
		}
	}
	if got := memberIDs(t, leader.n); !slices.Equal(got, []string{"b1/voter", "b2/voter", "b3/voter"}) {
		t.Errorf("members %v", got)
	}

	// WaitApplied of an index nobody wrote ends with the context.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := ps[1].n.WaitApplied(short, idx+1000); !errors.Is(err, raftlog.ErrTimeout) {
		t.Errorf("WaitApplied of a future index = %v, want ErrTimeout", err)
	}

	// Handing leadership over: another voter leads afterwards.
	if err := leader.n.TransferLeadership(ctx); err != nil {
		t.Fatalf("TransferLeadership: %v", err)
	}
	poll(t, "another leader", func() bool {
		for _, p := range ps {
			if p != leader && p.n.IsLeader() {
				return true
			}
		}
		return false
	})
	var nle *raftlog.NotLeaderError
	if err := leader.n.TransferLeadership(ctx); !errors.As(err, &nle) {
		t.Errorf("TransferLeadership on a follower = %v, want NotLeaderError", err)
	}
}

// TestBootstrapClusterRefusals: a list without this node, a bad address
// or a non-voter is refused and changes nothing.
func TestBootstrapClusterRefusals(t *testing.T) {
	p := openPeer(t, "r1", false, withClusterKey(t))
	ctx := ctxFor(t)
	for _, bad := range [][]raftlog.Member{
		{{ID: "other", Addr: "127.0.0.1:1", Voter: true}},
		{{ID: "r1", Addr: "0.0.0.0:1", Voter: true}},
		{{ID: "r1", Addr: p.n.Addr(), Voter: true}, {ID: "r1", Addr: "127.0.0.1:2", Voter: true}},
		{{ID: "r1", Addr: p.n.Addr(), Voter: true}, {ID: "r2", Addr: "127.0.0.1:2", Voter: false}},
	} {
		if err := p.n.BootstrapCluster(ctx, bad); !errors.Is(err, raftlog.ErrInvalidMember) {
			t.Errorf("BootstrapCluster(%v) = %v, want ErrInvalidMember", bad, err)
		}
	}
	if st := p.n.Status(); len(st.Members) != 0 || st.LastIndex != 0 {
		t.Errorf("after refusals: %+v, want no configuration and no log", st)
	}
}

// gateSM blocks Apply of the command "slow" until gate is closed and says
// which index it is blocked on.
type gateSM struct {
	gate    chan struct{}
	blocked atomic.Uint64
}

func (g *gateSM) Apply(index uint64, cmd []byte) any {
	if string(cmd) == "slow" {
		g.blocked.Store(index)
		<-g.gate
	}
	return nil
}
func (g *gateSM) Snapshot() ([]byte, error) { return nil, nil }
func (g *gateSM) Restore([]byte) error      { return nil }

// TestWaitAppliedWaitsForTheStateMachine: raft counts an entry as applied
// once it is handed to the FSM goroutine; WaitApplied must wait until the
// StateMachine's Apply of that entry returned, or a read right after it
// misses the entry.
func TestWaitAppliedWaitsForTheStateMachine(t *testing.T) {
	sm := &gateSM{gate: make(chan struct{})}
	n := openLeader(t, testConfig(t, t.TempDir()), sm)
	var open sync.Once
	release := func() { open.Do(func() { close(sm.gate) }) }
	t.Cleanup(release) // before the node's Close, which waits for Apply
	done := make(chan error, 1)
	go func() {
		_, err := n.Propose(t.Context(), []byte("slow"))
		done <- err
	}()
	poll(t, "Apply of the slow entry to start", func() bool { return sm.blocked.Load() != 0 })
	idx := sm.blocked.Load()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	err := n.WaitApplied(ctx, idx)
	cancel()
	if err == nil {
		t.Fatalf("WaitApplied(%d) returned while the StateMachine was still applying it", idx)
	}
	release()
	ctx, cancel = context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	if err := n.WaitApplied(ctx, idx); err != nil {
		t.Fatalf("WaitApplied(%d) after Apply returned: %v", idx, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Propose: %v", err)
	}
}
