// Package client is a small Go client of txsink's HTTP API, over TCP or the
// sidecar's Unix socket. Every method of Client maps one endpoint; an error
// answer comes back as a *Error carrying the problem's status and stable
// code. Job and Writer (writer.go) are the app-facing layer on top: a
// Writer numbers its writes, retries 429 and 503 answers with backoff and
// reopens when the app asks (Reopen), like the Python and Node clients.
//
// # Clusters
//
// Any node of a cluster takes a session's calls: a node that does not own
// the session passes them to the node that does, so a client needs no
// notion of ownership. WithEndpoints gives the client the other nodes' base
// URLs; it sends every call to one endpoint at a time and moves to the next
// when a node cannot be reached:
//
//   - A call that could not connect at all never reached a node, so it is
//     sent to the next endpoint at once (each endpoint once per call).
//   - A session call (Write, WriteNDJSON, WriteBinary, Checkpoint) that got no answer
//     after it was sent is not sent again anywhere: its outcome is unknown.
//     It returns an error matching ErrReopen, and the next call goes to the
//     next endpoint.
//   - OpenSession, PutJob and the reads are safe to repeat, so they move to
//     the next endpoint on any failure to get an answer.
//
// The client never reopens a session by itself: reopening aborts the
// records written since the last checkpoint, and only the application can
// replay them (it resumes its input from the state the open restores, and
// in external commit mode it knows what to pass as restore). So after an
// error for which errors.Is(err, ErrReopen) holds, call OpenSession again
// (on the endpoint in use, see Endpoint), resume from its state and replay.
// That covers a node that cannot reach the session's owner either: it
// answers 503 unavailable naming the owner (Error.Owner), and opening the
// session on it moves the writer there.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/twopc"
)

// Client calls one sidecar, or the nodes of a cluster (WithEndpoints). It
// is safe for concurrent use.
type Client struct {
	bases  []string     // base URLs; bases[0] is the one New was given
	cur    atomic.Int64 // index in bases of the endpoint in use
	hc     *http.Client
	token  string
	header http.Header
}

// Option configures a Client.
type Option func(*Client)

// WithToken sends the bearer token on every call.
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

// WithHeader sends the header on every call (e.g. api.ForwardedHeader
// between nodes).
func WithHeader(name, value string) Option {
	return func(c *Client) {
		if c.header == nil {
			c.header = http.Header{}
		}
		c.header.Set(name, value)
	}
}

// WithHTTPClient replaces the HTTP client (and so its transport).
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithEndpoints adds the base URLs of other nodes of the cluster, tried in
// order after the first one (see "Clusters" above). With NewUnix, the
// socket comes first and these are reached over TCP.
func WithEndpoints(baseURLs ...string) Option {
	return func(c *Client) {
		for _, u := range baseURLs {
			c.bases = append(c.bases, strings.TrimRight(u, "/"))
		}
	}
}

// New returns a client of the sidecar at baseURL, e.g. "http://127.0.0.1:8470".
func New(baseURL string, opts ...Option) *Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	return newClient(strings.TrimRight(baseURL, "/"), t, opts)
}

// unixHost is the host of the base URL of a Unix-socket client.
const unixHost = "unix"

// NewUnix returns a client of the sidecar listening on the Unix socket path.
func NewUnix(path string, opts ...Option) *Client {
	t := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			if host, _, _ := net.SplitHostPort(addr); host == unixHost {
				return d.DialContext(ctx, "unix", path)
			}
			// Another node of WithEndpoints.
			return d.DialContext(ctx, network, addr)
		},
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	return newClient("http://"+unixHost, t, opts)
}

