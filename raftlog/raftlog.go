// Package raftlog replicates small opaque commands to a StateMachine with
// hashicorp/raft, storing the log and stable state in one bolt file
// (raft-boltdb) and snapshots in files next to it.
//
// raftlog knows nothing about what it replicates: the caller owns the
// StateMachine and the encoding of its commands. See DESIGN.md for the
// invariants, restart behaviour and the choice of timeouts.
package raftlog

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"
)

// Sentinel errors. Errors returned by this package wrap one of them (check
// with errors.Is); Propose errors also say whether the command may still be
// applied.
var (
	// ErrNotLeader means this node is not the leader, so the command was not
	// appended and may be retried elsewhere. The error is a *NotLeaderError
	// naming the leader when one is known.
	ErrNotLeader = errors.New("raftlog: not the leader")
	// ErrClosed means the Node is closed or closing. A Propose failing with it
	// while in flight may or may not have been applied.
	ErrClosed = errors.New("raftlog: node closed")
	// ErrTimeout means the context deadline passed before the command was
	// committed and applied; it may still be applied later.
	ErrTimeout = errors.New("raftlog: timed out")
	// ErrLeadershipLost means leadership was lost after the command was
	// appended; it may or may not be applied.
	ErrLeadershipLost = errors.New("raftlog: leadership lost, outcome unknown")
	// ErrDirLocked means another process (or Node) has the data dir open.
	ErrDirLocked = errors.New("raftlog: data dir in use")
	// ErrInvalidConfig wraps every Config.Validate failure and every
	// unusable cluster key or TLS file found by Open.
	ErrInvalidConfig = errors.New("raftlog: invalid config")
	// ErrNoPeerAuth means the node was opened without a cluster key and
	// without TLS, so it is a single node that talks to no peer and cannot
	// add one.
	ErrNoPeerAuth = errors.New("raftlog: peers need a cluster key or TLS")
	// ErrInvalidMember means a membership change was refused as given (bad
	// ID or address, or a change raft would not make as asked); nothing
	// changed.
	ErrInvalidMember = errors.New("raftlog: invalid membership change")
)

// NotLeaderError is returned by Propose on a node that is not the leader. It
// carries the leader as this node knows it (empty when unknown) so a caller
// can forward the command.
type NotLeaderError struct {
	LeaderID   string
	LeaderAddr string
}

func (e *NotLeaderError) Error() string {
	if e.LeaderID == "" {
		return ErrNotLeader.Error() + " (no known leader)"
	}
	return fmt.Sprintf("%s (leader %s at %s)", ErrNotLeader, e.LeaderID, e.LeaderAddr)
}

// Unwrap makes errors.Is(err, ErrNotLeader) true.
func (e *NotLeaderError) Unwrap() error { return ErrNotLeader }

// StateMachine is what raftlog replicates. raft calls Apply, Snapshot and
// Restore from one goroutine, never concurrently with each other.
type StateMachine interface {
	// Apply applies one committed command, the log's entry at index, and
	// returns the result handed to Propose on the leader. It must be
	// deterministic and free of side effects: every node applies the same
	// commands at the same indexes in the same order, and a restart replays
	// them. Indexes increase but have gaps (entries that are not commands).
	Apply(index uint64, cmd []byte) any
	// Snapshot returns the whole state. It runs between Apply calls, so it
	// sees a consistent state; keep the state small.
	Snapshot() ([]byte, error)
	// Restore replaces the whole state with one returned by Snapshot.
	Restore(snapshot []byte) error
}

// Config configures a Node. Zero fields take the defaults of DefaultConfig,
// except Dir, which is required.
type Config struct {
	// NodeID names this node in the raft configuration. Default "node1". It
	// is stored when the cluster is bootstrapped, so it must not change
	// across restarts of the same Dir; nodes of one cluster need distinct IDs.
	NodeID string
	// Dir holds raft.db (bolt: log and stable store) and snapshots/.
	Dir string
	// BindAddr is the TCP address raft listens on. Default "127.0.0.1:8471".
	// Port 0 picks a free port; Node.Addr reports it.
	BindAddr string
	// AdvertiseAddr is the host:port other nodes use to reach this one: a
	// specific IP or a DNS name (e.g. a StatefulSet pod's stable
	// txsink-0.txsink.ns.svc:8471). A name is checked for syntax only and
	// stored as is in the raft configuration; peers resolve it at every
	// dial, so a node back at a new IP behind the same name is reached
	// again. Empty means the listener's address, which must then not be
	// unspecified (0.0.0.0). With TLS, this node's certificate must name
	// the host advertised here (DNS or IP SAN): peers verify it.
	AdvertiseAddr string
	// Bootstrap makes this node bootstrap a single-voter cluster if Dir holds
	// no raft state. It is ignored when Dir already holds state, so it is safe
	// to leave on across restarts.
	Bootstrap bool
	// ClusterKeyFile names a file holding the secret every node of the
	// cluster shares (at least MinClusterKeyLen bytes, surrounding
	// whitespace ignored; readable by the owner, and by its group only with
	// a warning — no group write or execute, nothing for others). Peers prove
	// they know it before any raft byte is exchanged, and the session is
	// encrypted with keys derived from it. Not together with the TLS files.
	ClusterKeyFile string
	// TLSCertFile and TLSKeyFile are this node's certificate and key (PEM)
	// and TLSCAFile the cluster CA (PEM): set all three for mutual TLS 1.3
	// between nodes; a peer is any holder of a certificate from that CA. With
	// neither TLS nor ClusterKeyFile the node refuses every inbound raft
	// connection and dials no peer: it can only be a single node.
	TLSCertFile, TLSKeyFile, TLSCAFile string
	// Logger receives raft's logs at their own levels (trace is below
	// debug). Nil discards them.
	Logger *slog.Logger

	// SnapshotThreshold is how many log entries since the last snapshot make
	// raft take a new one (checked every SnapshotInterval). Default 1024.
	SnapshotThreshold uint64
	// SnapshotInterval is how often raft checks SnapshotThreshold (randomly
	// between 1x and 2x). Default 30s.
	SnapshotInterval time.Duration
	// TrailingLogs is how many entries are kept behind a snapshot so a
	// slightly lagging follower catches up without a snapshot. Default 1024.
	TrailingLogs uint64

	// HeartbeatTimeout: a follower that hears nothing from a leader for
	// this long (randomly 1x–2x) starts an election. Default 300ms.
	HeartbeatTimeout time.Duration
	// ElectionTimeout: a candidate that wins no election within this long
	// (randomly 1x–2x) starts another. Default 300ms.
	ElectionTimeout time.Duration
	// LeaderLeaseTimeout: a leader that cannot reach a quorum for this long
	// steps down. At most HeartbeatTimeout. Default 150ms.
	LeaderLeaseTimeout time.Duration
	// CommitTimeout: the leader heartbeats followers after this long without
	// appends, so they learn the commit index. Default 25ms.
	CommitTimeout time.Duration

	// dial, when set, replaces the TCP dial of peer addresses (a test seam:
	// it stands in for DNS, so tests can move a name to another address).
	dial dialFunc
}

