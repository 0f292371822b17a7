package raftlog

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// Nodes advertising DNS names instead of IPs (addr.go): raft keeps the name
// in its configuration and peers resolve it at every dial, so a voter that
// comes back at a new IP behind the same name (a StatefulSet pod) is heard
// again.

// namesWait bounds every wait in these tests.
const namesWait = 10 * time.Second

// fakeDNS stands in for the resolver through the stream layer's dial seam
// (Config.dial): it maps host names to IPs, and a test moves a name to
// another IP the way a pod comes back with a new one. IP literals are
// dialed as they are; an unknown name fails like a missing DNS record.
type fakeDNS struct {
	mu      sync.Mutex
	hosts   map[string]string
	lookups map[string]int
}

func newFakeDNS() *fakeDNS {
	return &fakeDNS{hosts: map[string]string{}, lookups: map[string]int{}}
}

func (d *fakeDNS) set(name, ip string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.hosts[name] = ip
}

// lookupsOf is how many dials resolved name.
func (d *fakeDNS) lookupsOf(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lookups[name]
}

func (d *fakeDNS) dial(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	if net.ParseIP(host) == nil {
		d.mu.Lock()
		ip, ok := d.hosts[host]
		d.lookups[host]++
		d.mu.Unlock()
		if !ok {
			return nil, &net.OpError{Op: "dial", Net: network,
				Err: &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}}
		}
		host = ip
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, net.JoinHostPort(host, port))
}

// freePort returns a TCP port free on every one of ips right now.
func freePort(t *testing.T, ips ...string) int {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", net.JoinHostPort(ips[0], "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		ok := true
		for _, ip := range ips[1:] {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return port
		}
	}
	t.Fatalf("no port free on all of %v", ips)
	return 0
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(namesWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", namesWait, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// namedNode is one node of a test cluster that advertises name:port.
type namedNode struct {
	id, name string
	port     int
	dir      string
	auth     func(cfg *Config) // sets the peer credentials
	n        *Node
	sm       *Counters
}

// open starts nd listening on ip (its "pod IP") and advertising its name,
// on its Dir as it is (so a second open is a restart), dialing peers
// through dial (nil: the system resolver).
func (nd *namedNode) open(t *testing.T, ip string, bootstrap bool, dial dialFunc) {
	t.Helper()
	cfg := Config{
		NodeID:        nd.id,
		Dir:           nd.dir,
		BindAddr:      net.JoinHostPort(ip, strconv.Itoa(nd.port)),
		AdvertiseAddr: net.JoinHostPort(nd.name, strconv.Itoa(nd.port)),
		Bootstrap:     bootstrap,
		// As openPeer: the longest lease, so a membership change under
		// -race does not make the leader step down (not what is tested).
		LeaderLeaseTimeout: DefaultHeartbeatTimeout,
		Logger:             slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
		dial:               dial,
	}
	nd.auth(&cfg)
	nd.sm = &Counters{}
	n, err := Open(cfg, nd.sm)
	if err != nil {
		t.Fatalf("Open(%s): %v", nd.id, err)
	}
	nd.n = n
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("Close(%s): %v", nd.id, err)
		}
	})
}

func (nd *namedNode) addr() string { return net.JoinHostPort(nd.name, strconv.Itoa(nd.port)) }

// checkNamesInConfiguration fails unless leader's configuration lists every
// node at its advertised name, and each node reports that name as its Addr.
func checkNamesInConfiguration(t *testing.T, ctx context.Context, leader *Node, nodes ...*namedNode) {
	t.Helper()
	ms, err := leader.Members(ctx)
	if err != nil {
		t.Fatalf("Members: %v", err)
	}
	got := map[string]string{}
	for _, m := range ms {
		got[m.ID] = m.Addr
	}
	if len(got) != len(nodes) {
		t.Errorf("Members = %+v, want %d members", ms, len(nodes))
	}
	for _, nd := range nodes {
		if got[nd.id] != nd.addr() {
			t.Errorf("Members: %s at %q, want its name %q", nd.id, got[nd.id], nd.addr())
		}
		if a := nd.n.Addr(); a != nd.addr() {
			t.Errorf("%s.Addr() = %q, want the advertised name %q", nd.id, a, nd.addr())
		}
	}
}

func leaderOf(t *testing.T, nodes ...*namedNode) *namedNode {
	t.Helper()
	var leader *namedNode
	waitUntil(t, "a leader", func() bool {
		for _, nd := range nodes {
			if nd.n.IsLeader() {
				leader = nd
				return true
			}
		}
		return false
	})
	ctx, cancel := context.WithTimeout(t.Context(), namesWait)
	defer cancel()
	if err := leader.n.WaitLeader(ctx); err != nil {
		t.Fatalf("WaitLeader(%s): %v", leader.id, err)
	}
	return leader
}

