package raftlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

const (
	// handshakeTimeout bounds a peer's authentication (cluster-key handshake
	// or TLS handshake), so a silent or slow connection cannot hold a slot.
	handshakeTimeout = 2 * time.Second
	// maxPendingHandshakes bounds inbound connections still authenticating;
	// beyond it new ones are closed at once, so a flood costs little.
	maxPendingHandshakes = 64
	// refusedLogEvery rate-limits the log line for refused peers.
	refusedLogEvery = time.Second
)

// errNoPeers is what Dial returns on a node started without a cluster key
// and without TLS: such a node talks to no peer.
var errNoPeers = fmt.Errorf("%w: no cluster key or TLS configured", ErrNoPeerAuth)

// peerAuth authenticates one raft connection before any raft byte crosses
// it, and returns the connection raft should use from then on (which may
// wrap conn, e.g. to encrypt). The caller bounds the call with a deadline on
// conn and closes conn when ctx ends.
type peerAuth interface {
	server(ctx context.Context, conn net.Conn) (net.Conn, error)
	client(ctx context.Context, conn net.Conn, addr string) (net.Conn, error)
}

// streamLayer is the raft.StreamLayer of a Node: a TCP listener whose
// Accept returns only authenticated connections and whose Dial
// authenticates before returning. With a nil auth it is the single-node
// layer: every inbound connection is closed unread and Dial fails.
//
// Handshakes run on their own goroutines (at most maxPendingHandshakes), not
// in Accept, so one slow peer cannot stall raft's accept loop.
type streamLayer struct {
	ln        net.Listener
	advertise net.Addr // String() is what raft stores: an IP or a DNS name
	dial      dialFunc // TCP dial of a peer's address, resolving it each time
	auth      peerAuth // nil: accept no peers
	timeout   time.Duration
	log       *slog.Logger

	ctx     context.Context // canceled by Close: ends pending handshakes
	cancel  context.CancelFunc
	conns   chan net.Conn // authenticated, waiting for Accept
	pending chan struct{} // semaphore of running handshakes
	wg      sync.WaitGroup
	once    sync.Once

	refused atomic.Uint64
	limiter refusedLog

	// mu guards open and closed. raft's NetworkTransport closes neither its
	// pooled outbound connections nor its inbound ones on Close, so their
	// goroutines would block on reads until the peer hangs up; Close closes
	// every connection handed out instead.
	mu     sync.Mutex
	open   map[*trackedConn]struct{}
	closed bool
}

// dialFunc opens a TCP connection to a peer's raft address (host:port, the
// host an IP or a DNS name). net.Dialer.DialContext resolves a name at every
// call, which is what lets a peer move to a new IP behind the same name.
type dialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// newStreamLayer listens on bindAddr; timeout bounds each handshake
// (handshakeTimeout in production, shorter in tests). advertise is the
// address raft stores for this node: nil means the listener's, which must
// then be a specific IP; otherwise it is taken as given (Config.Validate
// checked it), so a DNS name stays a name.
func newStreamLayer(bindAddr string, advertise net.Addr, auth peerAuth, timeout time.Duration, logger *slog.Logger) (*streamLayer, error) {
	ln, err := net.Listen("tcp", bindAddr)
	if err != nil {
		return nil, err
	}
	if advertise == nil {
		advertise = ln.Addr()
		if tcp, ok := advertise.(*net.TCPAddr); !ok || tcp.IP == nil || tcp.IP.IsUnspecified() {
			ln.Close()
			return nil, fmt.Errorf("%w: listen address %s cannot be advertised; set AdvertiseAddr", ErrInvalidConfig, advertise)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &streamLayer{
		ln:        ln,
		advertise: advertise,
		dial:      (&net.Dialer{}).DialContext,
		auth:      auth,
		timeout:   timeout,
		log:       logger,
		ctx:       ctx,
		cancel:    cancel,
		conns:     make(chan net.Conn),
		open:      map[*trackedConn]struct{}{},
		pending:   make(chan struct{}, maxPendingHandshakes),
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

func (s *streamLayer) acceptLoop() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Temporary (e.g. out of file descriptors): back off a little,
			// but stop promptly on Close.
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
				continue
			}
		}
		if s.auth == nil {
			s.refuse(conn, errNoPeers)
			continue
		}
		select {
		case s.pending <- struct{}{}:
		default:
			s.refuse(conn, errors.New("too many pending handshakes"))
			continue
		}
		s.wg.Add(1)
		go s.handshake(conn)
	}
}

