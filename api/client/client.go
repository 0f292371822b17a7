// Package client is a small Go client of txsink's HTTP API, over TCP or the
// sidecar's Unix socket. Every method maps one endpoint; an error answer
// comes back as a *Error carrying the problem's status and stable code.
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
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/twopc"
)

// Client calls one sidecar. It is safe for concurrent use.
type Client struct {
	base   string
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

// New returns a client of the sidecar at baseURL, e.g. "http://127.0.0.1:8470".
func New(baseURL string, opts ...Option) *Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	return newClient(strings.TrimRight(baseURL, "/"), t, opts)
}

// NewUnix returns a client of the sidecar listening on the Unix socket path.
func NewUnix(path string, opts ...Option) *Client {
	t := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	return newClient("http://unix", t, opts)
}

func newClient(base string, t *http.Transport, opts []Option) *Client {
	c := &Client{base: base, hc: &http.Client{Transport: t}}
	for _, o := range opts {
		o(c)
	}
	return c
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
}

// Is makes errors.Is(err, twopc.ErrDataLoss) true for a data_loss answer.
func (e *Error) Is(target error) bool {
	return target == twopc.ErrDataLoss && e.Code == api.CodeDataLoss
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
	var out twopc.JobInfo
	err := c.doJSON(ctx, http.MethodPut, "/v1/jobs/"+url.PathEscape(job), nil,
		api.JobRequest{Commit: mode, Sinks: sinks}, &out)
	return out, err
}

// Jobs lists every job.
func (c *Client) Jobs(ctx context.Context) ([]twopc.JobInfo, error) {
	var out api.JobList
	err := c.doJSON(ctx, http.MethodGet, "/v1/jobs", nil, nil, &out)
	return out.Jobs, err
}

// Job describes one job and its writers.
func (c *Client) Job(ctx context.Context, job string) (twopc.JobInfo, error) {
	var out twopc.JobInfo
	err := c.doJSON(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(job), nil, nil, &out)
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
	err := c.doJSON(ctx, http.MethodPost, writerPath(job, writer)+"/session", nil, body, &out)
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
	err = c.doJSON(ctx, http.MethodDelete, writerPath(job, writer), nil, nil, &out)
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
	q := url.Values{"epoch": {strconv.FormatUint(epoch, 10)}}
	if seq != nil {
		q.Set("seq", strconv.FormatInt(*seq, 10))
	}
	var out twopc.WriteResult
	err := c.do(ctx, http.MethodPost, writerPath(job, writer)+"/records", q, "application/x-ndjson", body, &out)
	return out, err
}

// Checkpoint completes checkpoint n of the writer with state. wait ""
// means committed. On a data_loss answer it returns the result (status
// "data_loss", the lost branches marked) and an error matching
// twopc.ErrDataLoss.
func (c *Client) Checkpoint(ctx context.Context, job, writer string, epoch uint64, n int64, state []byte, wait twopc.Wait) (twopc.CheckpointResult, error) {
	q := url.Values{"epoch": {strconv.FormatUint(epoch, 10)}}
	var out twopc.CheckpointResult
	err := c.doJSON(ctx, http.MethodPost, writerPath(job, writer)+"/checkpoints/"+strconv.FormatInt(n, 10), q,
		api.CheckpointRequest{State: state, Wait: wait}, &out)
	return out, err
}

// Commit commits every writer's prepared checkpoints ≤ n (external mode).
// Status "committing" (HTTP 202) means durable but not yet confirmed by
// every sink. On a data_loss answer it returns the result (status
// "data_loss", DataLoss per writer) and an error matching twopc.ErrDataLoss.
func (c *Client) Commit(ctx context.Context, job string, n int64) (twopc.CommitResult, error) {
	var out twopc.CommitResult
	err := c.doJSON(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(job)+"/checkpoints/"+strconv.FormatInt(n, 10)+"/commit", nil, nil, &out)
	return out, err
}

// Abort aborts every writer's prepared checkpoint n (external mode).
func (c *Client) Abort(ctx context.Context, job string, n int64) (twopc.CommitResult, error) {
	var out twopc.CommitResult
	err := c.doJSON(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(job)+"/checkpoints/"+strconv.FormatInt(n, 10)+"/abort", nil, nil, &out)
	return out, err
}

// Checkpoints lists a job's unresolved and recent checkpoints.
func (c *Client) Checkpoints(ctx context.Context, job string) ([]twopc.CheckpointInfo, error) {
	var out api.CheckpointList
	err := c.doJSON(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(job)+"/checkpoints", nil, nil, &out)
	return out.Checkpoints, err
}

// Cluster returns the node's view of the cluster.
func (c *Client) Cluster(ctx context.Context) (api.ClusterStatus, error) {
	var out api.ClusterStatus
	err := c.doJSON(ctx, http.MethodGet, "/v1/cluster", nil, nil, &out)
	return out, err
}

// Join asks the cluster (any member; it forwards to the leader) to add the
// node req names, and returns the member as stored.
func (c *Client) Join(ctx context.Context, req api.JoinRequest) (api.Member, error) {
	var out api.Member
	err := c.doJSON(ctx, http.MethodPost, "/v1/cluster/join", nil, req, &out)
	return out, err
}

// RemoveNode removes node id from the cluster (forwarded to the leader).
func (c *Client) RemoveNode(ctx context.Context, id string) error {
	return c.doJSON(ctx, http.MethodDelete, "/v1/cluster/nodes/"+url.PathEscape(id), nil, nil, nil)
}

// Propose sends an encoded journal command to the leader's internal
// endpoint and returns the journal's result (nodes forward with it; see
// POST /v1/cluster/propose).
func (c *Client) Propose(ctx context.Context, cmd []byte) (twopc.ApplyResult, error) {
	var out twopc.ApplyResult
	err := c.do(ctx, http.MethodPost, "/v1/cluster/propose", nil, "application/json", cmd, &out)
	return out, err
}

// Health returns nil when the sidecar is alive.
func (c *Client) Health(ctx context.Context) error {
	return c.doJSON(ctx, http.MethodGet, "/healthz", nil, nil, nil)
}

// Ready returns nil when the sidecar is ready (journal leader, sinks).
func (c *Client) Ready(ctx context.Context) error {
	return c.doJSON(ctx, http.MethodGet, "/readyz", nil, nil, nil)
}

func writerPath(job, writer string) string {
	return "/v1/jobs/" + url.PathEscape(job) + "/writers/" + url.PathEscape(writer)
}

func (c *Client) doJSON(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body []byte
	ct := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, ct = b, "application/json"
	}
	return c.do(ctx, method, path, q, ct, body, out)
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, ct string, body []byte, out any) error {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
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
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
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
	e := &Error{Status: resp.StatusCode}
	var p api.Problem
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") && json.Unmarshal(b, &p) == nil {
		e.Code, e.Title, e.Detail, e.Record = p.Code, p.Title, p.Detail, p.Record
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
