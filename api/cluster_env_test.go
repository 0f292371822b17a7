package api_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/internal/testenv"
	"github.com/txsink/txsink/sinks/kafka"
	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// cluster is several nodes sharing one journal, for the tests of passing
// session calls to the owner (proxy_test.go). Each node is a real
// coordinator with a real Kafka sink (all on one in-process kfake broker)
// served by its own api.Server on TCP and on a Unix socket. The journal is
// twopctest's in-memory one: every node sees every entry at once, as if
// raft had replicated it.
//
// The API address the journal names for a node is a tap: an httptest
// server in front of the node's handler that records the headers of each
// call arriving through it (only calls another node passed on arrive
// there) and signals when the first byte of a body is read.
type cluster struct {
	t       *testing.T
	kafka   string
	journal *twopctest.Journal
	nodes   map[string]*cnode
}

type cnode struct {
	id     string
	coord  *twopc.Coordinator
	srv    *api.Server
	base   string // the node's own TCP listener
	sock   string // and its Unix socket
	tap    *httptest.Server
	tapURL string
	c      *client.Client // validating, over base
	unix   *client.Client // validating, over sock
	hc     *http.Client   // validating, for raw calls to base
	// owner, when set, replaces what the journal says about owners.
	owner atomic.Pointer[func(job, writer string) (string, string, bool)]

	mu       sync.Mutex
	tapped   []http.Header // headers of calls that arrived through the tap
	proxied  []string      // ObserveProxy outcomes
	observed []observed    // Observe calls
	bodyRead chan struct{} // armed by armBodyRead; closed at the next body bytes read through the tap
}

// clusterOpt adjusts a node's api.Config before its server is built; the
// taps of every node exist by then.
type clusterOpt func(c *cluster, n *cnode, cfg *api.Config)

// tlsTap makes the node's tap serve TLS (httptest's certificate).
const tlsTap = "tls"

func newCluster(t *testing.T, ids []string, tapKinds map[string]string, opts map[string]clusterOpt) *cluster {
	t.Helper()
	c := &cluster{t: t, kafka: kafkatest.Addr(kafkatest.NewCluster(t)),
		journal: twopctest.NewJournal(twopc.NewMachine()), nodes: map[string]*cnode{}}
	for _, id := range ids {
		n := &cnode{id: id}
		n.tap = httptest.NewUnstartedServer(http.HandlerFunc(n.serveTap))
		if tapKinds[id] == tlsTap {
			n.tap.StartTLS()
		} else {
			n.tap.Start()
		}
		t.Cleanup(n.tap.Close)
		n.tapURL = n.tap.URL
		c.nodes[id] = n
	}
	for _, id := range ids {
		n := c.nodes[id]
		c.startNode(n, opts[id])
		c.putMember(id, n.tapURL)
	}
	return c
}

func (c *cluster) startNode(n *cnode, opt clusterOpt) {
	t := c.t
	cfg := kafka.DefaultConfig()
	cfg.Name, cfg.Brokers, cfg.DefaultTopic, cfg.Topics = "events", []string{c.kafka}, "events", []string{"*"}
	cfg.TransactionTimeout = time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sink, err := kafka.New(ctx, cfg)
	if err != nil {
		t.Fatalf("kafka sink of %s: %v", n.id, err)
	}
	t.Cleanup(sink.Close)
	n.coord, err = twopc.NewCoordinator(twopc.Config{Node: n.id, Journal: c.journal, Machine: c.journal.Machine(),
		Sinks: map[string]twopc.Sink{"events": sink}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.coord.Close)
	fromJournal := journalOwner(c.journal.Machine(), n.id)
	acfg := api.Config{
		Node: n.id,
		SessionOwner: func(job, writer string) (string, string, bool) {
			if h := n.owner.Load(); h != nil {
				return (*h)(job, writer)
			}
			return fromJournal(job, writer)
		},
		ObserveProxy: func(route, outcome string) {
			n.mu.Lock()
			n.proxied = append(n.proxied, outcome)
			n.mu.Unlock()
		},
		Observe: func(route string, code int, _ time.Duration) {
			n.mu.Lock()
			n.observed = append(n.observed, observed{route, code})
			n.mu.Unlock()
		},
	}
	if opt != nil {
		opt(c, n, &acfg)
	}
	n.srv, err = api.New(n.coord, acfg)
	if err != nil {
		t.Fatal(err)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.sock = filepath.Join(shortDir(t), "s.sock")
	unix, err := api.ListenUnix(n.sock)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, n.srv, tcp, unix)
	n.base = "http://" + tcp.Addr().String()
	s := loadSpec(t)
	tcpT := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tcpT.CloseIdleConnections)
	n.hc = &http.Client{Transport: &validating{t: t, s: s, next: tcpT}}
	var copt []client.Option
	if acfg.Token != "" {
		copt = append(copt, client.WithToken(acfg.Token))
	}
	n.c = client.New(n.base, append(copt, client.WithHTTPClient(n.hc))...)
	unixT := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", n.sock)
	}}
	t.Cleanup(unixT.CloseIdleConnections)
	n.unix = client.NewUnix(n.sock, append(copt, client.WithHTTPClient(&http.Client{Transport: &validating{t: t, s: s, next: unixT}}))...)
}

