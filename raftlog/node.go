package raftlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

const (
	// lockTimeout bounds the wait for raft.db's file lock, so a second
	// process on the same Dir fails with ErrDirLocked instead of hanging.
	lockTimeout = time.Second
	// retainSnapshots is how many snapshot files are kept; the older one is
	// a fallback if the newest is unreadable.
	retainSnapshots = 2
	// transport settings: connections pooled per peer and the I/O timeout.
	transportPool    = 3
	transportTimeout = 10 * time.Second
	// leaderPoll is how often WaitLeader looks for a leader.
	leaderPoll = 10 * time.Millisecond
)

// Node is one member of a raft cluster replicating a StateMachine. Its
// methods are safe for concurrent use.
type Node struct {
	cfg    Config
	log    *slog.Logger
	raft   *raft.Raft
	fsm    *fsm
	trans  *raft.NetworkTransport
	stream *streamLayer
	store  *raftboltdb.BoltStore
	// logCount wraps store as raft's LogStore and counts its appends.
	logCount *countingStore

	closing  chan struct{} // closed when Close starts: no new work
	stop     chan struct{} // closed after raft shut down: stops watchLeadership
	wg       sync.WaitGroup
	leaderCh chan bool // see LeadershipChanges
	// health: peers failing heartbeats, as the leader sees them (PeerDown).
	health *peerHealth
	// caughtUp is when (unix ns) HasLease last saw everything committed
	// applied.
	caughtUp atomic.Int64
	// leaderChanges counts leadership changes of this node (see
	// LeaderChanges).
	leaderChanges atomic.Uint64

	// hadState: Dir held raft state at Open (see HadState).
	hadState bool

	closeOnce sync.Once
	closeErr  error
}

// Member is one server of the raft configuration.
type Member struct {
	ID    string
	Addr  string
	Voter bool
}

// Status is a point-in-time view of a Node, for health checks and metrics.
type Status struct {
	ID   string
	Addr string
	// Role is "leader", "follower", "candidate" or "shutdown".
	Role              string
	Term              uint64 // current raft term
	LeaderID          string // empty when no leader is known
	LeaderAddr        string
	Members           []Member
	LastIndex         uint64 // last entry in the local log (or snapshot)
	CommitIndex       uint64
	AppliedIndex      uint64 // last entry applied to the StateMachine
	LastSnapshotIndex uint64
}

