package systemtest

// The harness of the cluster tests (cluster_test.go): real `sidecar run`
// processes on 127.0.0.1, one cluster key file, a kfake broker process and
// a MariaDB database shared by the nodes, and a fault proxy in front of
// every node's raft port and API for partitions (faultproxy_test.go).
//
// Each node listens on its own free ports and advertises its proxies:
// other nodes reach its raft port and API only through them. The test, in
// the role of the application next to a node, calls the node's real API
// address.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
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

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/internal/mysqltest"
	"github.com/txsink/txsink/internal/testenv"
)

// clusterTopic is the Kafka topic of the cluster tests.
const clusterTopic = "cluster"

// clusterTable holds the MySQL rows; no unique key, so a duplicate shows
// as a second row instead of an error.
const clusterTable = "CREATE TABLE t(id BIGINT AUTO_INCREMENT PRIMARY KEY, k VARCHAR(64), v VARCHAR(255), KEY(v))"

// tcluster is one test's cluster and what its nodes share.
type tcluster struct {
	t       *testing.T
	dir     string
	keyFile string
	broker  string
	db      *mdb // its job name (db.job) names the test's job: XA RECOVER is server-wide
	net     *faultNet
	logDir  string // where failed tests keep the nodes' logs
	mu      sync.Mutex
	nodes   []*cnode
}

// cnode is one sidecar installation: config, data dir, ports and proxies
// stay, so it can be killed and started again as the same node.
type cnode struct {
	c         *tcluster
	id        string
	dir       string
	cfgPath   string
	httpAddr  string // real API address (the application's)
	raftAddr  string
	httpProxy *faultProxy // what other nodes use (advertise_http)
	raftProxy *faultProxy // advertise_raft
	mu        sync.Mutex
	cmd       *exec.Cmd
	done      chan struct{}
	logs      *testenv.Buffer
	api       *client.Client
}

