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
	base  string
	hc    *http.Client
	token string
}

// Option configures a Client.
type Option func(*Client)

// WithToken sends the bearer token on every call.
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

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

// Error is a problem answer (RFC 9457) or another non-2xx response.
type Error struct {
	Status int    // HTTP status
	Code   string // stable problem code, e.g. "session_fenced" (see api.Code*)
	Title  string
	Detail string
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
// the checkpoint the application restored, nil for none.
func (c *Client) OpenSession(ctx context.Context, job, writer string, restore *int64) (twopc.SessionInfo, error) {
	var out twopc.SessionInfo
	var body any
	if restore != nil {
		body = api.SessionRequest{Restore: restore}
	}
	err := c.doJSON(ctx, http.MethodPost, writerPath(job, writer)+"/session", nil, body, &out)
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
// means committed.
func (c *Client) Checkpoint(ctx context.Context, job, writer string, epoch uint64, n int64, state []byte, wait twopc.Wait) (twopc.CheckpointResult, error) {
	q := url.Values{"epoch": {strconv.FormatUint(epoch, 10)}}
	var out twopc.CheckpointResult
	err := c.doJSON(ctx, http.MethodPost, writerPath(job, writer)+"/checkpoints/"+strconv.FormatInt(n, 10), q,
		api.CheckpointRequest{State: state, Wait: wait}, &out)
	return out, err
}

// Commit commits every writer's prepared checkpoints ≤ n (external mode).
// Status "committing" (HTTP 202) means durable but not yet confirmed by
// every sink.
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
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer func() {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // keep the connection reusable
		resp.Body.Close()
	}()
	if resp.StatusCode >= 300 {
		return readError(resp)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("txsink: decoding the %s %s answer: %w", method, path, err)
	}
	return nil
}

func readError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &Error{Status: resp.StatusCode}
	var p api.Problem
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") && json.Unmarshal(b, &p) == nil {
		e.Code, e.Title, e.Detail = p.Code, p.Title, p.Detail
		return e
	}
	e.Title = http.StatusText(resp.StatusCode)
	e.Detail = strings.TrimSpace(string(b))
	return e
}