// Open opens (or creates) the raft state in cfg.Dir, restores the latest
// snapshot into sm, and starts raft. Entries after the snapshot are
// re-applied to sm once a leader commits in its term; call WaitLeader to wait
// for that. With cfg.Bootstrap and an empty Dir, it first bootstraps a
// cluster with this node as the only voter.
func Open(cfg Config, sm StateMachine) (_ *Node, err error) {
	if sm == nil {
		return nil, fmt.Errorf("%w: nil StateMachine", ErrInvalidConfig)
	}
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("raft_node", cfg.NodeID)
	hl := newHCLogger(logger, "raft")

	var closers []func() error
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				_ = closers[i]()
			}
		}
	}()

	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("raftlog: create data dir: %w", err)
	}
	boltOpts := *bbolt.DefaultOptions
	boltOpts.Timeout = lockTimeout
	// NoSync stays false: every append is fsynced before raft acknowledges it.
	store, err := raftboltdb.New(raftboltdb.Options{
		Path:        filepath.Join(cfg.Dir, "raft.db"),
		BoltOptions: &boltOpts,
	})
	if errors.Is(err, bbolt.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s", ErrDirLocked, cfg.Dir)
	}
	if err != nil {
		return nil, fmt.Errorf("raftlog: open log store: %w", err)
	}
	closers = append(closers, store.Close)

	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, retainSnapshots, hl.Named("snapshots"))
	if err != nil {
		return nil, fmt.Errorf("raftlog: open snapshot store: %w", err)
	}

	// The advertised address is kept as given (canonical form), not
	// resolved: a DNS name may not resolve yet, and peers resolve it at
	// every dial (addr.go).
	var advertise net.Addr
	if cfg.AdvertiseAddr != "" {
		a, err := parseAdvertiseAddr(cfg.AdvertiseAddr) // checked by Validate
		if err != nil {
			return nil, fmt.Errorf("%w: AdvertiseAddr %q: %v", ErrInvalidConfig, cfg.AdvertiseAddr, err)
		}
		advertise = advertisedAddr(a)
	}
	auth, err := peerAuthFor(cfg, logger)
	if err != nil {
		return nil, err
	}
	stream, err := newStreamLayer(cfg.BindAddr, advertise, auth, handshakeTimeout, logger)
	if errors.Is(err, ErrInvalidConfig) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("raftlog: listen on %s: %w", cfg.BindAddr, err)
	}
	closers = append(closers, stream.Close)
	if cfg.dial != nil {
		stream.dial = cfg.dial
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: transportPool,
		Timeout: transportTimeout,
		Logger:  hl.Named("net"),
	})
	closers = append(closers, trans.Close)

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hl
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.NoLegacyTelemetry = true
	// A removed node stays open as a follower with no vote (raft does not
	// let it start elections), so Node's methods keep working until Close.
	rc.ShutdownOnRemove = false
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}

	existing, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return nil, fmt.Errorf("raftlog: inspect data dir: %w", err)
	}
	if cfg.Bootstrap && !existing {
		self := raft.Server{Suffrage: raft.Voter, ID: rc.LocalID, Address: trans.LocalAddr()}
		if err := raft.BootstrapCluster(rc, store, store, snaps, trans,
			raft.Configuration{Servers: []raft.Server{self}}); err != nil {
			return nil, fmt.Errorf("raftlog: bootstrap: %w", err)
		}
		logger.Info("raft cluster bootstrapped", "addr", trans.LocalAddr())
	}

	f := &fsm{sm: sm}
	logs := &countingStore{BoltStore: store}
	r, err := raft.NewRaft(rc, f, logs, store, snaps, trans)
	if err != nil {
		return nil, fmt.Errorf("raftlog: start raft: %w", err)
	}

	n := &Node{
		cfg:      cfg,
		log:      logger,
		raft:     r,
		fsm:      f,
		trans:    trans,
		stream:   stream,
		store:    store,
		logCount: logs,
		closing:  make(chan struct{}),
		stop:     make(chan struct{}),
		leaderCh: make(chan bool, 1),
		hadState: existing,
	}
	if existing {
		n.checkMembership()
	}
	n.caughtUp.Store(time.Now().UnixNano())
	n.health = newPeerHealth(r)
	n.wg.Add(2)
	go n.watchLeadership()
	go func() {
		defer n.wg.Done()
		n.health.run(n.stop)
	}()
	logger.Info("raft started", "addr", n.Addr(), "existing_state", existing, "dir", cfg.Dir,
		"peer_auth", peerAuthName(auth))
	return n, nil
}

// checkMembership warns when the stored configuration does not list this
// node, which happens when NodeID changed since the Dir was bootstrapped:
// such a node never becomes leader; and when it lists peers this node
// cannot talk to for lack of a cluster key or TLS.
func (n *Node) checkMembership() {
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil {
		return
	}
	servers := cf.Configuration().Servers
	if n.stream.auth == nil && len(servers) > 1 {
		n.log.Warn("the stored raft configuration has other members, but without a cluster key or TLS "+
			"this node talks to none of them", "servers", fmt.Sprint(servers))
	}
	for _, s := range servers {
		if s.ID == raft.ServerID(n.cfg.NodeID) {
			return
		}
	}
	if len(servers) > 0 {
		n.log.Warn("this node is not in the stored raft configuration; was NodeID changed?",
			"servers", fmt.Sprint(servers))
	}
}

// watchLeadership forwards raft's leadership changes to leaderCh and keeps
// this node's address in the configuration current. raft's LeaderCh never
// blocks raft (it keeps only the latest value), and neither does leaderCh.
func (n *Node) watchLeadership() {
	defer n.wg.Done()
	defer close(n.leaderCh)
	in := n.raft.LeaderCh()
	for {
		select {
		case <-n.stop:
			return
		case isLeader := <-in:
			n.log.Info("raft leadership changed", "leader", isLeader)
			n.leaderChanges.Add(1)
			// Sole writer: after the drain the send cannot block.
			select {
			case <-n.leaderCh:
			default:
			}
			n.leaderCh <- isLeader
			if isLeader {
				n.updateOwnAddress()
			}
		}
	}
}