// handshake authenticates one inbound connection and hands it to Accept.
func (s *streamLayer) handshake(conn net.Conn) {
	defer s.wg.Done()
	defer func() { <-s.pending }()
	stop := context.AfterFunc(s.ctx, func() { conn.Close() })
	defer stop()
	_ = conn.SetDeadline(time.Now().Add(s.timeout))
	authed, err := s.auth.server(s.ctx, conn)
	if err == nil {
		err = conn.SetDeadline(time.Time{})
	}
	if err != nil {
		if s.ctx.Err() != nil {
			conn.Close()
			return
		}
		s.refuse(conn, err)
		return
	}
	tc, err := s.track(authed)
	if err != nil {
		return
	}
	select {
	case s.conns <- tc:
	case <-s.ctx.Done():
		tc.Close()
	}
}

// track registers conn so Close can close it; after Close it closes conn
// and fails.
func (s *streamLayer) track(conn net.Conn) (net.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		conn.Close()
		return nil, net.ErrClosed
	}
	tc := &trackedConn{Conn: conn, s: s}
	s.open[tc] = struct{}{}
	return tc, nil
}

// trackedConn removes itself from its layer's registry when closed.
type trackedConn struct {
	net.Conn
	s *streamLayer
}

func (c *trackedConn) Close() error {
	c.s.mu.Lock()
	delete(c.s.open, c)
	c.s.mu.Unlock()
	return c.Conn.Close()
}

// refuse closes conn, counts it and logs it at most once per
// refusedLogEvery (with how many were not logged), so a hostile or
// misconfigured peer cannot flood the log.
func (s *streamLayer) refuse(conn net.Conn, reason error) {
	s.refused.Add(1)
	conn.Close()
	if n, ok := s.limiter.allow(time.Now()); ok {
		s.log.Warn("refused raft connection", "remote", conn.RemoteAddr().String(), "reason", reason,
			"suppressed", n)
	}
}

// Accept returns the next authenticated inbound connection.
func (s *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close stops listening, ends pending handshakes, waits for them and
// closes every connection Accept or Dial returned.
func (s *streamLayer) Close() error {
	var err error
	s.once.Do(func() {
		s.cancel()
		err = s.ln.Close()
		s.wg.Wait()
		s.mu.Lock()
		s.closed = true
		open := s.open
		s.open = nil
		s.mu.Unlock()
		for c := range open {
			c.Conn.Close()
		}
	})
	return err
}

// Addr is the advertised address, which raft stores in the configuration.
func (s *streamLayer) Addr() net.Addr { return s.advertise }

// Dial connects to a peer and authenticates it within timeout (and at most
// handshakeTimeout for the handshake itself). With TLS the peer's
// certificate must name the host of address — the DNS name when peers
// advertise names.
func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if s.auth == nil {
		return nil, errNoPeers
	}
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	// A name is resolved here, at every dial, never cached: a peer that came
	// back at a new IP behind the same name is reached at the new one.
	conn, err := s.dial(ctx, "tcp", string(address))
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	_ = conn.SetDeadline(time.Now().Add(min(timeout, s.timeout)))
	authed, err := s.auth.client(ctx, conn, string(address))
	if err == nil {
		err = conn.SetDeadline(time.Time{})
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("raftlog: authenticate to %s: %w", address, err)
	}
	if !stop() {
		// ctx ended just as the handshake finished and conn got closed.
		return nil, fmt.Errorf("raftlog: authenticate to %s: %w", address, ctx.Err())
	}
	return s.track(authed)
}

// refusedLog is a one-line-per-interval rate limiter for log lines.
type refusedLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed uint64
}

// allow reports whether to log now and how many lines were suppressed
// since the last one logged.
func (l *refusedLog) allow(now time.Time) (suppressed uint64, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < refusedLogEvery {
		l.suppressed++
		return 0, false
	}
	suppressed, l.last, l.suppressed = l.suppressed, now, 0
	return suppressed, true
}
