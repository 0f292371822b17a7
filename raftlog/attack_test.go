package raftlog

import (
	"context"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// A hostile tester: a raw raft client (hashicorp/raft's own
// NetworkTransport) sends a heartbeat of a higher term and an entry to a
// single-node leader. Without the cluster key or a CA certificate it must be
// refused; with them (the control) the same RPCs really do take over, which
// shows the forged RPCs are well-formed and the refusal is the transport's.

// attackerTransport is a raft transport on 127.0.0.1 using auth (nil: plain
// TCP, as raft.NewTCPTransport).
func attackerTransport(t *testing.T, auth peerAuth) raft.Transport {
	t.Helper()
	var tr *raft.NetworkTransport
	if auth == nil {
		var err error
		tr, err = raft.NewTCPTransportWithLogger("127.0.0.1:0", nil, 1, 2*time.Second, hclog.NewNullLogger())
		if err != nil {
			t.Fatal(err)
		}
	} else {
		s, err := newStreamLayer("127.0.0.1:0", nil, auth, handshakeTimeout, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		tr = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream: s, MaxPool: 1, Timeout: 2 * time.Second, Logger: hclog.NewNullLogger(),
		})
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// forge sends a higher-term heartbeat and then an entry carrying "forged"
// to n, and returns the errors of both RPCs.
func forge(t *testing.T, n *Node, tr raft.Transport) (heartbeat, entry error) {
	t.Helper()
	stats := n.raft.Stats()
	term, _ := strconv.ParseUint(stats["term"], 10, 64)
	lastIndex, _ := strconv.ParseUint(stats["last_log_index"], 10, 64)
	lastTerm, _ := strconv.ParseUint(stats["last_log_term"], 10, 64)
	hdr := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("mallory"),
		Addr: tr.EncodePeer("mallory", tr.LocalAddr())}
	req := raft.AppendEntriesRequest{
		RPCHeader:         hdr,
		Term:              term + 10,
		PrevLogEntry:      lastIndex,
		PrevLogTerm:       lastTerm,
		LeaderCommitIndex: lastIndex,
	}
	target := raft.ServerAddress(n.Addr())
	var resp raft.AppendEntriesResponse
	heartbeat = tr.AppendEntries(raft.ServerID(n.cfg.NodeID), target, &req, &resp)
	req.Entries = []*raft.Log{{Index: lastIndex + 1, Term: term + 10, Type: raft.LogCommand, Data: []byte("forged")}}
	req.LeaderCommitIndex = lastIndex + 1
	entry = tr.AppendEntries(raft.ServerID(n.cfg.NodeID), target, &req, &resp)
	return heartbeat, entry
}

func openTestLeader(t *testing.T, cfg Config, sm StateMachine) *Node {
	t.Helper()
	cfg.Dir, cfg.BindAddr, cfg.Bootstrap = t.TempDir(), "127.0.0.1:0", true
	n, err := Open(cfg, sm)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { n.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := n.WaitLeader(ctx); err != nil || !n.IsLeader() {
		t.Fatalf("WaitLeader = %v, leader %v; want a leader", err, n.IsLeader())
	}
	return n
}

func TestForgedRaftRPCsAreRefused(t *testing.T) {
	keyFile := WriteClusterKey(t, testKey)
	ca, otherCA := NewTestCA(t, "cluster CA"), NewTestCA(t, "another CA")
	tlsNode := func(t *testing.T, ca *TestCA, name string) (*tlsAuth, [3]string) {
		cert, key, caFile := ca.NodeFiles(t, name)
		a, err := loadTLS(cert, key, caFile)
		if err != nil {
			t.Fatal(err)
		}
		return a, [3]string{cert, key, caFile}
	}
	_, nodeFiles := tlsNode(t, ca, "node1")
	foreignTLS, _ := tlsNode(t, otherCA, "mallory")
	memberTLS, _ := tlsNode(t, ca, "mallory")

	tests := []struct {
		name     string
		node     func(*Config)
		attacker peerAuth
		control  bool // the attacker has the credentials: the forgery must work
	}{
		{"no auth node, plain attacker", func(*Config) {}, nil, false},
		{"no auth node, keyed attacker", func(*Config) {}, &keyAuth{key: testKey}, false},
		{"keyed node, plain attacker", func(c *Config) { c.ClusterKeyFile = keyFile }, nil, false},
		{"keyed node, wrong key", func(c *Config) { c.ClusterKeyFile = keyFile }, &keyAuth{key: otherKey}, false},
		{"keyed node, right key (control)", func(c *Config) { c.ClusterKeyFile = keyFile }, &keyAuth{key: testKey}, true},
		{"TLS node, plain attacker", func(c *Config) {
			c.TLSCertFile, c.TLSKeyFile, c.TLSCAFile = nodeFiles[0], nodeFiles[1], nodeFiles[2]
		}, nil, false},
		{"TLS node, cert from another CA", func(c *Config) {
			c.TLSCertFile, c.TLSKeyFile, c.TLSCAFile = nodeFiles[0], nodeFiles[1], nodeFiles[2]
		}, foreignTLS, false},
		{"TLS node, key instead of cert", func(c *Config) {
			c.TLSCertFile, c.TLSKeyFile, c.TLSCAFile = nodeFiles[0], nodeFiles[1], nodeFiles[2]
		}, &keyAuth{key: testKey}, false},
		{"TLS node, cluster cert (control)", func(c *Config) {
			c.TLSCertFile, c.TLSKeyFile, c.TLSCAFile = nodeFiles[0], nodeFiles[1], nodeFiles[2]
		}, memberTLS, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cfg Config
			tt.node(&cfg)
			sm := &Counters{}
			n := openTestLeader(t, cfg, sm)
			before := n.Status()

			hbErr, entryErr := forge(t, n, attackerTransport(t, tt.attacker))

			if tt.control {
				if hbErr != nil || entryErr != nil {
					t.Fatalf("control: forged RPCs with valid credentials failed (%v, %v); the test forges badly", hbErr, entryErr)
				}
				eventually(t, "the forged entry applied by the control", func() bool { return sm.State()["forged"] == 1 })
				if got := n.Status().Term; got <= before.Term {
					t.Errorf("control: term %d after the forged heartbeat, want above %d", got, before.Term)
				}
				return
			}
			if hbErr == nil || entryErr == nil {
				t.Errorf("forged heartbeat = %v, forged entry = %v; want both refused", hbErr, entryErr)
			}
			after := n.Status()
			if !n.IsLeader() || after.Term != before.Term || after.LastIndex != before.LastIndex {
				t.Errorf("after the forgery: leader %v, term %d, last index %d; want leader, term %d, index %d",
					n.IsLeader(), after.Term, after.LastIndex, before.Term, before.LastIndex)
			}
			if got := sm.State()["forged"]; got != 0 {
				t.Errorf("forged entry applied %d times, want 0", got)
			}
			eventually(t, "the refused connections counted", func() bool { return n.RefusedPeers() >= 1 })
			// The node still works.
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if got, err := n.Propose(ctx, []byte("real")); err != nil || got != 1 {
				t.Errorf("Propose after the forgery = %v, %v; want 1", got, err)
			}
		})
	}
}
