package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/testenv"
	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

var allCodes = []string{
	api.CodeInvalidRequest, api.CodeInvalidName, api.CodeMalformedBody, api.CodeUnknownSink,
	api.CodeUnauthorized, api.CodeJobNotFound, api.CodeNotFound, api.CodeMethodNotAllowed,
	api.CodeSessionFenced, api.CodeSessionLost, api.CodeNoSession, api.CodeSeqConflict,
	api.CodeCheckpointOrder, api.CodeModeConflict, api.CodeWriterInDoubt, api.CodeBodyTooLarge, api.CodeUnsupportedMediaType,
	api.CodeNodeNotFound, api.CodeMembershipConflict,
	api.CodeBackpressure, api.CodeInternal, api.CodeRecordRejected, api.CodeSinkFailure, api.CodeDataLoss, api.CodeUnavailable,
}

// TestMain runs the suite, then (on a full run) checks that every operation
// of the spec answered with a 2xx at least once.
func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if code == 0 && flag.Lookup("test.run").Value.String() == "" && flag.Lookup("test.skip").Value.String() == "" && theSpec != nil {
		for _, op := range theSpec.ops {
			ok := false
			for st := range theSpec.seen[op.id] {
				ok = ok || st[0] == '2'
			}
			if !ok {
				fmt.Fprintf(os.Stderr, "openapi: operation %s (%s %s) never answered 2xx in the tests\n", op.id, op.method, op.tmpl)
				code = 1
			}
		}
	}
	os.Exit(code)
}

// flakyJournal is twopctest's journal with a switch that makes it lose its
// leader.
type flakyJournal struct {
	*twopctest.Journal
	down atomic.Bool
}

func (f *flakyJournal) Propose(ctx context.Context, cmd []byte) (twopc.ApplyResult, error) {
	if f.down.Load() {
		return twopc.ApplyResult{}, fmt.Errorf("%w: no leader (test)", twopc.ErrUnavailable)
	}
	return f.Journal.Propose(ctx, cmd)
}

// env is a real coordinator over twopctest fakes, served by one api.Server
// on 127.0.0.1:0 and on a Unix socket, with clients whose every response is
// validated against openapi.yaml.
type env struct {
	t       *testing.T
	journal *flakyJournal
	coord   *twopc.Coordinator
	events  *twopctest.Sink       // max in-flight 1, topics events and pv
	kev     *twopctest.OffsetSink // events as the coordinator has it: takes offsets, as Kafka does
	other   *twopctest.Sink
	srv     *api.Server
	sock    string
	ready   atomic.Pointer[error]
	hook    atomic.Pointer[func(point string)] // called at the coordinator's failpoints
	ts      []transport
}

// transport is one way to reach the server.
type transport struct {
	name string
	base string       // URL prefix
	hc   *http.Client // validating
	c    *client.Client
}

type envOpt func(*api.Config)

func newEnv(t *testing.T, opts ...envOpt) *env {
	t.Helper()
	e := &env{t: t}
	e.journal = &flakyJournal{Journal: twopctest.NewJournal(twopc.NewMachine())}
	e.kev = twopctest.NewOffsetSink("events", 1)
	e.events = e.kev.Sink
	e.events.Topics = []string{"events", "pv"}
	e.other = twopctest.NewSink("other", 2)
	e.coord = e.newCoordinator(e.journal)
	cfg := api.Config{
		MaxBodyBytes:      64 << 10,
		MaxRecordsPerCall: 1000,
		Logger:            nil,
		Cluster: func(context.Context) (api.ClusterStatus, error) {
			return api.ClusterStatus{Node: "n1", Role: "leader", Leader: "n1", LeaderAddr: "127.0.0.1:8471",
				Members: []api.Member{{ID: "n1", Address: "127.0.0.1:8471", Voter: true}}, LastIndex: 7}, nil
		},
		Ready: func(context.Context) error {
			if p := e.ready.Load(); p != nil {
				return *p
			}
			return nil
		},
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
			io.WriteString(w, "txsink_up 1\n")
		}),
	}
	for _, o := range opts {
		o(&cfg)
	}
	e.serve(cfg, e.coord)
	return e
}