func newClient(base string, t *http.Transport, opts []Option) *Client {
	c := &Client{bases: []string{base}, hc: &http.Client{Transport: t}}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Endpoint is the base URL the next call goes to ("http://unix" for the
// Unix socket).
func (c *Client) Endpoint() string { return c.bases[c.cur.Load()] }

// ErrReopen is matched by errors.Is for every error after which the
// application must reopen the session (OpenSession), resume its input from
// the state the open restores and replay: 409 session_fenced,
// session_lost, no_session, seq_conflict and checkpoint_order, 502
// sink_failure, a 503 unavailable from a node that could not reach the
// session's owner (Error.Owner set), and a session call that got no answer.
var ErrReopen = errors.New("txsink: reopen the session and resume from the checkpoint it restores")

// reopenCodes are the problem codes that match ErrReopen.
var reopenCodes = map[string]bool{
	api.CodeSessionFenced: true, api.CodeSessionLost: true, api.CodeNoSession: true,
	api.CodeSeqConflict: true, api.CodeCheckpointOrder: true, api.CodeSinkFailure: true,
}

// Error is a problem answer (RFC 9457) or another non-2xx response, or a
// session opened over a data loss (Status 200, Code "data_loss").
//
// errors.Is(err, twopc.ErrDataLoss) reports a data_loss answer: a sink had
// aborted a checkpoint the journal decided to commit. Then Checkpoint and
// Commit also return the call's result (status "data_loss"), and
// OpenSession returns the opened session, whose DataLoss lists the lost
// checkpoints. The records of those checkpoints are not in the sink: stop
// and let an operator decide; do not simply go on.
type Error struct {
	Status int    // HTTP status
	Code   string // stable problem code, e.g. "session_fenced" (see api.Code*)
	Title  string
	Detail string
	// Record is the 1-based index in the write call of the record the
	// problem is about, or 0.
	Record int
	// Owner is set on a 503 unavailable from a node that could not pass a
	// session call to the node owning the session: that node's id.
	Owner string
	// RetryAfter is the answer's Retry-After (429 and 503), or 0.
	RetryAfter time.Duration
}

// Is makes errors.Is(err, twopc.ErrDataLoss) true for a data_loss answer,
// and errors.Is(err, ErrReopen) for the answers listed there.
func (e *Error) Is(target error) bool {
	switch target {
	case twopc.ErrDataLoss:
		return e.Code == api.CodeDataLoss
	case ErrReopen:
		return reopenCodes[e.Code] || (e.Code == api.CodeUnavailable && e.Owner != "")
	}
	return false
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return fmt.Sprintf("txsink: %d %s", e.Status, e.Code)
	}
	return fmt.Sprintf("txsink: %d %s: %s", e.Status, e.Code, e.Detail)
}

// Code returns err's problem code, or "" when err is not a *Error.
func Code(err error) string {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Code
	}
	return ""
}

// Seq returns a pointer to n, for the seq argument of the write calls.
func Seq(n int64) *int64 { return &n }

// PutJob creates or updates a job. sinks nil means every configured sink.
func (c *Client) PutJob(ctx context.Context, job string, mode twopc.Mode, sinks []string) (twopc.JobInfo, error) {
	return c.PutJobSpec(ctx, job, api.JobRequest{Commit: mode, Sinks: sinks})
}

// PutJobSpec creates or updates a job from a full request, e.g. with a
// delivery guarantee: api.JobRequest{Guarantee: twopc.GuaranteeAtLeastOnce}.
func (c *Client) PutJobSpec(ctx context.Context, job string, req api.JobRequest) (twopc.JobInfo, error) {
	var out twopc.JobInfo
	err := c.doJSON(ctx, repeatable, http.MethodPut, "/v1/jobs/"+url.PathEscape(job), nil, req, &out)
	return out, err
}

// Jobs lists every job.
func (c *Client) Jobs(ctx context.Context) ([]twopc.JobInfo, error) {
	var out api.JobList
	err := c.doJSON(ctx, repeatable, http.MethodGet, "/v1/jobs", nil, nil, &out)
	return out.Jobs, err
}

// Job describes one job and its writers.
func (c *Client) Job(ctx context.Context, job string) (twopc.JobInfo, error) {
	var out twopc.JobInfo
	err := c.doJSON(ctx, repeatable, http.MethodGet, "/v1/jobs/"+url.PathEscape(job), nil, nil, &out)
	return out, err
}