// Defaults, also documented on the Config fields.
const (
	DefaultNodeID             = "node1"
	DefaultBindAddr           = "127.0.0.1:8471"
	DefaultSnapshotThreshold  = 1024
	DefaultSnapshotInterval   = 30 * time.Second
	DefaultTrailingLogs       = 1024
	DefaultHeartbeatTimeout   = 300 * time.Millisecond
	DefaultElectionTimeout    = 300 * time.Millisecond
	DefaultLeaderLeaseTimeout = 150 * time.Millisecond
	DefaultCommitTimeout      = 25 * time.Millisecond
)

// DefaultConfig returns a Config with every default filled in; the caller
// still has to set Dir.
func DefaultConfig() Config {
	return Config{
		NodeID:             DefaultNodeID,
		BindAddr:           DefaultBindAddr,
		SnapshotThreshold:  DefaultSnapshotThreshold,
		SnapshotInterval:   DefaultSnapshotInterval,
		TrailingLogs:       DefaultTrailingLogs,
		HeartbeatTimeout:   DefaultHeartbeatTimeout,
		ElectionTimeout:    DefaultElectionTimeout,
		LeaderLeaseTimeout: DefaultLeaderLeaseTimeout,
		CommitTimeout:      DefaultCommitTimeout,
	}
}

// withDefaults fills zero fields from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.NodeID == "" {
		c.NodeID = d.NodeID
	}
	if c.BindAddr == "" {
		c.BindAddr = d.BindAddr
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = d.SnapshotThreshold
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = d.SnapshotInterval
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = d.TrailingLogs
	}
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = d.HeartbeatTimeout
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = d.ElectionTimeout
	}
	if c.LeaderLeaseTimeout == 0 {
		c.LeaderLeaseTimeout = min(d.LeaderLeaseTimeout, c.HeartbeatTimeout)
	}
	if c.CommitTimeout == 0 {
		c.CommitTimeout = d.CommitTimeout
	}
	return c
}

// raft rejects timeouts below this (raft.ValidateConfig).
const minTimeout = 5 * time.Millisecond

// Validate reports whether c, with defaults filled in, is usable. Errors wrap
// ErrInvalidConfig.
func (c Config) Validate() error {
	c = c.withDefaults()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	if c.Dir == "" {
		return bad("Dir is required")
	}
	if n := countSet(c.TLSCertFile, c.TLSKeyFile, c.TLSCAFile); n != 0 && n != 3 {
		return bad("TLSCertFile, TLSKeyFile and TLSCAFile go together: set all three or none")
	}
	if c.TLSCertFile != "" && c.ClusterKeyFile != "" {
		return bad("set either TLS files or ClusterKeyFile, not both")
	}
	if _, _, err := splitHostPort(c.BindAddr); err != nil {
		return bad("BindAddr %q: %v", c.BindAddr, err)
	}
	if c.AdvertiseAddr != "" {
		if _, err := parseAdvertiseAddr(c.AdvertiseAddr); err != nil {
			return bad("AdvertiseAddr %q: %v", c.AdvertiseAddr, err)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"SnapshotInterval", c.SnapshotInterval},
		{"HeartbeatTimeout", c.HeartbeatTimeout},
		{"ElectionTimeout", c.ElectionTimeout},
		{"LeaderLeaseTimeout", c.LeaderLeaseTimeout},
	} {
		if d.v < minTimeout {
			return bad("%s %v is below %v", d.name, d.v, minTimeout)
		}
	}
	if c.CommitTimeout < time.Millisecond {
		return bad("CommitTimeout %v is below 1ms", c.CommitTimeout)
	}
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		return bad("LeaderLeaseTimeout %v exceeds HeartbeatTimeout %v", c.LeaderLeaseTimeout, c.HeartbeatTimeout)
	}
	return nil
}

func countSet(s ...string) int {
	n := 0
	for _, v := range s {
		if v != "" {
			n++
		}
	}
	return n
}

func splitHostPort(addr string) (host string, port int, err error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err = strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return host, port, nil
}