// newTCluster starts the shared pieces: a kfake broker process, a MariaDB
// database with table t, a cluster key file (0600, 64 bytes).
func newTCluster(t *testing.T) *tcluster {
	t.Helper()
	c := &tcluster{t: t, dir: t.TempDir(), net: newFaultNet(t)}
	// newMDB before any node: its no-XA assertion then runs after the
	// nodes are gone (cleanups run last-in first-out).
	c.db = newMDB(t, mysqltest.DSN(t), clusterTable)
	b := kafkatest.StartBrokerWith(t, filepath.Join(c.dir, "kafka"), kafkatest.BrokerOptions{Topics: []string{clusterTopic}})
	c.broker = b.Addr
	c.keyFile = filepath.Join(c.dir, "cluster.key")
	if err := os.WriteFile(c.keyFile, []byte("0123456789abcdef0123456789abcdef-systemtest-cluster-key-0123456\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// addNode writes the config of node id (not started).
func (c *tcluster) addNode(id string) *cnode {
	c.t.Helper()
	n := &cnode{c: c, id: id, dir: filepath.Join(c.dir, id), httpAddr: freeAddr(c.t), raftAddr: freeAddr(c.t)}
	if err := os.MkdirAll(n.dir, 0o700); err != nil {
		c.t.Fatal(err)
	}
	n.httpProxy = c.net.proxy("http→"+id, id, n.httpAddr)
	n.raftProxy = c.net.proxy("raft→"+id, id, n.raftAddr)
	n.api = client.New("http://" + n.httpAddr)
	n.cfgPath = filepath.Join(n.dir, "txsink.yaml")
	// Short call timeouts: a call to a node cut off from the leader must
	// end within the test's bounds (the app then reopens elsewhere).
	cfg := fmt.Sprintf(`node_id: %s
data_dir: %s
http_addr: %s
raft_addr: %s
socket: "off"
cluster_key_file: %s
advertise_http: http://%s
advertise_raft: %s
join_timeout: 30s
sink_wait: 10s
shutdown_timeout: 10s
timeouts: {write: 5s, checkpoint: 8s, session: 8s, commit: 8s}
log: {level: debug}
sinks:
  events:
    kind: kafka
    brokers: [%q]
    default_topic: %s
    topics: ["*"]
%s`, id, filepath.Join(n.dir, "data"), n.httpAddr, n.raftAddr, c.keyFile, n.httpProxy.Addr(), n.raftProxy.Addr(),
		c.broker, clusterTopic, c.db.sinkYAML("db", 0, insStmts))
	if err := os.WriteFile(n.cfgPath, []byte(cfg), 0o600); err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	c.t.Cleanup(func() {
		if !c.t.Failed() {
			n.kill()
			if os.Getenv("TXSINK_TEST_KEEP_LOGS") != "" { // to read a passing run's logs
				c.keepLog(n)
			}
			return
		}
		// What CI shows of a failure is this output, not the log files:
		// the node's warnings and ownership moves first (a writer that
		// ping-pongs between nodes shows here), then, after SIGQUIT made
		// it print every goroutine's stack, where a hung node hangs. The
		// full log goes to a file.
		c.t.Logf("%s warnings and ownership moves (last 40):\n%s", id, notable(n.logs, 40))
		_ = n.signal(syscall.SIGQUIT, 5*time.Second)
		c.t.Logf("%s logs (tail):\n%s", id, tail(n.logs, 40))
		c.keepLog(n)
	})
	return n
}

// keepLog writes the node's whole log to a directory that outlives the
// test and says where.
func (c *tcluster) keepLog(n *cnode) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.logDir == "" {
		d, err := os.MkdirTemp("", "txsink-cluster-logs-")
		if err != nil {
			c.t.Log(err)
			return
		}
		c.logDir = d
	}
	if n.logs == nil {
		return
	}
	p := filepath.Join(c.logDir, n.id+".log")
	if err := os.WriteFile(p, []byte(n.logs.String()), 0o600); err != nil {
		c.t.Log(err)
		return
	}
	c.t.Logf("%s: full log in %s", n.id, p)
}

// notable returns the last n lines of a node's log that are warnings or
// errors or say who owns a writer (takeovers, handovers, dropped sessions).
func notable(b *testenv.Buffer, n int) string {
	if b == nil {
		return ""
	}
	var out []string
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") ||
			strings.Contains(l, "handed over") || strings.Contains(l, "did not release") ||
			strings.Contains(l, "session dropped") || strings.Contains(l, "taking over") {
			out = append(out, l)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return strings.Join(out, "\n")
}

// joinArg is the --join value naming the API (proxy) addresses of ns.
func joinArg(ns ...*cnode) string {
	var as []string
	for _, n := range ns {
		as = append(as, "http://"+n.httpProxy.Addr())
	}
	return strings.Join(as, ",")
}

// launch starts the node's process with extra flags and environment; it
// does not wait for it to be ready.
func (n *cnode) launch(args []string, env ...string) {
	n.c.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.logs = &testenv.Buffer{}
	cmd := exec.Command(sidecarBin, append([]string{"run", "--config", n.cfgPath}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = n.logs, n.logs
	if err := cmd.Start(); err != nil {
		n.c.t.Fatal(err)
	}
	n.cmd = cmd
	n.done = make(chan struct{})
	done := n.done
	n.c.net.register(cmd.Process.Pid, n.id)
	go func() {
		_ = cmd.Wait()
		n.c.net.unregister(cmd.Process.Pid)
		close(done)
	}()
}

// running reports whether the node's process is alive.
func (n *cnode) running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// waitReady waits until /readyz answers 200 (leader known, sinks
// answer), failing on exit or after 40 s.
func (n *cnode) waitReady() {
	n.c.t.Helper()
	deadline := time.Now().Add(40 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := n.api.Ready(ctx)
		cancel()
		if err == nil {
			return
		}
		if !n.running() {
			n.c.t.Fatalf("%s exited during start-up:\n%s", n.id, tail(n.logs, 60))
		}
		if time.Now().After(deadline) {
			n.c.t.Fatalf("%s not ready after 40s: %v\n%s", n.id, err, tail(n.logs, 60))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// signal sends sig and waits (bounded) for the process to exit.
func (n *cnode) signal(sig syscall.Signal, within time.Duration) error {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
		return nil
	case <-time.After(within):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("%s did not exit within %v of %v; killed", n.id, within, sig)
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (n *cnode) kill() { _ = n.signal(syscall.SIGKILL, 30*time.Second) }

// waitExit waits (bounded) for the process to end by itself (a failpoint).
func (n *cnode) waitExit(within time.Duration) bool {
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	select {
	case <-done:
		return true
	case <-time.After(within):
		return false
	}
}

// startCluster starts k voters that form a cluster together
// (--bootstrap-expect k, each joining the others) and waits until every
// one is ready and all see the same k voters.
func (c *tcluster) startCluster(k int) []*cnode {
	c.t.Helper()
	ns := make([]*cnode, k)
	for i := range ns {
		ns[i] = c.addNode(fmt.Sprintf("n%d", i+1))
	}
	for i, n := range ns {
		others := slices.Delete(slices.Clone(ns), i, i+1)
		n.launch([]string{"--bootstrap-expect", fmt.Sprint(k), "--join", joinArg(others...)})
	}
	t0 := time.Now()
	for _, n := range ns {
		n.waitReady()
	}
	want := map[string]bool{}
	for _, n := range ns {
		want[n.id] = true
	}
	c.waitMembers(ns, want, 20*time.Second)
	c.t.Logf("cluster of %d voters formed and ready in %v", k, time.Since(t0).Round(time.Millisecond))
	return ns
}

// clusterView is the part of GET /v1/cluster the tests read, decoded here
// so the tests depend on the documented JSON, not on Go types.
type clusterView struct {
	Node      string `json:"node"`
	Role      string `json:"role"`
	Leader    string `json:"leader"`
	LastIndex uint64 `json:"last_index"`
	Applied   uint64 `json:"applied_index"`
	Members   []struct {
		ID        string `json:"id"`
		APIAddr   string `json:"api_addr"`
		Voter     bool   `json:"voter"`
		Reachable bool   `json:"reachable"`
	} `json:"members"`
}

// view reads GET /v1/cluster from the node, bounded by d.
func (n *cnode) view(d time.Duration) (clusterView, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var v clusterView
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.httpAddr+"/v1/cluster", nil)
	if err != nil {
		return v, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return v, fmt.Errorf("GET /v1/cluster: %s", resp.Status)
	}
	return v, json.NewDecoder(resp.Body).Decode(&v)
}

// members returns id → voter of a view.
func (v clusterView) members() map[string]bool {
	m := map[string]bool{}
	for _, mb := range v.Members {
		m[mb.ID] = mb.Voter
	}
	return m
}

// waitMembers waits until every node of ns reports exactly the members
// want (id → voter), each with an API address, and one leader they agree on.
func (c *tcluster) waitMembers(ns []*cnode, want map[string]bool, within time.Duration) string {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		leader, err := agreed(ns, want)
		if err == nil {
			return leader
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("cluster membership not %v within %v: %v", want, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func agreed(ns []*cnode, want map[string]bool) (string, error) {
	leader := ""
	for _, n := range ns {
		v, err := n.view(time.Second)
		if err != nil {
			return "", fmt.Errorf("%s: %w", n.id, err)
		}
		got := v.members()
		if len(got) != len(want) {
			return "", fmt.Errorf("%s sees members %v", n.id, got)
		}
		for id, voter := range want {
			if g, ok := got[id]; !ok || g != voter {
				return "", fmt.Errorf("%s sees members %v", n.id, got)
			}
		}
		for _, mb := range v.Members {
			if mb.APIAddr == "" {
				return "", fmt.Errorf("%s: member %s has no API address yet", n.id, mb.ID)
			}
		}
		if v.Leader == "" || (leader != "" && v.Leader != leader) {
			return "", fmt.Errorf("%s sees leader %q, others %q", n.id, v.Leader, leader)
		}
		leader = v.Leader
	}
	return leader, nil
}

// node returns the node with id.
func (c *tcluster) node(id string) *cnode {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		if n.id == id {
			return n
		}
	}
	c.t.Fatalf("no node %q", id)
	return nil
}

// leader returns the node all of ns agree is the leader.
func (c *tcluster) leader(ns []*cnode) *cnode {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var l string
		ok := true
		for _, n := range ns {
			v, err := n.view(time.Second)
			if err != nil || v.Leader == "" || (l != "" && v.Leader != l) {
				ok = false
				break
			}
			l = v.Leader
		}
		if ok {
			return c.node(l)
		}
		if time.Now().After(deadline) {
			c.t.Fatal("no leader the nodes agree on within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitNewLeader polls GET /v1/cluster on the survivors every 20 ms until
// one of them reports a leader other than old, and returns it and the
// time since from (the kill). Bounded by within.
func (c *tcluster) waitNewLeader(survivors []*cnode, old string, from time.Time, within time.Duration) (string, time.Duration) {
	c.t.Helper()
	deadline := from.Add(within)
	for {
		for _, n := range survivors {
			v, err := n.view(200 * time.Millisecond)
			if err == nil && v.Leader != "" && v.Leader != old {
				return v.Leader, time.Since(from)
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no new leader among the survivors within %v of the kill", within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// others returns ns without the nodes in not.
func others(ns []*cnode, not ...*cnode) []*cnode {
	var out []*cnode
	for _, n := range ns {
		if !slices.Contains(not, n) {
			out = append(out, n)
		}
	}
	return out
}

// apiCall sends a cluster admin call (join, remove) to the node and
// returns the status and body.
func (n *cnode) apiCall(method, path string, body string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+n.httpAddr+path, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(b), err
}

// wantExactlyTopic reads topic read_committed and checks it holds exactly
// want, each once, in any order.
func wantExactlyTopic(t *testing.T, broker, topic string, want []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got []string
	for _, r := range kafkatest.ReadCommittedWith(ctx, t, broker, topic, len(want), kafkatest.ReadOptions{Timeout: 20 * time.Second}) {
		got = append(got, string(r.Value))
	}
	slices.Sort(got)
	w := slices.Sorted(slices.Values(want))
	if !slices.Equal(got, w) {
		t.Fatalf("kafka read_committed: %s", diffOnce(w, got))
	}
}