// OpenSession opens a new session of a writer; restore (external mode) is
// the checkpoint the application restored, nil for none. When checkpoints
// of the writer lost data (out.DataLoss not empty) the session is open and
// returned, together with an *Error for which errors.Is(err,
// twopc.ErrDataLoss) holds, so that a caller cannot take it for a clean
// restore by accident.
func (c *Client) OpenSession(ctx context.Context, job, writer string, restore *int64) (twopc.SessionInfo, error) {
	var out twopc.SessionInfo
	var body any
	if restore != nil {
		body = api.SessionRequest{Restore: restore}
	}
	err := c.doJSON(ctx, repeatable, http.MethodPost, writerPath(job, writer)+"/session", nil, body, &out)
	if err == nil && (len(out.DataLoss) > 0 || out.Status == twopc.StatusDataLoss) {
		err = &Error{Status: http.StatusOK, Code: api.CodeDataLoss, Title: "Data loss",
			Detail: fmt.Sprintf("session of %s/%s opened (epoch %d), restoring checkpoint %d (%s); checkpoints %v lost data in a sink",
				job, writer, out.Epoch, out.Checkpoint, out.Status, out.DataLoss)}
	}
	return out, err
}

// DeleteWriter forgets a writer with nothing in doubt (409 writer_in_doubt
// otherwise); deleted is false when it did not exist. A later session of the
// name starts from checkpoint 0 with no state.
func (c *Client) DeleteWriter(ctx context.Context, job, writer string) (deleted bool, err error) {
	var out api.WriterDeleted
	err = c.doJSON(ctx, once, http.MethodDelete, writerPath(job, writer), nil, nil, &out)
	return out.Deleted, err
}

// Write sends records as NDJSON. seq (nil: none) makes the call retry-safe.
func (c *Client) Write(ctx context.Context, job, writer string, epoch uint64, seq *int64, recs []*twopc.Record) (twopc.WriteResult, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf) // one value a line
	for _, r := range recs {
		if err := enc.Encode(r); err != nil {
			return twopc.WriteResult{}, err
		}
	}
	return c.WriteNDJSON(ctx, job, writer, epoch, seq, buf.Bytes())
}

// WriteNDJSON sends a ready NDJSON body (one record a line): the fast path.
func (c *Client) WriteNDJSON(ctx context.Context, job, writer string, epoch uint64, seq *int64, body []byte) (twopc.WriteResult, error) {
	return c.writeBody(ctx, job, writer, epoch, seq, "application/x-ndjson", body)
}

// WriteBinary sends a ready binary body (api.BinaryRecordsType, built with
// AppendBinaryRecords or by the app itself): Kafka records without JSON on
// either side. A retry with seq must send the same bytes.
func (c *Client) WriteBinary(ctx context.Context, job, writer string, epoch uint64, seq *int64, body []byte) (twopc.WriteResult, error) {
	return c.writeBody(ctx, job, writer, epoch, seq, api.BinaryRecordsType, body)
}

// AppendBinaryRecords appends recs to dst as an api.BinaryRecordsType body
// for WriteBinary. Kafka records only: Stmt/Args are an error, and so is a
// Key or Value given as JSON other than a string (sent as its UTF-8 bytes,
// as the sidecar treats a JSON string) or null; give bytes in
// KeyB64/ValueB64. See api.AppendBinaryRecords.
func AppendBinaryRecords(dst []byte, recs []*twopc.Record) ([]byte, error) {
	return api.AppendBinaryRecords(dst, recs)
}

func (c *Client) writeBody(ctx context.Context, job, writer string, epoch uint64, seq *int64, ct string, body []byte) (twopc.WriteResult, error) {
	q := url.Values{"epoch": {strconv.FormatUint(epoch, 10)}}
	if seq != nil {
		q.Set("seq", strconv.FormatInt(*seq, 10))
	}
	var out twopc.WriteResult
	err := c.do(ctx, session, http.MethodPost, writerPath(job, writer)+"/records", q, ct, body, &out)
	return out, err
}

