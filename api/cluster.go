package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/txsink/txsink/twopc"
)

// The cluster endpoints (docs/DESIGN.md §5, "Forming a cluster"):
//
//	POST   /v1/cluster/join         add a node (any member forwards it to the leader)
//	DELETE /v1/cluster/nodes/{id}   remove a node (forwarded to the leader)
//	POST   /v1/cluster/propose      internal: a follower's journal command for the leader
//
// They are served only when Config.Admin is set (else 404 not_found), and
// like every /v1 call they need the token when one is configured: nodes call
// each other with the token they share.

// ForwardedHeader marks a call one node forwarded to another (its value is
// the sending node's id). A ClusterAdmin answers a forwarded call itself or
// with 503, never by forwarding it again, so two nodes with stale views of
// the leader cannot pass a call back and forth.
const ForwardedHeader = "Txsink-Forwarded"

type forwardedKey struct{}

// Forwarded reports whether the call in ctx came forwarded from another
// node (it carried ForwardedHeader).
func Forwarded(ctx context.Context) bool { return ctx.Value(forwardedKey{}) != nil }

// ClusterAdmin drives the cluster endpoints; cmd/sidecar implements it over
// raftlog and the journal. Errors: ErrNodeNotFound (404), ErrMembershipConflict
// (409), errors wrapping twopc.ErrInvalid (400) or twopc.ErrUnavailable (503,
// retry: no leader, the leader changed, the outcome is unknown).
type ClusterAdmin interface {
	// Join makes the node a member (raft server and journal member entry)
	// and returns it as stored. The same id and addresses again change
	// nothing; the same id with other addresses updates them.
	Join(ctx context.Context, req JoinRequest) (Member, error)
	// RemoveNode removes the raft server and the journal's member entry.
	RemoveNode(ctx context.Context, id string) error
	// Propose appends one encoded twopc.Command on the leader and returns
	// the journal's result; on a follower it fails with twopc.ErrUnavailable
	// and appends nothing (the caller retries against the leader).
	Propose(ctx context.Context, cmd []byte) (twopc.ApplyResult, error)
}

// Errors a ClusterAdmin returns for the answers that are not retries.
var (
	// ErrNodeNotFound: no member has the id (404 node_not_found).
	ErrNodeNotFound = errors.New("no such node")
	// ErrMembershipConflict: the change would break the cluster, e.g.
	// removing its last voter (409 membership_conflict).
	ErrMembershipConflict = errors.New("membership change refused")
)

// JoinRequest is the body of POST /v1/cluster/join.
type JoinRequest struct {
	// ID is the joining node's id (its node_id).
	ID string `json:"id"`
	// RaftAddr is its raft address as other nodes dial it (host:port).
	RaftAddr string `json:"raft_addr"`
	// APIAddr is the base URL of its HTTP API as other nodes use it.
	APIAddr string `json:"api_addr"`
	// Voter: false joins as a non-voter (default true).
	Voter *bool `json:"voter,omitempty"`
}

// IsVoter is Voter with its default (true).
func (r JoinRequest) IsVoter() bool { return r.Voter == nil || *r.Voter }

// RemoveResult is the body of a successful DELETE /v1/cluster/nodes/{id}.
type RemoveResult struct {
	ID      string `json:"id"`
	Removed bool   `json:"removed"`
}

// maxCommandBytes bounds a forwarded journal command: a checkpoint's state
// (base64) plus its branches' handles.
const maxCommandBytes = 2*smallBodyBytes + 64<<10

func (s *Server) admin() (ClusterAdmin, error) {
	if s.cfg.Admin == nil {
		return nil, &apiErr{Status: http.StatusNotFound, Code: CodeNotFound, Detail: "this server has no cluster membership endpoints"}
	}
	return s.cfg.Admin, nil
}