func proposeOn(t *testing.T, n *Node, cmd string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), namesWait)
	defer cancel()
	if _, err := n.Propose(ctx, []byte(cmd)); err != nil {
		t.Fatalf("Propose(%q): %v", cmd, err)
	}
}

func waitApplied(t *testing.T, cmd string, nodes ...*namedNode) {
	t.Helper()
	for _, nd := range nodes {
		waitUntil(t, nd.id+" applies "+cmd, func() bool { return nd.sm.State()[cmd] == 1 })
	}
}

// TestVoterBackAtNewIPBehindSameName replays a StatefulSet pod that comes
// back with a new IP: three nodes advertise n1..n3.raft.test (resolved by a
// fake DNS to 127.0.0.1..3), n3 stops, and restarts on the same Dir at
// 127.0.0.4 while its name moves there. Nothing listens at its old IP, so
// catching up proves the others reached it through the name; the
// configuration keeps the name throughout. With mutual TLS each certificate
// names only the node's DNS name (no IP SAN), so the dialer verifies the
// peer against the name it dialed.
func TestVoterBackAtNewIPBehindSameName(t *testing.T) {
	for _, mode := range []string{"cluster key", "mutual TLS"} {
		t.Run(mode, func(t *testing.T) {
			dns := newFakeDNS()
			ca := NewTestCA(t, "names test CA")
			keyFile := WriteClusterKey(t, []byte("a-cluster-key-of-more-than-32-bytes-for-tests"))
			ips := map[string]string{"n1": "127.0.0.1", "n2": "127.0.0.2", "n3": "127.0.0.3"}
			var nodes []*namedNode
			for _, id := range []string{"n1", "n2", "n3"} {
				nd := &namedNode{id: id, name: id + ".raft.test", dir: t.TempDir()}
				nd.port = freePort(t, ips[id], "127.0.0.4")
				if mode == "cluster key" {
					nd.auth = func(cfg *Config) { cfg.ClusterKeyFile = keyFile }
				} else {
					cert, key, caf := ca.nodeFilesForSANs(t, id, nil, []string{nd.name})
					nd.auth = func(cfg *Config) { cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSCAFile = cert, key, caf }
				}
				dns.set(nd.name, ips[id])
				nodes = append(nodes, nd)
			}
			n1, n2, n3 := nodes[0], nodes[1], nodes[2]
			ctx := formNamed(t, nodes, func(nd *namedNode) string { return ips[nd.id] }, dns.dial)

			// n3's pod goes away; the other two keep the quorum.
			if err := n3.n.Close(); err != nil {
				t.Fatalf("Close(n3): %v", err)
			}
			leader := leaderOf(t, n1, n2)
			proposeOn(t, leader.n, "b")
			waitApplied(t, "b", n1, n2)

			// It comes back on its Dir at a new IP; its name follows.
			dns.set(n3.name, "127.0.0.4")
			before := dns.lookupsOf(n3.name)
			n3.open(t, "127.0.0.4", false, dns.dial)
			if !n3.n.HadState() {
				t.Fatalf("n3 restarted without its raft state")
			}
			waitApplied(t, "b", n3) // missed while it was down
			leader = leaderOf(t, n1, n2, n3)
			proposeOn(t, leader.n, "c")
			waitApplied(t, "c", n1, n2, n3)
			if after := dns.lookupsOf(n3.name); after <= before {
				t.Errorf("n3's name resolved %d times since it moved, want the leader to have dialed it by name", after-before)
			}
			checkNamesInConfiguration(t, ctx, leader.n, n1, n2, n3)
		})
	}
}

// formNamed opens three named nodes (the first bootstraps, at the IP ip
// gives each), adds the other two as voters by their advertised names, as
// a join does, and checks an entry reaches all three with the names kept
// in the configuration. It returns a context bounded by namesWait.
func formNamed(t *testing.T, nodes []*namedNode, ip func(*namedNode) string, dial dialFunc) context.Context {
	t.Helper()
	for i, nd := range nodes {
		nd.open(t, ip(nd), i == 0, dial)
	}
	ctx, cancel := context.WithTimeout(t.Context(), namesWait)
	t.Cleanup(cancel)
	n1 := nodes[0]
	if err := n1.n.WaitLeader(ctx); err != nil {
		t.Fatalf("WaitLeader(n1): %v", err)
	}
	for _, nd := range nodes[1:] {
		// What a joining node sends: its advertised address, a name.
		if err := n1.n.AddVoter(ctx, nd.id, nd.n.Addr()); err != nil {
			t.Fatalf("AddVoter(%s, %s): %v", nd.id, nd.n.Addr(), err)
		}
	}
	proposeOn(t, n1.n, "a")
	waitApplied(t, "a", nodes...)
	checkNamesInConfiguration(t, ctx, n1.n, nodes...)
	return ctx
}

