// Package api is txsink's HTTP API (docs/DESIGN.md §3): one handler served on TCP
// and on a Unix socket, JSON bodies, RFC 9457 problem details with a stable
// code, and the record fast path (NDJSON or a JSON array).
//
// The handlers check names and decode bodies; every protocol decision is the
// Service's (the twopc.Coordinator). openapi.yaml in this folder describes the
// API and the tests check every response against it.
package api

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"strings"
	"time"

	"github.com/txsink/txsink/twopc"
)

// Service is what the API drives; *twopc.Coordinator implements it.
type Service interface {
	PutJob(ctx context.Context, spec twopc.JobSpec) (twopc.JobInfo, error)
	Jobs() []twopc.JobInfo
	Job(name string) (twopc.JobInfo, error)
	OpenSession(ctx context.Context, job, writer string, restore *int64) (twopc.SessionInfo, error)
	// Checkpoint, Commit: a result with status data_loss comes with an
	// error wrapping twopc.ErrDataLoss; the API answers 502 data_loss with
	// the result in the problem.
	// Write must not keep a reference into memory the API reuses: the
	// records it gets are freshly allocated and owned by the service. seq
	// (nil: the call has none) carries a digest of the raw body, so a
	// repeated seq with another body is told apart from a retry.
	Write(ctx context.Context, job, writer string, epoch uint64, seq *twopc.Seq, recs []*twopc.Record) (twopc.WriteResult, error)
	// CheckpointWith is twopc.Coordinator.CheckpointWith: offsets (nil:
	// none) commit in the checkpoint's branch of their Kafka sink.
	CheckpointWith(ctx context.Context, job, writer string, epoch uint64, n int64, state []byte, wait twopc.Wait, offsets *twopc.Offsets) (twopc.CheckpointResult, error)
	Commit(ctx context.Context, job string, n int64) (twopc.CommitResult, error)
	Abort(ctx context.Context, job string, n int64) (twopc.CommitResult, error)
	Checkpoints(job string) ([]twopc.CheckpointInfo, error)
	// DeleteWriter forgets a writer with nothing in doubt; deleted is
	// false when it did not exist.
	DeleteWriter(ctx context.Context, job, writer string) (deleted bool, err error)
}

// ClusterStatus is the body of GET /v1/cluster.
type ClusterStatus struct {
	// Node is this node's id.
	Node string `json:"node"`
	// Role is this node's Raft role: leader, follower, candidate or shutdown.
	Role string `json:"role"`
	// RaftAddr and APIAddr are this node's addresses as it advertises them
	// to the other nodes; Voter is whether it is (or asks to be) a voter.
	// A node forming a cluster (bootstrap_expect) reads them from the others.
	RaftAddr string `json:"raft_addr,omitempty"`
	APIAddr  string `json:"api_addr,omitempty"`
	Voter    bool   `json:"voter"`
	// Leader is the leader's node id ("" while there is none).
	Leader string `json:"leader"`
	// LeaderAddr is the leader's Raft address ("" while there is none).
	LeaderAddr string `json:"leader_addr"`
	// LeaderAPIAddr is the leader's API base URL as the journal knows it
	// ("" while there is no leader or its member entry is not known yet).
	LeaderAPIAddr string `json:"leader_api_addr"`
	// Members is the current Raft configuration, with the API addresses
	// from the journal's member entries.
	Members []Member `json:"members"`
	// LastIndex is the last index in this node's log; AppliedIndex the
	// last one its state machine applied.
	LastIndex    uint64 `json:"last_index"`
	AppliedIndex uint64 `json:"applied_index"`
	// Sinks lists the configured sinks, for operators (nil: not reported).
	Sinks []SinkStatus `json:"sinks,omitempty"`
}

// SinkStatus describes one configured sink in GET /v1/cluster.
type SinkStatus struct {
	Name string `json:"name"`
	// Kind is the sink's kind: kafka or mysql.
	Kind string `json:"kind"`
	// TransactionTimeoutSeconds is the Kafka transaction timeout in effect
	// (0 for sinks without one): a prepared branch older than this has
	// been aborted by the broker, and committing it is data loss.
	TransactionTimeoutSeconds float64 `json:"transaction_timeout_seconds,omitempty"`
}