// Checkpoint completes checkpoint n of the writer with state. wait ""
// means committed. On a data_loss answer it returns the result (status
// "data_loss", the lost branches marked) and an error matching
// twopc.ErrDataLoss.
func (c *Client) Checkpoint(ctx context.Context, job, writer string, epoch uint64, n int64, state []byte, wait twopc.Wait) (twopc.CheckpointResult, error) {
	return c.CheckpointWith(ctx, job, writer, epoch, n, api.CheckpointRequest{State: state, Wait: wait})
}

// CheckpointWith is Checkpoint with the whole request body: use it to pass
// consumer-group offsets (req.Offsets) committed with the checkpoint's
// output. A retry must send the same offsets as the first attempt.
func (c *Client) CheckpointWith(ctx context.Context, job, writer string, epoch uint64, n int64, req api.CheckpointRequest) (twopc.CheckpointResult, error) {
	q := url.Values{"epoch": {strconv.FormatUint(epoch, 10)}}
	var out twopc.CheckpointResult
	err := c.doJSON(ctx, session, http.MethodPost, writerPath(job, writer)+"/checkpoints/"+strconv.FormatInt(n, 10), q,
		req, &out)
	return out, err
}

// Commit commits every writer's prepared checkpoints ≤ n (external mode).
// Status "committing" (HTTP 202) means durable but not yet confirmed by
// every sink. On a data_loss answer it returns the result (status
// "data_loss", DataLoss per writer) and an error matching twopc.ErrDataLoss.
func (c *Client) Commit(ctx context.Context, job string, n int64) (twopc.CommitResult, error) {
	var out twopc.CommitResult
	err := c.doJSON(ctx, once, http.MethodPost, "/v1/jobs/"+url.PathEscape(job)+"/checkpoints/"+strconv.FormatInt(n, 10)+"/commit", nil, nil, &out)
	return out, err
}

// Abort aborts every writer's prepared checkpoint n (external mode).
func (c *Client) Abort(ctx context.Context, job string, n int64) (twopc.CommitResult, error) {
	var out twopc.CommitResult
	err := c.doJSON(ctx, once, http.MethodPost, "/v1/jobs/"+url.PathEscape(job)+"/checkpoints/"+strconv.FormatInt(n, 10)+"/abort", nil, nil, &out)
	return out, err
}

// Checkpoints lists a job's unresolved and recent checkpoints.
func (c *Client) Checkpoints(ctx context.Context, job string) ([]twopc.CheckpointInfo, error) {
	var out api.CheckpointList
	err := c.doJSON(ctx, repeatable, http.MethodGet, "/v1/jobs/"+url.PathEscape(job)+"/checkpoints", nil, nil, &out)
	return out.Checkpoints, err
}

// Cluster returns the node's view of the cluster.
func (c *Client) Cluster(ctx context.Context) (api.ClusterStatus, error) {
	var out api.ClusterStatus
	err := c.doJSON(ctx, repeatable, http.MethodGet, "/v1/cluster", nil, nil, &out)
	return out, err
}

// Join asks the cluster (any member; it forwards to the leader) to add the
// node req names, and returns the member as stored. Joining again with the
// same id and addresses changes nothing, so it is safe to repeat.
func (c *Client) Join(ctx context.Context, req api.JoinRequest) (api.Member, error) {
	var out api.Member
	err := c.doJSON(ctx, repeatable, http.MethodPost, "/v1/cluster/join", nil, req, &out)
	return out, err
}

// RemoveNode removes node id from the cluster (forwarded to the leader).
func (c *Client) RemoveNode(ctx context.Context, id string) error {
	return c.doJSON(ctx, once, http.MethodDelete, "/v1/cluster/nodes/"+url.PathEscape(id), nil, nil, nil)
}

// Propose sends an encoded journal command to the leader's internal
// endpoint and returns the journal's result (nodes forward with it; see
// POST /v1/cluster/propose). The command's key makes a repeat return the
// first result, so the caller may retry it.
func (c *Client) Propose(ctx context.Context, cmd []byte) (twopc.ApplyResult, error) {
	var out twopc.ApplyResult
	err := c.do(ctx, once, http.MethodPost, "/v1/cluster/propose", nil, "application/json", cmd, &out)
	return out, err
}

