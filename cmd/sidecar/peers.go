package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

// peers makes API clients for the other nodes: one HTTP transport for all,
// the shared token, the forwarded marker, and TLS that trusts the system
// roots, the certificates in tls_cert_file (one certificate shared by the
// nodes, or its chain) and tls_ca_file.
type peers struct {
	self  string
	token string
	hc    *http.Client

	mu      sync.Mutex
	clients map[peerKey]*client.Client
}

type peerKey struct {
	base      string
	forwarded bool
}

// peerCallTimeout bounds one call to another node when the caller's
// context has no shorter deadline (a forwarded proposal, a join).
const peerCallTimeout = 10 * time.Second

func newPeers(cfg Config, token string) (*peers, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 16
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	for _, f := range []string{cfg.TLSCertFile, cfg.TLSCAFile} {
		if f == "" {
			continue
		}
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("peers: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("peers: %s holds no PEM certificate", f)
		}
	}
	t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &peers{self: cfg.NodeID, token: token, hc: &http.Client{Transport: t, Timeout: peerCallTimeout},
		clients: map[peerKey]*client.Client{}}, nil
}

// client returns a client of the node whose API is at base (a URL), for
// this node's own calls (joining, discovery): the other node may forward
// them to its leader.
func (p *peers) client(base string) *client.Client { return p.get(peerKey{base, false}) }

// forwarder returns a client for passing on a call this node received: it
// marks the call forwarded, so the receiver does not pass it on again.
func (p *peers) forwarder(base string) *client.Client { return p.get(peerKey{base, true}) }

func (p *peers) get(k peerKey) *client.Client {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.clients[k]
	if c == nil {
		opts := []client.Option{client.WithHTTPClient(p.hc)}
		if k.forwarded {
			opts = append(opts, client.WithHeader(api.ForwardedHeader, p.self))
		}
		if p.token != "" {
			opts = append(opts, client.WithToken(p.token))
		}
		c = client.New(k.base, opts...)
		p.clients[k] = c
	}
	return c
}

func (p *peers) close() { p.hc.CloseIdleConnections() }

// fromPeer maps another node's problem answer onto the errors the API
// answers with, so a forwarded call answers like a local one: 503 stays
// retryable (ErrUnavailable), 404 node_not_found, 409 membership_conflict
// and 400 keep their meaning. Anything else (401: the tokens differ; 500)
// passes as it is, with the peer's detail.
func fromPeer(base string, err error) error {
	ce, ok := errors.AsType[*client.Error](err)
	if !ok {
		// No answer (connection refused, timeout): the outcome is unknown.
		return &unavailable{msg: fmt.Sprintf("%s did not answer: %v", base, err), err: err}
	}
	switch {
	case ce.Status == http.StatusServiceUnavailable:
		return &unavailable{msg: fmt.Sprintf("%s: %v", base, err), err: err}
	case ce.Code == api.CodeNodeNotFound:
		return fmt.Errorf("%w: %s: %w", api.ErrNodeNotFound, base, err)
	case ce.Code == api.CodeMembershipConflict:
		return fmt.Errorf("%w: %s: %w", api.ErrMembershipConflict, base, err)
	case ce.Status == http.StatusBadRequest:
		return fmt.Errorf("%w: %s: %w", twopc.ErrInvalid, base, err)
	case ce.Status == http.StatusUnauthorized:
		return fmt.Errorf("%s refused this node's token (every node needs the same token_file): %w", base, err)
	}
	return fmt.Errorf("%s: %w", base, err)
}

// retryable: another attempt may succeed (no leader, leader changed, no
// answer).
func retryable(err error) bool { return errors.Is(err, twopc.ErrUnavailable) }

// unavailable is a retryable failure of a call to another node: it matches
// twopc.ErrUnavailable (503 when answered, a retry for forwarding and
// joining) without its "journal unavailable" text, which would mislead in
// a join's log, and keeps the cause.
type unavailable struct {
	msg string
	err error
}

func (e *unavailable) Error() string   { return e.msg }
func (e *unavailable) Unwrap() []error { return []error{twopc.ErrUnavailable, e.err} }