func (s *Server) join(w http.ResponseWriter, r *http.Request) error {
	a, err := s.admin()
	if err != nil {
		return err
	}
	var req JoinRequest
	ok, err := decodeJSONBody(w, r, smallBodyBytes, &req)
	if err != nil {
		return err
	}
	if !ok {
		return badRequest(CodeMalformedBody, "the body must be a JSON object {id, raft_addr, api_addr, voter}")
	}
	if err := twopc.CheckName("node", req.ID); err != nil {
		return badRequest(CodeInvalidName, fmt.Sprintf("node id %q must be 1-64 of A-Z a-z 0-9 . _ - and start with a letter or digit", req.ID))
	}
	if err := CheckHostPort(req.RaftAddr); err != nil {
		return badRequest(CodeInvalidRequest, fmt.Sprintf("raft_addr %q: %v", req.RaftAddr, err))
	}
	if _, err := ParseBaseURL(req.APIAddr); err != nil {
		return badRequest(CodeInvalidRequest, fmt.Sprintf("api_addr %q: %v", req.APIAddr, err))
	}
	m, err := a.Join(r.Context(), req)
	if err != nil {
		return err
	}
	s.reply(w, r, http.StatusOK, m)
	return nil
}

func (s *Server) removeNode(w http.ResponseWriter, r *http.Request) error {
	a, err := s.admin()
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	if err := twopc.CheckName("node", id); err != nil {
		return badRequest(CodeInvalidName, fmt.Sprintf("node id %q must be 1-64 of A-Z a-z 0-9 . _ - and start with a letter or digit", id))
	}
	if err := a.RemoveNode(r.Context(), id); err != nil {
		return err
	}
	s.reply(w, r, http.StatusOK, RemoveResult{ID: id, Removed: true})
	return nil
}

func (s *Server) propose(w http.ResponseWriter, r *http.Request) error {
	a, err := s.admin()
	if err != nil {
		return err
	}
	if mt := mediaType(r); !isJSONType(mt) {
		return unsupported(mt, "application/json")
	}
	buf, err := readBody(w, r, maxCommandBytes)
	if err != nil {
		return err
	}
	cmd := bytes.Clone(buf.Bytes())
	putBuf(buf)
	if err := CheckCommand(cmd); err != nil {
		return err
	}
	res, err := a.Propose(r.Context(), cmd)
	if err != nil {
		return err
	}
	s.reply(w, r, http.StatusOK, res)
	return nil
}

// CheckCommand reports whether cmd is a journal command a follower may
// forward: one JSON object decoding into a twopc.Command with no unknown
// field, a known op and an idempotency key (without a key a retry after
// an unknown outcome would apply it twice). The error is a 400 answer.
func CheckCommand(cmd []byte) error {
	start := skipSpace(cmd, 0)
	if start == len(cmd) || cmd[start] != '{' {
		return badRequest(CodeMalformedBody, "the body must be a journal command (a JSON object)")
	}
	var c twopc.Command
	dec := json.NewDecoder(bytes.NewReader(cmd))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return badRequest(CodeMalformedBody, "not a journal command: "+describe(err))
	}
	if end := skipSpace(cmd, int(dec.InputOffset())); end != len(cmd) {
		return badRequest(CodeMalformedBody, fmt.Sprintf("unexpected data after the command at offset %d", end))
	}
	if !twopc.KnownOp(c.Op) { // the journal's Apply panics on an unknown op, on every replica
		return badRequest(CodeInvalidRequest, fmt.Sprintf("unknown journal op %q", c.Op))
	}
	if c.Key == "" {
		return badRequest(CodeInvalidRequest, "a forwarded command needs an idempotency key")
	}
	return nil
}

// CheckHostPort accepts host:port with a host name or a specific IP (not
// 0.0.0.0 or ::) and a port 1-65535: an address another node can dial.
func CheckHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("port %q: want 1-65535", port)
	}
	if host == "" {
		return errors.New("no host")
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return fmt.Errorf("%s is not an address other nodes can reach; give a specific one", host)
	}
	return nil
}

// ParseBaseURL parses a node's API address: an http:// or https:// URL
// with a host and a port and no path, query or user (a trailing / is
// allowed), or a bare host:port, which means http. It returns the
// normalised form scheme://host:port.
func ParseBaseURL(s string) (string, error) {
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("scheme %q: want http or https", u.Scheme)
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", errors.New("want only scheme://host:port")
	}
	if u.Port() == "" {
		return "", errors.New("no port")
	}
	if err := CheckHostPort(u.Host); err != nil {
		return "", err
	}
	return u.Scheme + "://" + u.Host, nil
}
