package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"time"
)

// Session calls reach the node that owns the session (docs/DESIGN.md §3).
//
// In a cluster a writer's session lives on the node where it was opened,
// the journal's owner of the writer. Any node takes the session calls
// (records, checkpoint): when Config.SessionOwner says the writer belongs
// to another node, the call is passed to that node byte for byte, before
// its body is read here, with httputil.ReverseProxy. Records never pass
// through this node's memory beyond the proxy's copy buffer; this node
// neither decodes nor checks them, the owner does (and checks the token
// again: Authorization is passed on).
//
// Invariants:
//   - A call carrying Txsink-Forwarded-By was passed on once already and is
//     served here whatever SessionOwner says (no loops). Served here means
//     the coordinator's answer: 409 session_lost or session_fenced when this
//     node does not hold the session, never a silent success.
//   - The owner's answer (status, headers, body) is the caller's answer.
//   - An owner that cannot be reached, or does not answer in time, is 503
//     unavailable naming the owner, with the problem's owner member set: the
//     caller reopens the session on a reachable node, which moves the writer
//     there. The outcome of the call on the owner is then unknown, and the
//     reopen settles it (the journal keeps what was journaled, the rest of
//     the session's branches is aborted).
//   - Session open is never passed on: opening on this node is how an
//     application moves a writer here.

// ForwardedByHeader names the node that passed a call on. A call that has
// it is never passed on again.
const ForwardedByHeader = "Txsink-Forwarded-By"

// Outcomes of a passed call, for Config.ObserveProxy.
const (
	ProxyAnswered    = "answered"
	ProxyUnreachable = "unreachable"
	ProxyCanceled    = "canceled"
)

// proxyMargin is what a passed call may take beyond the owner's own
// deadline: the owner answers at its deadline (502, 503 or 202), then the
// answer crosses the network. (Server.margin; tests shorten it.)
const proxyMargin = 5 * time.Second

// proxyDialTimeout bounds connecting (and the TLS handshake) to an owner.
const proxyDialTimeout = 5 * time.Second

// errOwnerSlow ends a passed call whose owner did not answer in time.
var errOwnerSlow = errors.New("no answer in time")

// proxyCall is what the proxy's hooks need of one passed call; it rides in
// the request's context.
type proxyCall struct {
	node, addr, route string
	path              string // the path asked for, for the problem's instance
	target            *url.URL
	started           time.Time
}

type proxyCallKey struct{}

func (s *Server) newProxy() *httputil.ReverseProxy {
	t := s.cfg.ProxyTransport
	if t == nil {
		d := &net.Dialer{Timeout: proxyDialTimeout, KeepAlive: 30 * time.Second}
		tr := &http.Transport{
			// Never an environment proxy between nodes.
			Proxy:               nil,
			DialContext:         d.DialContext,
			TLSHandshakeTimeout: proxyDialTimeout,
			MaxIdleConnsPerHost: 64,
			// Below the owner's keep-alive idle timeout (DefaultIdleTimeout),
			// so this side closes an idle connection first.
			IdleConnTimeout: 90 * time.Second,
		}
		if s.cfg.ProxyTLS != nil {
			tr.TLSClientConfig = s.cfg.ProxyTLS.Clone()
		}
		t = tr
	}
	return &httputil.ReverseProxy{
		Transport: t,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pc := pr.In.Context().Value(proxyCallKey{}).(*proxyCall)
			pr.SetURL(pc.target)
			// Keep the chain of the hops before this one.
			pr.Out.Header["X-Forwarded-For"] = pr.In.Header["X-Forwarded-For"]
			pr.SetXForwarded()
			pr.Out.Header.Set(ForwardedByHeader, s.cfg.Node)
		},
		ModifyResponse: func(resp *http.Response) error {
			pc := resp.Request.Context().Value(proxyCallKey{}).(*proxyCall)
			s.proxied(pc, ProxyAnswered, resp.StatusCode, nil)
			return nil
		},
		ErrorHandler: s.ownerUnreachable,
		ErrorLog:     slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
}