// Health returns nil when the sidecar is alive.
func (c *Client) Health(ctx context.Context) error {
	return c.doJSON(ctx, repeatable, http.MethodGet, "/healthz", nil, nil, nil)
}

// Ready returns nil when the sidecar is ready (journal leader, sinks).
func (c *Client) Ready(ctx context.Context) error {
	return c.doJSON(ctx, repeatable, http.MethodGet, "/readyz", nil, nil, nil)
}

func writerPath(job, writer string) string {
	return "/v1/jobs/" + url.PathEscape(job) + "/writers/" + url.PathEscape(writer)
}

// callKind says what a call that got no answer may do next.
type callKind int

const (
	// repeatable: safe to send again anywhere (reads, PutJob, OpenSession).
	repeatable callKind = iota
	// once: sent again only when it never left (a failed connect).
	once
	// session: like once, and no answer means: reopen (ErrReopen).
	session
)

func (c *Client) doJSON(ctx context.Context, kind callKind, method, path string, q url.Values, in, out any) error {
	var body []byte
	ct := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, ct = b, "application/json"
	}
	return c.do(ctx, kind, method, path, q, ct, body, out)
}

// do sends the call to the endpoint in use; when no answer comes back it
// moves to the next endpoint and, as kind allows, sends it there too (each
// endpoint at most once per call).
func (c *Client) do(ctx context.Context, kind callKind, method, path string, q url.Values, ct string, body []byte, out any) error {
	start := c.cur.Load()
	n := int64(len(c.bases))
	var err error
	for i := int64(0); i < n; i++ {
		at := (start + i) % n
		var resp *http.Response
		resp, err = c.send(ctx, c.bases[at], method, path, q, ct, body)
		if err == nil {
			return c.read(resp, method, path, out)
		}
		if ctx.Err() != nil {
			break // the caller gave up; the node is not at fault
		}
		// The next call goes to the next endpoint, unless a concurrent
		// call moved on already.
		c.cur.CompareAndSwap(at, (at+1)%n)
		if kind != repeatable && !neverSent(err) {
			break
		}
	}
	if kind == session {
		return fmt.Errorf("txsink: %s %s got no answer, its outcome is unknown (%w); %w", method, path, err, ErrReopen)
	}
	return err
}

// neverSent reports a failure to connect: the request did not leave.
func neverSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func (c *Client) send(ctx context.Context, base, method, path string, q url.Values, ct string, body []byte) (*http.Response, error) {
	u := base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	req.Header.Set("Accept", "application/json, application/problem+json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for k, vs := range c.header {
		req.Header[k] = vs
	}
	return c.hc.Do(req)
}

func (c *Client) read(resp *http.Response, method, path string, out any) error {
	defer func() {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // keep the connection reusable
		resp.Body.Close()
	}()
	if resp.StatusCode >= 300 {
		return readError(resp, out)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("txsink: decoding the %s %s answer: %w", method, path, err)
	}
	return nil
}

// readError decodes an error answer; a data_loss problem's result goes to
// out, so the caller sees which checkpoints lost data.
func readError(resp *http.Response, out any) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &Error{Status: resp.StatusCode, RetryAfter: retryAfter(resp.Header)}
	var p api.Problem
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") && json.Unmarshal(b, &p) == nil {
		e.Code, e.Title, e.Detail, e.Record, e.Owner = p.Code, p.Title, p.Detail, p.Record, p.Owner
		if out != nil && len(p.Result) > 0 && p.Code == api.CodeDataLoss {
			if err := json.Unmarshal(p.Result, out); err != nil {
				return fmt.Errorf("%w (its result could not be decoded: %v)", e, err)
			}
		}
		return e
	}
	e.Title = http.StatusText(resp.StatusCode)
	e.Detail = strings.TrimSpace(string(b))
	return e
}
