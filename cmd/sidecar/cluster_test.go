package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/internal/testenv"
	"github.com/txsink/txsink/twopc"
)

// Cluster tests with real processes: "sidecar run" nodes on 127.0.0.1 with
// free ports, one cluster key file (0600) and one API token shared by all,
// and an in-process kfake broker for their Kafka sink.

const clusterToken = "cluster-test-token"

// clusterEnv is what the nodes of one test share.
type clusterEnv struct {
	t         *testing.T
	dir       string
	keyFile   string
	tokenFile string
	broker    string
	// tlsCert, tlsKey: when set, every node serves its API over TLS with
	// this certificate (self-signed, 127.0.0.1), trusted through pool.
	tlsCert, tlsKey string
	pool            *x509.CertPool
}

// scheme of the nodes' API.
func (e *clusterEnv) scheme() string {
	if e.tlsCert != "" {
		return "https"
	}
	return "http"
}

func newClusterEnv(t *testing.T) *clusterEnv {
	t.Helper()
	dir, err := os.MkdirTemp("", "txsink-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &clusterEnv{t: t, dir: dir, keyFile: filepath.Join(dir, "cluster.key"), tokenFile: filepath.Join(dir, "token"),
		broker: kafkatest.Addr(kafkatest.NewCluster(t))}
	if err := os.WriteFile(e.keyFile, []byte("a-cluster-key-for-tests-of-more-than-32-bytes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.tokenFile, []byte(clusterToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

// freeAddrs returns n distinct free 127.0.0.1 addresses (listened on and
// closed; the nodes bind them a moment later).
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

// clusterNode is one sidecar process.
type clusterNode struct {
	id, http, raft string
	scheme         string
	cmd            *exec.Cmd
	stdout, stderr *testenv.Buffer
	done           chan error
	exit           error
	c              *client.Client
	stopOnce       sync.Once
}

// node writes a node's config (http and raft on the given addresses) and
// returns it unstarted; args go to "sidecar run" after the config.
func (e *clusterEnv) node(id, httpAddr, raftAddr string, withKey bool, args ...string) *clusterNode {
	t := e.t
	t.Helper()
	ndir := filepath.Join(e.dir, id)
	if err := os.MkdirAll(ndir, 0o700); err != nil {
		t.Fatal(err)
	}
	key := ""
	if withKey {
		key = "cluster_key_file: " + e.keyFile + "\n"
	}
	if e.tlsCert != "" {
		key += "tls_cert_file: " + e.tlsCert + "\ntls_key_file: " + e.tlsKey + "\n"
	}
	conf := filepath.Join(ndir, "txsink.yaml")
	yaml := fmt.Sprintf(`node_id: %s
data_dir: %s
http_addr: %s
raft_addr: %s
socket: "off"
token_file: %s
%sjoin_timeout: 15s
sink_wait: 10s
shutdown_timeout: 10s
sinks:
  events:
    kind: kafka
    brokers: [%q]
    default_topic: events
    transaction_timeout: 30s
`, id, filepath.Join(ndir, "data"), httpAddr, raftAddr, e.tokenFile, key, e.broker)
	if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	n := &clusterNode{id: id, http: httpAddr, raft: raftAddr, stdout: &testenv.Buffer{}, stderr: &testenv.Buffer{},
		done: make(chan error, 1)}
	opts := []client.Option{client.WithToken(clusterToken)}
	if e.pool != nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: e.pool, MinVersion: tls.VersionTLS12}
		opts = append(opts, client.WithHTTPClient(&http.Client{Transport: tr}))
	}
	n.c = client.New(e.scheme()+"://"+httpAddr, opts...)
	n.scheme = e.scheme()
	n.cmd = exec.Command(sidecarBinary(t), append([]string{"run", "--config", conf}, args...)...)
	n.cmd.Stdout, n.cmd.Stderr = n.stdout, n.stderr
	return n
}

func (n *clusterNode) start(t *testing.T) {
	t.Helper()
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { n.done <- n.cmd.Wait() }()
	t.Cleanup(func() {
		n.stop(t, syscall.SIGTERM)
		if strings.Contains(n.stderr.String(), "WARNING: DATA RACE") {
			t.Errorf("%s: the race detector reported a data race (TXSINK_TEST_BINARY_RACE=1)", n.id)
		}
		if t.Failed() {
			t.Logf("%s stderr:\n%s", n.id, n.stderr.String())
		}
	})
}

// stop signals the node and waits (10 s, then kill) for it to exit.
func (n *clusterNode) stop(t *testing.T, sig syscall.Signal) error {
	n.stopOnce.Do(func() {
		start := time.Now()
		defer func() { t.Logf("%s stopped by %v in %s", n.id, sig, time.Since(start).Round(time.Millisecond)) }()
		_ = n.cmd.Process.Signal(sig)
		select {
		case n.exit = <-n.done:
		case <-time.After(15 * time.Second):
			_ = n.cmd.Process.Kill()
			n.exit = <-n.done
			t.Errorf("%s did not stop within 15s of %v", n.id, sig)
		}
	})
	return n.exit
}

// waitListening waits until the node finished start-up.
func (n *clusterNode) waitListening(t *testing.T) {
	t.Helper()
	start := time.Now()
	defer func() { t.Logf("%s ready after waiting %s", n.id, time.Since(start).Round(time.Millisecond)) }()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(n.stdout.String(), "txsink listening") {
		select {
		case err := <-n.done:
			n.done <- err
			t.Fatalf("%s exited during start-up: %v\n%s", n.id, err, n.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready within 20s:\n%s", n.id, n.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// eventually polls cond every 50 ms for at most 15 s.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 15s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// converged checks that every node sees the same leader and exactly the
// members want (id → voter), each with its API address and reachable.
func converged(ctx context.Context, nodes []*clusterNode, want map[string]bool) (leader string, err error) {
	apiOf := map[string]string{}
	for _, n := range nodes {
		apiOf[n.id] = n.scheme + "://" + n.http
	}
	for _, n := range nodes {
		st, err := n.c.Cluster(ctx)
		if err != nil {
			return "", fmt.Errorf("%s: %w", n.id, err)
		}
		if st.Leader == "" || (leader != "" && st.Leader != leader) {
			return "", fmt.Errorf("%s sees leader %q (others %q)", n.id, st.Leader, leader)
		}
		leader = st.Leader
		if st.LeaderAPIAddr != apiOf[leader] {
			return "", fmt.Errorf("%s: leader API %q, want %q", n.id, st.LeaderAPIAddr, apiOf[leader])
		}
		if len(st.Members) != len(want) {
			return "", fmt.Errorf("%s sees members %+v, want %v", n.id, st.Members, want)
		}
		for _, m := range st.Members {
			v, ok := want[m.ID]
			if !ok || v != m.Voter || m.APIAddr != apiOf[m.ID] || !m.Reachable || m.RaftAddr == "" {
				return "", fmt.Errorf("%s sees member %+v, want voter %v, api %s, reachable", n.id, m, v, apiOf[m.ID])
			}
		}
	}
	return leader, nil
}

func byID(nodes []*clusterNode, id string) *clusterNode {
	i := slices.IndexFunc(nodes, func(n *clusterNode) bool { return n.id == id })
	if i < 0 {
		return nil
	}
	return nodes[i]
}

// TestClusterJoinForwardRemove: node1 alone, node2 and node3 join through
// node1; a follower's calls (a job, a session, records, a checkpoint) go
// through the leader's journal and are visible on every node; join without
// the token is 401; nodes are removed through a follower, the leader last
// (it hands over first), and the last voter cannot be removed.
func TestClusterJoinForwardRemove(t *testing.T) {
	e := newClusterEnv(t)
	a := freeAddrs(t, 6)
	n1 := e.node("node1", a[0], a[1], true)
	n1.start(t)
	n1.waitListening(t)
	n2 := e.node("node2", a[2], a[3], true, "--join", n1.http)
	n3 := e.node("node3", a[4], a[5], true, "--join", "http://"+n1.http+","+n1.http)
	n2.start(t)
	n3.start(t)
	n2.waitListening(t)
	n3.waitListening(t)
	nodes := []*clusterNode{n1, n2, n3}
	ctx := t.Context()
	start := time.Now()
	step := func(what string) { t.Logf("%-40s at %s", what, time.Since(start).Round(time.Millisecond)) }
	var leader string
	eventually(t, "three members, one leader", func() (err error) {
		leader, err = converged(ctx, nodes, map[string]bool{"node1": true, "node2": true, "node3": true})
		return err
	})
	step("3 members converged")
	// The operator's view from any node lists each member's API address.
	out, err := exec.Command(sidecarBinary(t), "status", "--addr", "http://"+n3.http, "--token-file", e.tokenFile).CombinedOutput()
	if err != nil {
		t.Fatalf("sidecar status: %v\n%s", err, out)
	}
	for _, n := range nodes {
		if want := fmt.Sprintf("%s %s voter http://%s\n", n.id, n.raft, n.http); !strings.Contains(string(out), want) {
			t.Errorf("sidecar status lacks %q:\n%s", want, out)
		}
	}

	// A follower's calls go through the leader's journal.
	var follower *clusterNode
	for _, n := range nodes {
		if n.id != leader {
			follower = n
		}
	}
	if _, err := follower.c.PutJob(ctx, "fwd", twopc.ModeAuto, nil); err != nil {
		t.Fatalf("PUT /v1/jobs/fwd on follower %s: %v", follower.id, err)
	}
	// Visible on the follower at once (it waited for the index), on the others soon.
	if _, err := follower.c.Job(ctx, "fwd"); err != nil {
		t.Fatalf("GET on the follower right after its PUT: %v", err)
	}
	for _, n := range nodes {
		eventually(t, n.id+" sees job fwd", func() error { _, err := n.c.Job(ctx, "fwd"); return err })
	}
	s, err := follower.c.OpenSession(ctx, "fwd", "w0", nil)
	if err != nil {
		t.Fatalf("open session on follower: %v", err)
	}
	if _, err := follower.c.WriteNDJSON(ctx, "fwd", "w0", s.Epoch, client.Seq(1), []byte(`{"sink":"events","key":"k1","value":"one"}`+"\n"+`{"sink":"events","key":"k2","value":"two"}`)); err != nil {
		t.Fatalf("write on follower: %v", err)
	}
	cp, err := follower.c.Checkpoint(ctx, "fwd", "w0", s.Epoch, 1, []byte("state-1"), "")
	if err != nil || cp.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint on follower: %+v %v, want committed", cp, err)
	}
	step("follower's checkpoint committed")
	recs := kafkatest.ReadCommitted(ctx, t, e.broker, "events", 2)
	if len(recs) != 2 {
		t.Fatalf("read %d committed records, want 2", len(recs))
	}
	for _, n := range nodes {
		eventually(t, n.id+" sees checkpoint 1 committed", func() error {
			j, err := n.c.Job(ctx, "fwd")
			if err != nil {
				return err
			}
			if len(j.Writers) != 1 || j.Writers[0].LastCommitted != 1 || j.Writers[0].Owner != follower.id {
				return fmt.Errorf("writers %+v", j.Writers)
			}
			return nil
		})
	}

	step("every node sees the checkpoint")
	// Joining again with the same id and addresses (through a follower)
	// is a 200 that appends nothing.
	before, err := byID(nodes, leader).c.Cluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	m, err := follower.c.Join(ctx, api.JoinRequest{ID: n3.id, RaftAddr: n3.raft, APIAddr: "http://" + n3.http, Voter: &yes})
	if err != nil || m.ID != n3.id || m.APIAddr != "http://"+n3.http || !m.Voter {
		t.Fatalf("repeated join of node3: %+v %v", m, err)
	}
	if after, err := byID(nodes, leader).c.Cluster(ctx); err != nil || after.LastIndex != before.LastIndex {
		t.Errorf("repeated join moved the leader's log from %d to %d (%v), want no entry", before.LastIndex, after.LastIndex, err)
	}
	// Joining without the token is 401 and changes nothing.
	body := `{"id":"intruder","raft_addr":"127.0.0.1:1","api_addr":"http://127.0.0.1:2"}`
	resp, err := http.Post("http://"+n1.http+"/v1/cluster/join", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("join without the token: %s, want 401", resp.Status)
	}
	if st, err := n1.c.Cluster(ctx); err != nil || len(st.Members) != 3 {
		t.Errorf("after the refused join: %+v %v, want 3 members", st, err)
	}

	// Removal through a follower: first a follower, then the leader itself.
	var other *clusterNode // a follower that stays
	for _, n := range nodes {
		if n.id != leader && n != follower {
			other = n
		}
	}
	if err := other.c.RemoveNode(ctx, follower.id); err != nil {
		t.Fatalf("DELETE /v1/cluster/nodes/%s through %s: %v", follower.id, other.id, err)
	}
	rest := []*clusterNode{byID(nodes, leader), other}
	eventually(t, "two members after removing "+follower.id, func() error {
		_, err := converged(ctx, rest, map[string]bool{leader: true, other.id: true})
		return err
	})
	step("follower removed")
	if err := other.c.RemoveNode(ctx, follower.id); client.Code(err) != api.CodeNodeNotFound {
		t.Errorf("removing %s again: %v, want 404 node_not_found", follower.id, err)
	}
	if err := other.c.RemoveNode(ctx, leader); err != nil {
		t.Fatalf("removing the leader %s through %s: %v", leader, other.id, err)
	}
	step("leader removed")
	eventually(t, other.id+" alone leads", func() error {
		_, err := converged(ctx, []*clusterNode{other}, map[string]bool{other.id: true})
		return err
	})
	if err := other.c.RemoveNode(ctx, other.id); client.Code(err) != api.CodeMembershipConflict {
		t.Errorf("removing the last voter: %v, want 409 membership_conflict", err)
	}
	step("survivor alone")
	// The survivor still journals alone.
	if _, err := other.c.PutJob(ctx, "after", twopc.ModeAuto, nil); err != nil {
		t.Errorf("PUT on the last voter: %v", err)
	}
}

// TestClusterBootstrapExpect: three nodes with the same join list and
// bootstrap_expect 3, started in random order, form one cluster.
func TestClusterBootstrapExpect(t *testing.T) {
	e := newClusterEnv(t)
	a := freeAddrs(t, 6)
	join := strings.Join([]string{a[0], a[2], a[4]}, ",")
	nodes := []*clusterNode{
		e.node("node1", a[0], a[1], true, "--join", join, "--bootstrap-expect", "3"),
		e.node("node2", a[2], a[3], true, "--join", join, "--bootstrap-expect", "3"),
		e.node("node3", a[4], a[5], true, "--join", join, "--bootstrap-expect", "3"),
	}
	order := rand.Perm(3)
	t.Logf("start order: %v", order)
	for _, i := range order {
		nodes[i].start(t)
		time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
	}
	for _, n := range nodes {
		n.waitListening(t)
	}
	ctx := t.Context()
	var leader string
	eventually(t, "three members, one leader", func() (err error) {
		leader, err = converged(ctx, nodes, map[string]bool{"node1": true, "node2": true, "node3": true})
		return err
	})
	// Each node bootstrapped, or found the leader first (state arrived, or
	// a node answered with a leader) and joined. One bootstrapped node can
	// be enough: hashicorp/raft lets a node with no configuration vote, so
	// the first to bootstrap may win the election with the votes of nodes
	// still discovering, which then find its leader and join (seen under
	// the race detector's slowdown).
	bootstrapped := 0
	for _, n := range nodes {
		log := n.stderr.String()
		switch {
		case strings.Contains(log, "bootstrapped the cluster with the nodes found"):
			bootstrapped++
		case strings.Contains(log, "not bootstrapping"), strings.Contains(log, "joining it instead of bootstrapping"):
		default:
			t.Errorf("%s: neither bootstrapped nor joined, says its log", n.id)
		}
	}
	if bootstrapped < 1 {
		t.Errorf("no node bootstrapped")
	}
	// A proposal on a follower works here too.
	f := nodes[0]
	if f.id == leader {
		f = nodes[1]
	}
	if _, err := f.c.PutJob(ctx, "be", twopc.ModeAuto, nil); err != nil {
		t.Fatalf("PUT on follower %s: %v", f.id, err)
	}
}

// TestClusterNonVoterLeaves: a non-voter joins, then leaves the cluster
// on SIGTERM; a voter stopped afterwards stays a member.
func TestClusterNonVoterLeaves(t *testing.T) {
	e := newClusterEnv(t)
	a := freeAddrs(t, 4)
	n1 := e.node("node1", a[0], a[1], true)
	n1.start(t)
	n1.waitListening(t)
	n2 := e.node("node2", a[2], a[3], true, "--join", n1.http, "--voter=false")
	n2.start(t)
	n2.waitListening(t)
	ctx := t.Context()
	eventually(t, "a voter and a non-voter", func() error {
		_, err := converged(ctx, []*clusterNode{n1, n2}, map[string]bool{"node1": true, "node2": false})
		return err
	})
	// The non-voter forwards too.
	if _, err := n2.c.PutJob(ctx, "nv", twopc.ModeAuto, nil); err != nil {
		t.Fatalf("PUT on the non-voter: %v", err)
	}
	if err := n2.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("non-voter exit: %v\n%s", err, n2.stderr.String())
	}
	if !strings.Contains(n2.stderr.String(), "non-voter left the cluster") {
		t.Errorf("non-voter log lacks its leave:\n%s", n2.stderr.String())
	}
	eventually(t, "node1 alone", func() error {
		_, err := converged(ctx, []*clusterNode{n1}, map[string]bool{"node1": true})
		return err
	})
}

// TestClusterJoinNeedsPeerCredentials: a node with --join but no cluster
// key (or raft TLS) refuses to start and says why.
func TestClusterJoinNeedsPeerCredentials(t *testing.T) {
	e := newClusterEnv(t)
	a := freeAddrs(t, 4)
	n1 := e.node("node1", a[0], a[1], true)
	n1.start(t)
	n1.waitListening(t)
	n2 := e.node("node2", a[2], a[3], false, "--join", n1.http)
	n2.start(t)
	var err error
	select {
	case err = <-n2.done:
		n2.done <- err
	case <-time.After(15 * time.Second):
		t.Fatal("a node joining without a cluster key kept running")
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Errorf("exit: %v, want a failure", err)
	}
	if !strings.Contains(n2.stderr.String(), "a cluster needs cluster_key_file or raft TLS") {
		t.Errorf("stderr lacks the reason:\n%s", n2.stderr.String())
	}
	if st, err := n1.c.Cluster(t.Context()); err != nil || len(st.Members) != 1 {
		t.Errorf("node1 after the refused start: %+v %v, want itself only", st, err)
	}

	// A node with a key joining a single node without one: the leader
	// cannot add a peer, and the joiner stops with its answer.
	a2 := freeAddrs(t, 4)
	lone := e.node("lone", a2[0], a2[1], false)
	lone.start(t)
	lone.waitListening(t)
	n3 := e.node("node3", a2[2], a2[3], true, "--join", lone.http)
	n3.start(t)
	select {
	case err = <-n3.done:
		n3.done <- err
	case <-time.After(15 * time.Second):
		t.Fatal("a node joining a key-less node kept running")
	}
	if !errors.As(err, &ee) || ee.ExitCode() == 0 || !strings.Contains(n3.stderr.String(), "peers need a cluster key or TLS") {
		t.Errorf("joining a key-less node: exit %v, want a failure naming the missing peer credentials:\n%s", err, n3.stderr.String())
	}
	if st, err := lone.c.Cluster(t.Context()); err != nil || len(st.Members) != 1 {
		t.Errorf("the key-less node after the refused join: %+v %v, want itself only", st, err)
	}
}

// TestClusterSurvivesLeaderKill: kill -9 of the leader of three; the other
// two elect a leader and take calls; the killed node, restarted with the
// same command, comes back as the member it was (its state wins over
// --join).
func TestClusterSurvivesLeaderKill(t *testing.T) {
	e := newClusterEnv(t)
	a := freeAddrs(t, 6)
	n1 := e.node("node1", a[0], a[1], true)
	n1.start(t)
	n1.waitListening(t)
	mk := func(id, h, r string) *clusterNode { return e.node(id, h, r, true, "--join", n1.http) }
	n2, n3 := mk("node2", a[2], a[3]), mk("node3", a[4], a[5])
	n2.start(t)
	n3.start(t)
	n2.waitListening(t)
	n3.waitListening(t)
	nodes := []*clusterNode{n1, n2, n3}
	all := map[string]bool{"node1": true, "node2": true, "node3": true}
	ctx := t.Context()
	var leader string
	eventually(t, "three members", func() (err error) { leader, err = converged(ctx, nodes, all); return err })
	dead := byID(nodes, leader)
	if err := dead.stop(t, syscall.SIGKILL); err == nil {
		t.Fatalf("%s exited cleanly after SIGKILL?", dead.id)
	}
	killedAt := time.Now()
	var alive []*clusterNode
	for _, n := range nodes {
		if n != dead {
			alive = append(alive, n)
		}
	}
	var newLeader string
	eventually(t, "a new leader among the survivors", func() error {
		st, err := alive[0].c.Cluster(ctx)
		if err != nil {
			return err
		}
		if st.Leader == "" || st.Leader == dead.id {
			return fmt.Errorf("leader %q", st.Leader)
		}
		newLeader = st.Leader
		return nil
	})
	t.Logf("%s killed; %s leads %s later", dead.id, newLeader, time.Since(killedAt).Round(time.Millisecond))
	for _, n := range alive {
		if _, err := n.c.PutJob(ctx, "after-kill-"+n.id, twopc.ModeAuto, nil); err != nil {
			t.Fatalf("PUT on survivor %s: %v", n.id, err)
		}
	}
	t.Logf("survivors took calls %s after the kill", time.Since(killedAt).Round(time.Millisecond))
	// Restart the killed node with its original command.
	again := e.node(dead.id, dead.http, dead.raft, true, dead.cmd.Args[4:]...)
	again.start(t)
	again.waitListening(t)
	t.Logf("%s restarted %s after the kill", dead.id, time.Since(killedAt).Round(time.Millisecond))
	if dead.id != "node1" && !strings.Contains(again.stderr.String(), "join and bootstrap_expect are ignored") {
		t.Errorf("restarted %s did not say it ignores --join:\n%s", dead.id, again.stderr.String())
	}
	nodes = append(alive, again)
	eventually(t, "three members again", func() error { _, err := converged(ctx, nodes, all); return err })
	t.Logf("three members again %s after the kill", time.Since(killedAt).Round(time.Millisecond))
	for _, n := range alive {
		eventually(t, dead.id+" sees the job put while it was dead", func() error {
			_, err := again.c.Job(ctx, "after-kill-"+n.id)
			return err
		})
	}
}

// TestClusterOverTLS: nodes whose API is served over TLS advertise https
// URLs and call each other over TLS (trusting the certificate in
// tls_cert_file): a join and a follower's forwarded proposals work.
func TestClusterOverTLS(t *testing.T) {
	e := newClusterEnv(t)
	e.tlsCert, e.tlsKey, e.pool = testenv.SelfSigned(t, e.dir)
	a := freeAddrs(t, 4)
	n1 := e.node("node1", a[0], a[1], true)
	n1.start(t)
	n1.waitListening(t)
	n2 := e.node("node2", a[2], a[3], true, "--join", "https://"+n1.http)
	n2.start(t)
	n2.waitListening(t)
	nodes := []*clusterNode{n1, n2}
	ctx := t.Context()
	var leader string
	eventually(t, "two members over TLS", func() (err error) {
		leader, err = converged(ctx, nodes, map[string]bool{"node1": true, "node2": true})
		return err
	})
	f := n2
	if leader == "node2" {
		f = n1
	}
	if _, err := f.c.PutJob(ctx, "tls", twopc.ModeAuto, nil); err != nil {
		t.Fatalf("PUT on follower %s over TLS: %v", f.id, err)
	}
	if _, err := f.c.Job(ctx, "tls"); err != nil {
		t.Fatalf("GET on the follower right after: %v", err)
	}
}