// updateOwnAddress rewrites this node's address in the configuration when
// it restarted on a different one (e.g. port 0 in tests, or a changed
// --raft-addr), so Status and other nodes see where it really listens.
func (n *Node) updateOwnAddress() {
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil {
		return
	}
	id, addr := raft.ServerID(n.cfg.NodeID), n.trans.LocalAddr()
	for _, s := range cf.Configuration().Servers {
		if s.ID != id || s.Address == addr || s.Suffrage != raft.Voter {
			continue
		}
		n.log.Info("updating own raft address", "from", s.Address, "to", addr)
		if err := n.raft.AddVoter(id, addr, cf.Index(), 0).Error(); err != nil {
			n.log.Warn("could not update own raft address", "error", err)
		}
	}
}

// LeadershipChanges reports this node gaining (true) and losing (false)
// leadership. It holds only the latest value, so a slow reader misses
// intermediate flips but never blocks raft; it is closed by Close. All
// callers share one channel: use a single reader.
func (n *Node) LeadershipChanges() <-chan bool { return n.leaderCh }

// LeaderChanges counts this node's leadership changes (gained or lost)
// since Open, for a metric: a cluster whose leader keeps changing cannot
// journal reliably. Like LeadershipChanges it sees raft's coalesced
// notifications, so flips faster than they are delivered count once.
func (n *Node) LeaderChanges() uint64 { return n.leaderChanges.Load() }

// RefusedPeers counts inbound raft connections refused since Open: failed
// authentication, too many pending handshakes, or any connection at all on
// a node without a cluster key or TLS. For a metric; each refusal is also
// logged, at most once a second.
func (n *Node) RefusedPeers() uint64 { return n.stream.refused.Load() }

// IsLeader reports whether this node is the leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Addr is the address this node's raft transport advertises.
func (n *Node) Addr() string { return string(n.trans.LocalAddr()) }

// Propose replicates cmd and returns what StateMachine.Apply returned for
// it on this node. It only works on the leader: elsewhere it fails with a
// *NotLeaderError (ErrNotLeader) and cmd was not appended. ErrTimeout, a
// context error, ErrLeadershipLost or ErrClosed after the call started leave
// it unknown whether cmd will be applied; commands should be idempotent.
func (n *Node) Propose(ctx context.Context, cmd []byte) (any, error) {
	if err := n.checkOpen(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, contextErr("propose", err)
	}
	if n.raft.State() != raft.Leader {
		return nil, n.notLeader()
	}
	var timeout time.Duration // 0: raft waits for the enqueue forever, ctx bounds us
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	return n.await(ctx, "propose", func() (any, error) {
		f := n.raft.Apply(cmd, timeout)
		if err := f.Error(); err != nil {
			return nil, err
		}
		return f.Response(), nil
	})
}

// WaitLeader waits until a leader is known. If it is this node, it also
// waits until every entry committed before (including those replayed after a
// restart) has been applied to the StateMachine.
func (n *Node) WaitLeader(ctx context.Context) error {
	t := time.NewTicker(leaderPoll)
	defer t.Stop()
	for {
		if err := n.checkOpen(); err != nil {
			return err
		}
		if _, id := n.raft.LeaderWithID(); id != "" {
			if id != raft.ServerID(n.cfg.NodeID) {
				return nil
			}
			_, err := n.await(ctx, "wait for leader", func() (any, error) {
				return nil, n.raft.Barrier(0).Error()
			})
			if err == nil || !(errors.Is(err, ErrNotLeader) || errors.Is(err, ErrLeadershipLost)) {
				return err
			}
			// Lost leadership during the barrier: look again.
		}
		select {
		case <-ctx.Done():
			return contextErr("wait for leader", ctx.Err())
		case <-n.closing:
			return ErrClosed
		case <-t.C:
		}
	}
}