// TestClusterAdvertisingLocalhost runs three nodes that advertise
// localhost:PORT through the system resolver (no seam): the name is what
// raft stores, every dial resolves it, and a node restarted behind the same
// name rejoins.
func TestClusterAdvertisingLocalhost(t *testing.T) {
	if addrs, err := net.DefaultResolver.LookupHost(t.Context(), "localhost"); err != nil || len(addrs) == 0 {
		t.Fatalf("localhost does not resolve here (%v, %v): this test needs the system resolver to answer for it", addrs, err)
	}
	keyFile := WriteClusterKey(t, []byte("a-cluster-key-of-more-than-32-bytes-for-tests"))
	var nodes []*namedNode
	for _, id := range []string{"n1", "n2", "n3"} {
		nodes = append(nodes, &namedNode{id: id, name: "localhost", port: freePort(t, "127.0.0.1"), dir: t.TempDir(),
			auth: func(cfg *Config) { cfg.ClusterKeyFile = keyFile }})
	}
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	ctx := formNamed(t, nodes, func(*namedNode) string { return "127.0.0.1" }, nil)

	// The leader goes away and comes back behind the same name.
	if err := n1.n.Close(); err != nil {
		t.Fatalf("Close(n1): %v", err)
	}
	leader := leaderOf(t, n2, n3)
	proposeOn(t, leader.n, "b")
	n1.open(t, "127.0.0.1", true, nil) // Bootstrap is ignored on a Dir with state
	waitApplied(t, "b", n1, n2, n3)
	leader = leaderOf(t, n1, n2, n3)
	checkNamesInConfiguration(t, ctx, leader.n, n1, n2, n3)
}

// TestOpenDoesNotResolveTheAdvertisedName: a name that does not resolve
// (yet) does not stop a node from starting: .invalid never resolves
// (RFC 6761), as a StatefulSet pod's name does not before the pod is ready.
func TestOpenDoesNotResolveTheAdvertisedName(t *testing.T) {
	nd := &namedNode{id: "solo", name: "solo.raft.invalid", port: freePort(t, "127.0.0.1"), dir: t.TempDir(),
		auth: func(*Config) {}}
	nd.open(t, "127.0.0.1", true, nil)
	ctx, cancel := context.WithTimeout(t.Context(), namesWait)
	defer cancel()
	if err := nd.n.WaitLeader(ctx); err != nil {
		t.Fatalf("WaitLeader: %v", err)
	}
	if got := nd.n.Addr(); got != nd.addr() {
		t.Errorf("Addr() = %q, want the advertised name %q", got, nd.addr())
	}
	proposeOn(t, nd.n, "a")
	checkNamesInConfiguration(t, ctx, nd.n, nd)
}

// TestOpenRefusesBadAdvertiseAddr: a bad advertised address is refused by
// Open before anything is created or listened on.
func TestOpenRefusesBadAdvertiseAddr(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:8471", "[::]:8471", "bad name:8471", "txsink-0.txsink:0", "txsink-0.txsink"} {
		dir := t.TempDir()
		_, err := Open(Config{Dir: dir, BindAddr: "127.0.0.1:0", AdvertiseAddr: addr, Bootstrap: true}, &Counters{})
		if !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("Open with AdvertiseAddr %q = %v, want ErrInvalidConfig", addr, err)
		}
	}
}

// TestTLSDialerChecksTheDialedName: with names, the dialer verifies the
// peer's certificate against the name it dialed, not the IP the name
// resolved to. So a certificate must carry the advertised DNS name as a SAN.
func TestTLSDialerChecksTheDialedName(t *testing.T) {
	ca := NewTestCA(t, "cluster CA")
	dns := newFakeDNS()
	dns.set("peer.raft.test", "127.0.0.1")
	for _, tt := range []struct {
		name   string
		ips    []net.IP
		dns    []string
		wantOK bool
	}{
		{"certificate for the dialed name", nil, []string{"peer.raft.test"}, true},
		{"certificate for the IP the name resolves to only", []net.IP{net.IPv4(127, 0, 0, 1)}, nil, false},
		{"certificate for another name", nil, []string{"other.raft.test"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srvAuth, err := loadTLS(ca.nodeFilesForSANs(t, "peer", tt.ips, tt.dns))
			if err != nil {
				t.Fatal(err)
			}
			srv, err := newStreamLayer("127.0.0.1:0", nil, srvAuth, time.Second, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			cliAuth, err := loadTLS(ca.nodeFilesForSANs(t, "dialer", nil, []string{"dialer.raft.test"}))
			if err != nil {
				t.Fatal(err)
			}
			cli, err := newStreamLayer("127.0.0.1:0", nil, cliAuth, time.Second, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			cli.dial = dns.dial
			port := strconv.Itoa(srv.ln.Addr().(*net.TCPAddr).Port)
			conn, err := cli.Dial(raft.ServerAddress("peer.raft.test:"+port), 5*time.Second)
			if err == nil {
				conn.Close()
			}
			if (err == nil) != tt.wantOK {
				t.Errorf("Dial(peer.raft.test) = %v, want ok %v", err, tt.wantOK)
			}
		})
	}
}