func (e *env) newCoordinator(j twopc.Journal) *twopc.Coordinator {
	e.t.Helper()
	var m *twopc.Machine
	switch j := j.(type) {
	case *flakyJournal:
		m = j.Machine()
	case *twopctest.Journal:
		m = j.Machine()
	}
	c, err := twopc.NewCoordinator(twopc.Config{Node: "n1", Journal: j, Machine: m,
		Sinks: map[string]twopc.Sink{"events": e.kev, "other": e.other},
		Failpoint: func(p string) {
			if h := e.hook.Load(); h != nil {
				(*h)(p)
			}
		}})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(c.Close)
	return c
}

// serve starts a server for svc on TCP and on a fresh Unix socket.
func (e *env) serve(cfg api.Config, svc api.Service) {
	t := e.t
	t.Helper()
	srv, err := api.New(svc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Unix socket paths are limited to ~100 bytes; t.TempDir can be longer.
	dir, err := os.MkdirTemp("", "txsink-api")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e.sock = filepath.Join(dir, "s.sock")
	unix, err := api.ListenUnix(e.sock)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, srv, tcp, unix)
	s := loadSpec(t)
	tcpT := http.DefaultTransport.(*http.Transport).Clone()
	unixT := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", e.sock)
	}}
	t.Cleanup(tcpT.CloseIdleConnections)
	t.Cleanup(unixT.CloseIdleConnections)
	tcpHC := &http.Client{Transport: &validating{t: t, s: s, next: tcpT}}
	unixHC := &http.Client{Transport: &validating{t: t, s: s, next: unixT}}
	base := "http://" + tcp.Addr().String()
	copt := []client.Option{}
	if cfg.Token != "" {
		copt = append(copt, client.WithToken(cfg.Token))
	}
	e.ts = []transport{
		{name: "tcp", base: base, hc: tcpHC, c: client.New(base, append(copt, client.WithHTTPClient(tcpHC))...)},
		{name: "unix", base: "http://unix", hc: unixHC, c: client.NewUnix(e.sock, append(copt, client.WithHTTPClient(unixHC))...)},
	}
}

// reply is a raw answer.
type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) String() string { return fmt.Sprintf("%d %s", r.status, r.body) }

func (r reply) problem(t *testing.T) api.Problem {
	t.Helper()
	var p api.Problem
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q, want application/problem+json (%s)", ct, r)
	}
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("problem body: %v: %s", err, r.body)
	}
	return p
}

// do sends a raw request; header pairs are name, value.
func (tr transport) do(t *testing.T, method, path, body string, header ...string) reply {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, tr.base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := tr.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: b}
}

// snapshot is everything a call could change: the fake sinks' transactions
// and committed records, and the journal's jobs, writers and checkpoints.
func (e *env) snapshot() string {
	e.t.Helper()
	type cp struct {
		Job string
		CPs []twopc.CheckpointInfo
	}
	var cps []cp
	for _, j := range e.coord.Jobs() {
		c, err := e.coord.Checkpoints(j.Name)
		if err != nil {
			e.t.Fatal(err)
		}
		for i := range c {
			c[i].AgeSeconds = 0
		}
		cps = append(cps, cp{j.Name, c})
	}
	b, err := json.Marshal(map[string]any{
		"events": e.events.States(), "events_committed": committed(e.events),
		"other": e.other.States(), "other_committed": committed(e.other),
		"events_groups": e.kev.Groups(),
		"jobs":          e.coord.Jobs(), "checkpoints": cps,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return string(b)
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// wantCode checks that err is a *client.Error with status and code.
func wantCode(t *testing.T, err error, status int, code string) {
	t.Helper()
	var ce *client.Error
	if !errors.As(err, &ce) {
		t.Fatalf("got error %v, want a %d %s problem", err, status, code)
	}
	if ce.Status != status || ce.Code != code {
		t.Fatalf("got %d %s (%s), want %d %s", ce.Status, ce.Code, ce.Detail, status, code)
	}
}

func values(recs ...string) string {
	var b strings.Builder
	for _, v := range recs {
		fmt.Fprintf(&b, `{"sink":"events","value":%q}`+"\n", v)
	}
	return b.String()
}

// committed returns a fake sink's committed values, JSON strings unquoted.
func committed(s *twopctest.Sink) []string {
	out := s.Committed()
	for i, v := range out {
		var str string
		if json.Unmarshal([]byte(v), &str) == nil {
			out[i] = str
		}
	}
	return out
}

func contains(s []string, vs ...string) bool {
	for _, v := range vs {
		if !slices.Contains(s, v) {
			return false
		}
	}
	return true
}