// Member is one server of the Raft configuration.
type Member struct {
	ID string `json:"id"`
	// Address is the Raft address (kept for older clients; RaftAddr is the
	// same).
	Address  string `json:"address"`
	RaftAddr string `json:"raft_addr"`
	// APIAddr is the member's API base URL from the journal ("" until the
	// member's entry is applied).
	APIAddr string `json:"api_addr"`
	Voter   bool   `json:"voter"`
	// Reachable: the answering node got a 200 from the member's /healthz
	// within 300 ms (itself: always true); false also when APIAddr is
	// unknown. A view from one node, not a verdict of the cluster.
	Reachable bool `json:"reachable"`
}

// Defaults of Config.
const (
	DefaultMaxBodyBytes      = 32 << 20
	DefaultMaxRecordsPerCall = 100_000
	DefaultReadTimeout       = time.Minute
	DefaultIdleTimeout       = 2 * time.Minute
)

// Config configures a Server. The zero value serves with the defaults, no
// token, no cluster status, no metrics and always ready.
type Config struct {
	// MaxBodyBytes bounds a records body (0: DefaultMaxBodyBytes); a larger
	// one is 413 body_too_large. Other bodies are bounded by what they can
	// hold: a checkpoint's base64 state of at most twopc.MaxStateBytes.
	MaxBodyBytes int64
	// MaxRecordsPerCall bounds the records of one write call
	// (0: DefaultMaxRecordsPerCall); more is 413 body_too_large.
	MaxRecordsPerCall int
	// Token, when set, is the bearer token every /v1 call must carry
	// (Authorization: Bearer <token>); a missing or wrong one is 401.
	// /healthz, /readyz and /metrics never need it.
	Token string
	// Logger receives request errors (nil: discard).
	Logger *slog.Logger
	// Cluster answers GET /v1/cluster (nil: 404 not_found).
	Cluster func(ctx context.Context) (ClusterStatus, error)
	// Admin serves the membership and forwarding endpoints under
	// /v1/cluster (nil: 404 not_found); see ClusterAdmin.
	Admin ClusterAdmin
	// Ready answers GET /readyz: nil error means ready (nil func: always).
	Ready func(ctx context.Context) error
	// Metrics serves GET /metrics (nil: 404 not_found).
	Metrics http.Handler
	// Observe, when set, is called after every request with the route's
	// mux pattern (e.g. "POST /v1/jobs/{job}/checkpoints/{n}/commit";
	// UnmatchedRoute when no route matched), the status code and the
	// time the call took. It gets the pattern, never the raw path, so a
	// metric labelled with it has a bounded number of values. It runs on
	// the request's goroutine: keep it cheap.
	Observe func(route string, code int, d time.Duration)
	// ReadTimeout bounds how long a request (headers and body) may take
	// to arrive (0: DefaultReadTimeout); a body that has not arrived by
	// then is 400 and the connection is closed. The handler's own work is
	// bounded by the coordinator's timeouts, not by this.
	ReadTimeout time.Duration
	// IdleTimeout closes a keep-alive connection idle for this long
	// (0: DefaultIdleTimeout).
	IdleTimeout time.Duration

	// Passing session calls to the node that owns the session (proxy.go).

	// Node is this node's id, sent to the owner in the Txsink-Forwarded-By
	// header. Required with SessionOwner.
	Node string
	// SessionOwner, when set, says whether a session call (records,
	// checkpoint) for (job, writer) belongs to another node: remote true
	// with that node's id and the base URL of its API (e.g.
	// "https://10.0.0.5:8470"). Such a call is passed to it at the HTTP
	// level before its body is read. It runs on every session call that
	// was not forwarded already: keep it cheap. nil: every call is served
	// here.
	SessionOwner func(job, writer string) (node, apiAddr string, remote bool)
	// ProxyTLS configures TLS to an owner whose address is https (its
	// RootCAs: the CA of the nodes' API certificates; nil: the system's).
	ProxyTLS *tls.Config
	// ProxyTransport, when set, carries the passed calls instead of the
	// transport built from ProxyTLS (tests, custom dialers).
	ProxyTransport http.RoundTripper
	// ObserveProxy, when set, is called once for every call passed to an
	// owner, with the route's mux pattern and the outcome: ProxyAnswered
	// (the owner's answer, whatever its status, was passed back),
	// ProxyUnreachable (answered 503 unavailable here) or ProxyCanceled
	// (the caller went away first).
	ObserveProxy func(route, outcome string)
	// WriteTimeout and CheckpointTimeout are the coordinator's deadlines of
	// a records and a checkpoint call (twopc.Timeouts; 0: its defaults).
	// The owner answers within them once it has the body, so they bound
	// how long a passed call waits for the owner (plus proxyMargin).
	WriteTimeout, CheckpointTimeout time.Duration
}

