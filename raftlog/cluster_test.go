package raftlog_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/txsink/txsink/raftlog"
)

// peer is one node of a test cluster with its state machine.
type peer struct {
	id  string
	n   *raftlog.Node
	sm  *raftlog.Counters
	cfg raftlog.Config
}

// peerAuth sets a node's authentication in its Config.
type peerAuth func(t *testing.T, cfg *raftlog.Config)

func withClusterKey(t *testing.T) peerAuth {
	return withKey(t, "a-cluster-key-of-more-than-32-bytes-for-tests")
}

func withKey(t *testing.T, key string) peerAuth {
	path := raftlog.WriteClusterKey(t, []byte(key))
	return func(t *testing.T, cfg *raftlog.Config) { cfg.ClusterKeyFile = path }
}

func withTLS(t *testing.T) peerAuth {
	ca := raftlog.NewTestCA(t, "txsink test cluster CA")
	return func(t *testing.T, cfg *raftlog.Config) {
		cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSCAFile = ca.NodeFiles(t, cfg.NodeID)
	}
}

func openPeer(t *testing.T, id string, bootstrap bool, auth peerAuth) *peer {
	t.Helper()
	cfg := testConfig(t, t.TempDir())
	cfg.NodeID, cfg.Bootstrap = id, bootstrap
	// The lease at its maximum (the heartbeat timeout) instead of 150ms:
	// adding a voter right after another made the leader step down now and
	// then under -race (ErrLeadershipLost from AddVoter), since the new
	// configuration needs a fresh contact with a just-added follower whose
	// first TLS handshake is slow. Failover does not depend on the lease.
	cfg.LeaderLeaseTimeout = raftlog.DefaultHeartbeatTimeout
	auth(t, &cfg)
	p := &peer{id: id, sm: &raftlog.Counters{}, cfg: cfg}
	p.n = open(t, cfg, p.sm)
	return p
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

func memberIDs(t *testing.T, n *raftlog.Node) []string {
	t.Helper()
	ms, err := n.Members(ctxFor(t))
	if err != nil {
		t.Fatalf("Members: %v", err)
	}
	var ids []string
	for _, m := range ms {
		v := "voter"
		if !m.Voter {
			v = "nonvoter"
		}
		ids = append(ids, m.ID+"/"+v)
	}
	slices.Sort(ids)
	return ids
}

func TestCluster(t *testing.T) {
	for _, tc := range []struct {
		name        string
		auth, wrong func(t *testing.T) peerAuth
	}{
		{"cluster key", withClusterKey, func(t *testing.T) peerAuth { return withKey(t, "another-key-of-more-than-32-bytes-for-tests") }},
		{"mutual TLS", withTLS, withTLS}, // wrong: a certificate of another CA
	} {
		t.Run(tc.name, func(t *testing.T) {
			auth := tc.auth(t)
			n1 := openPeer(t, "n1", true, auth)
			n2 := openPeer(t, "n2", false, auth)
			n3 := openPeer(t, "n3", false, auth)
			n4 := openPeer(t, "n4", false, auth) // non-voter
			// The outsider holds the key (or a CA certificate) but is never
			// added: it must stay out and never receive entries.
			outsider := openPeer(t, "outsider", false, auth)
			// A node with the wrong key or CA: even once added, it gets nothing.
			stranger := openPeer(t, "stranger", false, tc.wrong(t))

			ctx := ctxFor(t)
			if err := n1.n.WaitLeader(ctx); err != nil || !n1.n.IsLeader() {
				t.Fatalf("n1: WaitLeader = %v, leader %v; want the bootstrapped node to lead", err, n1.n.IsLeader())
			}
			// Membership changes only on the leader.
			var nle *raftlog.NotLeaderError
			if err := n2.n.AddVoter(ctx, "n3", n3.n.Addr()); !errors.As(err, &nle) {
				t.Errorf("AddVoter on a non-member = %v, want a NotLeaderError", err)
			}
			for _, p := range []*peer{n2, n3} {
				if err := n1.n.AddVoter(ctx, p.id, p.n.Addr()); err != nil {
					t.Fatalf("AddVoter(%s): %v", p.id, err)
				}
			}
			if err := n1.n.AddNonvoter(ctx, "n4", n4.n.Addr()); err != nil {
				t.Fatalf("AddNonvoter(n4): %v", err)
			}
			if err := n1.n.AddNonvoter(ctx, "stranger", stranger.n.Addr()); err != nil {
				t.Fatalf("AddNonvoter(stranger): %v", err)
			}
			want := []string{"n1/voter", "n2/voter", "n3/voter", "n4/nonvoter", "stranger/nonvoter"}
			if got := memberIDs(t, n1.n); !slices.Equal(got, want) {
				t.Fatalf("Members = %v, want %v", got, want)
			}

			// Adding what is already there appends nothing.
			before := n1.n.Status().LastIndex
			if err := n1.n.AddVoter(ctx, "n2", n2.n.Addr()); err != nil {
				t.Errorf("AddVoter(n2) again: %v", err)
			}
			if err := n1.n.AddNonvoter(ctx, "n4", n4.n.Addr()); err != nil {
				t.Errorf("AddNonvoter(n4) again: %v", err)
			}
			if after := n1.n.Status().LastIndex; after != before {
				t.Errorf("repeating a membership change moved the log from %d to %d, want no new entry", before, after)
			}

			propose(t, n1.n, "a")
			for _, p := range []*peer{n1, n2, n3, n4} {
				poll(t, p.id+" applies a", func() bool { return p.sm.State()["a"] == 1 })
			}
			poll(t, "the stranger refusing the leader", func() bool { return stranger.n.RefusedPeers() >= 1 })
			if st := stranger.n.Status(); st.AppliedIndex != 0 || len(stranger.sm.State()) != 0 || len(st.Members) != 0 {
				t.Errorf("stranger = %+v with state %v, want nothing received", st, stranger.sm.State())
			}
			if err := n1.n.Remove(ctx, "stranger"); err != nil {
				t.Fatalf("Remove(stranger): %v", err)
			}
			_, err := n2.n.Propose(ctx, []byte("x"))
			if !errors.As(err, &nle) || nle.LeaderID != "n1" || nle.LeaderAddr != n1.n.Addr() {
				t.Errorf("Propose on a follower = %v, want a NotLeaderError naming n1 at %s", err, n1.n.Addr())
			}
			if err := n2.n.Remove(ctx, "n3"); !errors.Is(err, raftlog.ErrNotLeader) {
				t.Errorf("Remove on a follower = %v, want ErrNotLeader", err)
			}

			// Kill the leader: one of the other voters takes over.
			if err := n1.n.Close(); err != nil {
				t.Fatalf("Close(n1): %v", err)
			}
			var leader *peer
			poll(t, "a new leader among n2, n3", func() bool {
				for _, p := range []*peer{n2, n3} {
					if p.n.IsLeader() {
						leader = p
						return true
					}
				}
				return false
			})
			if err := leader.n.WaitLeader(ctx); err != nil {
				t.Fatalf("WaitLeader on the new leader: %v", err)
			}
			propose(t, leader.n, "b")
			for _, p := range []*peer{n2, n3, n4} {
				poll(t, p.id+" applies b", func() bool { return p.sm.State()["b"] == 1 })
			}
			if n4.n.IsLeader() || n4.n.Status().Role != "follower" {
				t.Errorf("non-voter n4 is %s, want follower", n4.n.Status().Role)
			}

			// Membership edits on the new leader.
			if err := leader.n.Remove(ctx, "n1"); err != nil {
				t.Fatalf("Remove(n1): %v", err)
			}
			if err := leader.n.Remove(ctx, "n1"); err != nil {
				t.Errorf("Remove(n1) again = %v, want nil", err)
			}
			if err := leader.n.AddVoter(ctx, "n4", n4.n.Addr()); err != nil {
				t.Fatalf("AddVoter(n4) to promote it: %v", err)
			}
			// A known id with a new address moves it (an unreachable
			// non-voter does not hurt the quorum), here to a DNS name, kept
			// as is and not resolved (.invalid never resolves).
			for _, addr := range []string{"127.0.0.1:1", "127.0.0.1:2", "gone.raft.invalid:2"} {
				if err := leader.n.AddNonvoter(ctx, "gone", addr); err != nil {
					t.Fatalf("AddNonvoter(gone, %s): %v", addr, err)
				}
			}
			ms, err := leader.n.Members(ctx)
			if err != nil {
				t.Fatalf("Members: %v", err)
			}
			if i := slices.IndexFunc(ms, func(m raftlog.Member) bool { return m.ID == "gone" }); i < 0 || ms[i].Addr != "gone.raft.invalid:2" {
				t.Errorf("Members = %+v, want gone at gone.raft.invalid:2", ms)
			}
			want = []string{"gone/nonvoter", "n2/voter", "n3/voter", "n4/voter"}
			if got := memberIDs(t, leader.n); !slices.Equal(got, want) {
				t.Errorf("Members = %v, want %v", got, want)
			}
			for _, bad := range []struct {
				name string
				call func() error
			}{
				{"demote a voter with AddNonvoter", func() error { return leader.n.AddNonvoter(ctx, "n2", n2.n.Addr()) }},
				{"empty id", func() error { return leader.n.AddVoter(ctx, "", "127.0.0.1:3") }},
				{"port 0", func() error { return leader.n.AddVoter(ctx, "x", "127.0.0.1:0") }},
				{"unspecified IP", func() error { return leader.n.AddVoter(ctx, "x", "0.0.0.0:3") }},
				{"no port", func() error { return leader.n.AddVoter(ctx, "x", "127.0.0.1") }},
				{"name without port", func() error { return leader.n.AddVoter(ctx, "x", "x.raft.test") }},
				{"not a DNS name", func() error { return leader.n.AddVoter(ctx, "x", "x raft:3") }},
				{"bad IP", func() error { return leader.n.AddVoter(ctx, "x", "10.0.0.300:3") }},
			} {
				if err := bad.call(); !errors.Is(err, raftlog.ErrInvalidMember) {
					t.Errorf("%s = %v, want ErrInvalidMember", bad.name, err)
				}
			}
			if got := memberIDs(t, leader.n); !slices.Equal(got, want) {
				t.Errorf("Members after refused changes = %v, want unchanged %v", got, want)
			}

			// The outsider talked to nobody's cluster: no members, no leader,
			// nothing applied.
			st := outsider.n.Status()
			if st.Role != "follower" || len(st.Members) != 0 || st.LeaderID != "" || st.AppliedIndex != 0 ||
				len(outsider.sm.State()) != 0 {
				t.Errorf("outsider = %+v with state %v, want a follower with no members, leader or entries",
					st, outsider.sm.State())
			}
			if got := fmt.Sprint(memberIDs(t, outsider.n)); got != "[]" {
				t.Errorf("outsider Members = %s, want []", got)
			}
		})
	}
}

func TestSingleNodeHasNoPeers(t *testing.T) {
	n := openLeader(t, testConfig(t, t.TempDir()), &raftlog.Counters{})
	ctx := ctxFor(t)
	if err := n.AddVoter(ctx, "n2", "127.0.0.1:8471"); !errors.Is(err, raftlog.ErrNoPeerAuth) {
		t.Errorf("AddVoter without cluster key or TLS = %v, want ErrNoPeerAuth", err)
	}
	if err := n.AddNonvoter(ctx, "n2", "127.0.0.1:8471"); !errors.Is(err, raftlog.ErrNoPeerAuth) {
		t.Errorf("AddNonvoter without cluster key or TLS = %v, want ErrNoPeerAuth", err)
	}
	// Itself, as it is: a no-op.
	if err := n.AddVoter(ctx, "node1", n.Addr()); err != nil {
		t.Errorf("AddVoter(self) = %v, want nil", err)
	}
	if err := n.Remove(ctx, "node1"); !errors.Is(err, raftlog.ErrInvalidMember) {
		t.Errorf("Remove(last voter) = %v, want ErrInvalidMember", err)
	}
	if got := memberIDs(t, n); !slices.Equal(got, []string{"node1/voter"}) {
		t.Errorf("Members = %v, want [node1/voter]", got)
	}
}

func TestOpenRefusesBadPeerAuth(t *testing.T) {
	ca := raftlog.NewTestCA(t, "ca")
	cert, key, caFile := ca.NodeFiles(t, "node1")
	short := raftlog.WriteClusterKey(t, []byte("too short"))
	tests := []struct {
		name string
		set  func(*raftlog.Config)
	}{
		{"short cluster key", func(c *raftlog.Config) { c.ClusterKeyFile = short }},
		{"missing cluster key", func(c *raftlog.Config) { c.ClusterKeyFile = short + ".missing" }},
		{"TLS without CA", func(c *raftlog.Config) { c.TLSCertFile, c.TLSKeyFile = cert, key }},
		{"TLS and cluster key", func(c *raftlog.Config) {
			c.TLSCertFile, c.TLSKeyFile, c.TLSCAFile, c.ClusterKeyFile = cert, key, caFile, short
		}},
		{"TLS key is not a key", func(c *raftlog.Config) { c.TLSCertFile, c.TLSKeyFile, c.TLSCAFile = cert, caFile, caFile }},
		{"CA is not PEM", func(c *raftlog.Config) { c.TLSCertFile, c.TLSKeyFile, c.TLSCAFile = cert, key, short }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig(t, dir)
			tt.set(&cfg)
			n, err := raftlog.Open(cfg, &raftlog.Counters{})
			if err == nil {
				n.Close()
			}
			if !errors.Is(err, raftlog.ErrInvalidConfig) {
				t.Errorf("Open = %v, want ErrInvalidConfig", err)
			}
		})
	}
}