// owned serves a session call here, or passes it to the node owning the
// session. timeout is the owner's deadline for the call.
func (s *Server) owned(timeout time.Duration, fn func(http.ResponseWriter, *http.Request) error) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		if s.proxy == nil {
			return fn(w, r)
		}
		if by := r.Header.Get(ForwardedByHeader); by != "" {
			if s.log.Enabled(r.Context(), slog.LevelDebug) {
				s.log.Debug("api: serving a call passed on by another node here", "method", r.Method, "path", r.URL.Path, "from", by)
			}
			return fn(w, r)
		}
		job, jerr := pathName(r, "job")
		writer, werr := pathName(r, "writer")
		if jerr != nil || werr != nil {
			return fn(w, r) // answers the 400 here
		}
		node, addr, remote := s.cfg.SessionOwner(job, writer)
		if !remote {
			return fn(w, r)
		}
		pc := &proxyCall{node: node, addr: addr, route: r.Pattern, path: r.URL.Path, started: time.Now()}
		u, err := url.Parse(addr)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			err := fmt.Errorf("its API address %q in the journal is not an http(s) URL", addr)
			s.proxied(pc, ProxyUnreachable, http.StatusServiceUnavailable, err)
			s.problem(w, r, s.unreachableErr(pc, err))
			return nil
		}
		pc.target = u
		s.pass(w, r, pc, timeout)
		return nil
	}
}

// pass runs the reverse proxy under the call's bounds: the whole call
// within the read timeout (the body's arrival) plus the owner's deadline
// plus proxyMargin, and, once the body is passed on, the owner's answer
// within its deadline plus proxyMargin.
func (s *Server) pass(w http.ResponseWriter, r *http.Request, pc *proxyCall, timeout time.Duration) {
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	ctx, stop := context.WithTimeoutCause(ctx, s.cfg.ReadTimeout+timeout+s.margin, errOwnerSlow)
	defer stop()
	// Set on the transport's goroutine once the request and its body are
	// written (the owner may answer before that, e.g. a 401: then it may
	// come after pass returned, and only cancels a finished context).
	var answerTimer atomic.Pointer[time.Timer]
	defer func() {
		if t := answerTimer.Load(); t != nil {
			t.Stop()
		}
	}()
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				answerTimer.Store(time.AfterFunc(timeout+s.margin, func() { cancel(errOwnerSlow) }))
			}
		},
	})
	ctx = context.WithValue(ctx, proxyCallKey{}, pc)
	s.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// ownerUnreachable is the proxy's ErrorHandler: nothing came back from the
// owner (it could not be dialled, broke the connection, or did not answer
// in time).
func (s *Server) ownerUnreachable(w http.ResponseWriter, r *http.Request, err error) {
	pc := r.Context().Value(proxyCallKey{}).(*proxyCall)
	if cause := context.Cause(r.Context()); cause != nil {
		err = cause
	}
	// r is the outbound request: answer for the path the caller asked.
	in := *r
	u := *r.URL
	u.Path, u.RawPath = pc.path, ""
	in.URL = &u
	if errors.Is(err, context.Canceled) {
		// The caller went away: nobody reads this answer.
		s.proxied(pc, ProxyCanceled, 0, err)
		s.problem(w, &in, s.unreachableErr(pc, err))
		return
	}
	if errors.Is(err, errOwnerSlow) {
		err = fmt.Errorf("%w (the call's deadline plus %s)", err, s.margin)
	}
	s.proxied(pc, ProxyUnreachable, http.StatusServiceUnavailable, err)
	s.problem(w, &in, s.unreachableErr(pc, err))
}

func (s *Server) unreachableErr(pc *proxyCall, err error) *apiErr {
	return &apiErr{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Owner: pc.node,
		Detail: fmt.Sprintf("this session belongs to node %s (%s), which node %s could not reach: %v; "+
			"its outcome there is unknown: reopen the session on a reachable node (which moves the writer there) "+
			"and resume from the checkpoint it restores", pc.node, pc.addr, s.cfg.Node, err)}
}

// proxied reports one passed call to ObserveProxy and the log.
func (s *Server) proxied(pc *proxyCall, outcome string, status int, err error) {
	if s.cfg.ObserveProxy != nil {
		s.cfg.ObserveProxy(pc.route, outcome)
	}
	switch {
	case outcome == ProxyUnreachable:
		s.log.Warn("api: could not pass a session call to its owner", "route", pc.route, "owner", pc.node,
			"addr", pc.addr, "took", time.Since(pc.started), "err", err)
	case s.log.Enabled(context.Background(), slog.LevelDebug):
		s.log.Debug("api: passed a session call to its owner", "route", pc.route, "owner", pc.node,
			"addr", pc.addr, "outcome", outcome, "status", status, "took", time.Since(pc.started), "err", err)
	}
}