// journalOwner is the ownership rule cmd/sidecar applies, over the journal
// alone: remote when the journal names another node it knows.
func journalOwner(m *twopc.Machine, self string) func(job, writer string) (string, string, bool) {
	return func(job, writer string) (string, string, bool) {
		owner, _, _, ok := m.Owner(job, writer)
		if !ok || owner == "" || owner == self {
			return "", "", false
		}
		mi, ok := m.Member(owner)
		if !ok {
			return "", "", false
		}
		return owner, mi.APIAddr, true
	}
}

// putMember records (or moves) a node's API address in the journal.
func (c *cluster) putMember(id, apiAddr string) {
	c.t.Helper()
	cmd, err := json.Marshal(twopc.Command{Op: twopc.OpPutMember, Key: "member-" + id + "-" + apiAddr, Time: time.Now().UnixNano(),
		Member: &twopc.MemberInfo{ID: id, APIAddr: apiAddr, RaftAddr: "127.0.0.1:1", Voter: true}})
	if err != nil {
		c.t.Fatal(err)
	}
	res, err := c.journal.Propose(context.Background(), cmd)
	if err == nil {
		err = res.Err()
	}
	if err != nil {
		c.t.Fatalf("put_member %s: %v", id, err)
	}
}

// owner is the journal's owner of the writer.
func (c *cluster) owner(job, writer string) string {
	o, _, _, _ := c.journal.Machine().Owner(job, writer)
	return o
}

// tapCertPool trusts the node's TLS tap.
func (n *cnode) tapCertPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(n.tap.Certificate())
	return p
}

func (n *cnode) serveTap(w http.ResponseWriter, r *http.Request) {
	n.mu.Lock()
	n.tapped = append(n.tapped, r.Header.Clone())
	n.mu.Unlock()
	r.Body = &tapBody{ReadCloser: r.Body, n: n}
	n.srv.Handler().ServeHTTP(w, r)
}

type tapBody struct {
	io.ReadCloser
	n *cnode
}

func (b *tapBody) Read(p []byte) (int, error) {
	k, err := b.ReadCloser.Read(p)
	if k > 0 {
		b.n.mu.Lock()
		if b.n.bodyRead != nil {
			close(b.n.bodyRead)
			b.n.bodyRead = nil
		}
		b.n.mu.Unlock()
	}
	return k, err
}

// armBodyRead returns a channel closed when bytes of a body are next read
// through the tap.
func (n *cnode) armBodyRead() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.bodyRead = make(chan struct{})
	return n.bodyRead
}

// snapshot returns copies of what the node recorded.
func (n *cnode) snapshot() (tapped []http.Header, proxied []string, obs []observed) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.tapped), slices.Clone(n.proxied), slices.Clone(n.observed)
}

// waitProxied waits (bounded) until the node reported want outcomes:
// ObserveProxy runs when the owner's answer arrives, the test may look
// right after the client read it.
func (n *cnode) waitProxied(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, got, _ := n.snapshot()
		if slices.Equal(got, want) {
			return
		}
		if len(got) > len(want) || time.Now().After(deadline) {
			t.Fatalf("node %s passed on calls with outcomes %v, want %v", n.id, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