func TestGoroutinesStopAfterCloseWithPeers(t *testing.T) {
	auth := withClusterKey(t)
	before := runtime.NumGoroutine()

	n1 := openPeer(t, "n1", true, auth)
	n2 := openPeer(t, "n2", false, auth)
	ctx := ctxFor(t)
	if err := n1.n.WaitLeader(ctx); err != nil {
		t.Fatalf("WaitLeader: %v", err)
	}
	if err := n1.n.AddVoter(ctx, "n2", n2.n.Addr()); err != nil {
		t.Fatalf("AddVoter: %v", err)
	}
	propose(t, n1.n, "a")
	poll(t, "n2 applies a", func() bool { return n2.sm.State()["a"] == 1 })
	// A peer that never says a word: its handshake is still pending at Close.
	silent, err := net.Dial("tcp", n1.n.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	for _, p := range []*peer{n1, n2} {
		if err := p.n.Close(); err != nil {
			t.Fatalf("Close(%s): %v", p.id, err)
		}
	}
	silent.SetReadDeadline(time.Now().Add(waitFor))
	if _, err := io.Copy(io.Discard, silent); err != nil {
		t.Errorf("silent connection after Close: %v, want closed by the node (EOF)", err)
	}

	deadline := time.Now().Add(waitFor)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after Close, want <= %d:\n%s",
				runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}