// UnmatchedRoute is the route Observe gets for a request no route matched
// (answered 404 not_found or 405 method_not_allowed).
const UnmatchedRoute = "unmatched"

// DefaultConfig returns a Config with every default filled in.
func DefaultConfig() Config {
	return Config{MaxBodyBytes: DefaultMaxBodyBytes, MaxRecordsPerCall: DefaultMaxRecordsPerCall}
}

// Validate reports a Config that cannot be served.
func (c Config) Validate() error {
	if c.MaxBodyBytes < 0 {
		return fmt.Errorf("api: MaxBodyBytes %d is negative", c.MaxBodyBytes)
	}
	if c.MaxRecordsPerCall < 0 {
		return fmt.Errorf("api: MaxRecordsPerCall %d is negative", c.MaxRecordsPerCall)
	}
	if c.ReadTimeout < 0 || c.IdleTimeout < 0 {
		return fmt.Errorf("api: ReadTimeout %s and IdleTimeout %s must not be negative", c.ReadTimeout, c.IdleTimeout)
	}
	if strings.ContainsAny(c.Token, " \t\r\n") {
		return errors.New("api: Token contains white space")
	}
	if c.WriteTimeout < 0 || c.CheckpointTimeout < 0 {
		return fmt.Errorf("api: WriteTimeout %s and CheckpointTimeout %s must not be negative", c.WriteTimeout, c.CheckpointTimeout)
	}
	if c.SessionOwner != nil && !twopc.ValidName(c.Node) {
		return fmt.Errorf("api: SessionOwner needs Node, this node's id (got %q)", c.Node)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxRecordsPerCall == 0 {
		c.MaxRecordsPerCall = DefaultMaxRecordsPerCall
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = DefaultReadTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	def := twopc.DefaultTimeouts()
	if c.WriteTimeout == 0 {
		c.WriteTimeout = def.Write
	}
	if c.CheckpointTimeout == 0 {
		c.CheckpointTimeout = def.Checkpoint
	}
	return c
}

// Server serves the API on any number of listeners.
type Server struct {
	svc   Service
	cfg   Config
	log   *slog.Logger
	mux   *http.ServeMux
	http  *http.Server
	proxy *httputil.ReverseProxy // nil without Config.SessionOwner
	// margin is what a passed call may take beyond the owner's deadline
	// (proxyMargin).
	margin time.Duration
}

// New returns a Server for svc. It serves nothing until Serve.
func New(svc Service, cfg Config) (*Server, error) {
	if svc == nil {
		return nil, errors.New("api: nil Service")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Server{svc: svc, cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), margin: proxyMargin}
	if cfg.SessionOwner != nil {
		s.proxy = s.newProxy()
	}
	s.routes()
	s.http = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		// ReadTimeout bounds headers and body; net/http clears the read
		// deadline once the body is read, so a long call keeps its
		// context. No WriteTimeout: a checkpoint waits for its commit,
		// bounded by the coordinator's timeouts.
		ReadTimeout: cfg.ReadTimeout,
		IdleTimeout: cfg.IdleTimeout,
		ErrorLog:    slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// Handler returns the API's handler, for tests and for embedding.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

// Serve accepts connections on ln until Shutdown; it may be called for
// several listeners (TCP and Unix socket) at once. It returns nil after
// Shutdown and the accept error otherwise.
func (s *Server) Serve(ln net.Listener) error {
	err := s.http.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, closes every listener (removing the Unix socket
// file) and waits for the calls in progress until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	if s.proxy != nil {
		if t, ok := s.proxy.Transport.(interface{ CloseIdleConnections() }); ok {
			t.CloseIdleConnections()
		}
	}
	return err
}

// ListenUnix listens on the Unix socket path with mode 0660. A stale socket
// file (one nobody listens on) is removed first; a live one or a file that
// is not a socket is an error. The socket file is removed when the listener
// closes. Keep path in a directory only the sidecar's group can enter: the
// mode is set right after the socket is created.
func ListenUnix(path string) (net.Listener, error) {
	fi, err := os.Lstat(path)
	switch {
	case err == nil:
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("api: %s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("api: %s: another process is listening on it", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("api: remove stale socket: %w", err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("api: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("api: %w", err)
	}
	return ln, nil
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	_, pattern := s.mux.Handler(r)
	if s.cfg.Observe != nil {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		w = sw
		// Registered before the recover below, so it runs after it and
		// sees the 500 a panic was answered with.
		defer func() {
			route := pattern
			if route == "" {
				route = UnmatchedRoute
			}
			s.cfg.Observe(route, sw.status(), time.Since(start))
		}()
	}
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler { //nolint:errorlint // sentinel panic value
				panic(v)
			}
			s.log.Error("api: panic", "method", r.Method, "path", r.URL.Path, "panic", v)
			s.problem(w, r, &apiErr{Status: http.StatusInternalServerError, Code: CodeInternal, Detail: "internal error"})
		}
	}()
	if s.cfg.Token != "" && (r.URL.Path == "/v1" || strings.HasPrefix(r.URL.Path, "/v1/")) && !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="txsink"`)
		s.problem(w, r, &apiErr{Status: http.StatusUnauthorized, Code: CodeUnauthorized,
			Detail: "this call needs the header Authorization: Bearer <token>"})
		return
	}
	if v := r.Header.Get(ForwardedHeader); v != "" {
		r = r.WithContext(context.WithValue(r.Context(), forwardedKey{}, v))
	}
	if pattern == "" {
		// The mux answers 404 or 405 (with Allow) in plain text; keep its
		// decision and headers, answer with a problem.
		s.mux.ServeHTTP(&fallbackWriter{s: s, w: w, r: r}, r)
		return
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) authorized(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(tok)), []byte(s.cfg.Token)) == 1
}

// fallbackWriter turns the mux's own 404 and 405 answers into problems.
type fallbackWriter struct {
	s    *Server
	w    http.ResponseWriter
	r    *http.Request
	done bool // header written
	pass bool // not a 404/405: pass the body through
}

func (f *fallbackWriter) Header() http.Header { return f.w.Header() }

func (f *fallbackWriter) WriteHeader(code int) {
	if f.done {
		return
	}
	f.done = true
	switch code {
	case http.StatusNotFound:
		f.s.problem(f.w, f.r, &apiErr{Status: code, Code: CodeNotFound,
			Detail: fmt.Sprintf("no such resource: %s", f.r.URL.Path)})
	case http.StatusMethodNotAllowed:
		f.s.problem(f.w, f.r, &apiErr{Status: code, Code: CodeMethodNotAllowed,
			Detail: fmt.Sprintf("%s is not allowed on %s (allowed: %s)", f.r.Method, f.r.URL.Path, f.w.Header().Get("Allow"))})
	default:
		f.pass = true
		f.w.WriteHeader(code)
	}
}

func (f *fallbackWriter) Write(b []byte) (int, error) {
	if !f.done {
		f.WriteHeader(http.StatusOK)
	}
	if f.pass {
		return f.w.Write(b)
	}
	return len(b), nil
}

var _ io.Writer = (*fallbackWriter)(nil)

// statusWriter remembers the status code written, for Config.Observe.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// status is the code sent; a handler that wrote nothing got 200.
func (w *statusWriter) status() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}