// Snapshot makes raft snapshot the StateMachine now and compact the log
// (keeping TrailingLogs). Nothing new since the last snapshot is not an error.
func (n *Node) Snapshot() error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	err := n.raft.Snapshot().Error()
	if err == nil || errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return nil
	}
	return n.translate("snapshot", err)
}

// Status returns the node's current view of the cluster. It works after
// Close too (Role "shutdown").
func (n *Node) Status() Status {
	leaderAddr, leaderID := n.raft.LeaderWithID()
	st := Status{
		ID:           n.cfg.NodeID,
		Addr:         n.Addr(),
		Role:         strings.ToLower(n.raft.State().String()),
		LeaderID:     string(leaderID),
		LeaderAddr:   string(leaderAddr),
		LastIndex:    n.raft.LastIndex(),
		CommitIndex:  n.raft.CommitIndex(),
		AppliedIndex: n.raft.AppliedIndex(),
	}
	if cf := n.raft.GetConfiguration(); cf.Error() == nil {
		for _, s := range cf.Configuration().Servers {
			st.Members = append(st.Members, Member{
				ID: string(s.ID), Addr: string(s.Address), Voter: s.Suffrage == raft.Voter,
			})
		}
	}
	stats := n.raft.Stats()
	st.LastSnapshotIndex, _ = strconv.ParseUint(stats["last_snapshot_index"], 10, 64)
	st.Term, _ = strconv.ParseUint(stats["term"], 10, 64)
	return st
}

// Close hands leadership to another voter if there is one, stops raft and
// releases the stores and the listener. Later calls return the first
// result. Calls in flight fail with ErrClosed.
func (n *Node) Close() error {
	n.closeOnce.Do(func() { n.closeErr = n.shutdown() })
	return n.closeErr
}

func (n *Node) shutdown() error {
	close(n.closing)
	if n.raft.State() == raft.Leader && n.hasOtherVoters() {
		if err := n.raft.LeadershipTransfer().Error(); err != nil {
			n.log.Warn("raft leadership transfer failed", "error", err)
		}
	}
	var errs []error
	if err := n.raft.Shutdown().Error(); err != nil {
		errs = append(errs, fmt.Errorf("raftlog: shutdown raft: %w", err))
	}
	close(n.stop)
	n.wg.Wait()
	if err := n.trans.Close(); err != nil {
		errs = append(errs, fmt.Errorf("raftlog: close transport: %w", err))
	}
	if err := n.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("raftlog: close log store: %w", err))
	}
	n.log.Info("raft stopped")
	return errors.Join(errs...)
}

func (n *Node) hasOtherVoters() bool {
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil {
		return false
	}
	for _, s := range cf.Configuration().Servers {
		if s.Suffrage == raft.Voter && s.ID != raft.ServerID(n.cfg.NodeID) {
			return true
		}
	}
	return false
}

func (n *Node) checkOpen() error {
	select {
	case <-n.closing:
		return ErrClosed
	default:
		return nil
	}
}

// await runs a blocking raft call so that ctx can end the wait. raft
// resolves every future (at the latest on Shutdown), so the goroutine ends.
func (n *Node) await(ctx context.Context, op string, call func() (any, error)) (any, error) {
	type result struct {
		v   any
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := call()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, n.translate(op, r.err)
		}
		return r.v, nil
	case <-ctx.Done():
		return nil, contextErr(op, ctx.Err())
	}
}

// translate maps raft's errors to this package's sentinels.
func (n *Node) translate(op string, err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return n.notLeader()
	case errors.Is(err, raft.ErrLeadershipLost):
		return fmt.Errorf("%s: %w", op, ErrLeadershipLost)
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("%s: %w", op, ErrClosed)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%s: %w", op, ErrTimeout)
	default:
		return fmt.Errorf("raftlog: %s: %w", op, err)
	}
}

func (n *Node) notLeader() error {
	addr, id := n.raft.LeaderWithID()
	return &NotLeaderError{LeaderID: string(id), LeaderAddr: string(addr)}
}

// contextErr wraps a context error; a passed deadline also wraps ErrTimeout.
func contextErr(op string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w: %w", op, ErrTimeout, err)
	}
	return fmt.Errorf("raftlog: %s: %w", op, err)
}
