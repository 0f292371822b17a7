package twopc

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures a Coordinator. The zero value is not usable: Journal,
// Machine and Sinks are required.
type Config struct {
	// Node is this node's id, recorded as the owner of sessions opened here.
	Node string
	// Journal replicates commands to Machine.
	Journal Journal
	// Machine is the state machine the journal applies to (read-only here).
	Machine *Machine
	// Sinks by name.
	Sinks map[string]Sink
	// IsLeader reports whether this node takes over the writers of other
	// nodes that leave decided branches unfinished (ownership.go). Nil
	// means always (single node).
	IsLeader func() bool
	// Lease reports whether this node may act for the writers it owns: it
	// heard from the journal's leader recently (or is the leader). A node
	// without it stops every session and finishes nothing, because another
	// node may be granted its writers after HandoverWait. Nil means always.
	Lease func() bool
	// NodeAlive reports whether another node is known to be up (nil: not
	// known). A writer whose owner is not alive is taken over at once;
	// otherwise after TakeoverAfter.
	NodeAlive func(id string) bool
	// HandoverWait is how long a new owner waits for the previous owner
	// on another node to release a writer before it acts anyway (0:
	// DefaultHandoverWait). It must exceed the lease by a margin for
	// requests still in flight.
	HandoverWait time.Duration
	// TakeoverAfter: the leader takes over a writer of another node whose
	// decided branches stayed unfinished this long (0:
	// DefaultTakeoverAfter).
	TakeoverAfter time.Duration
	// RetryInterval is the pause of the recovery loop between rounds.
	RetryInterval time.Duration
	// MaxRecordsPerCall bounds one write call (0: 100,000).
	MaxRecordsPerCall int
	// Timeouts bound each call (zero fields: DefaultTimeouts).
	Timeouts Timeouts
	// Logger receives structured logs (nil: discard).
	Logger *slog.Logger
	// Metrics receives counters (nil: none).
	Metrics Metrics
	// Failpoint, when set, is called at named points of the protocol; the
	// crash tests use it to kill the process there. Points: "after-write",
	// "after-prepare", "after-journal", "after-commit-first-sink", and
	// "after-flush" (a direct job's checkpoint: the sinks flushed, the
	// journal entry not yet made).
	Failpoint func(point string)
	// Now returns the current time (nil: time.Now).
	Now func() time.Time
	// MaxSessions bounds the sessions held on this node (0:
	// DefaultMaxSessions; negative: no limit). Over it, OpenSession of a
	// writer without a session is ErrBackpressure.
	MaxSessions int
	// MaxWritersPerJob bounds the writers the journal keeps per job (0:
	// DefaultMaxWritersPerJob; negative: no limit). Over it, OpenSession
	// of a new writer is ErrBackpressure.
	MaxWritersPerJob int
	// SessionIdleTimeout forgets a session that took no call for this long
	// and holds no open branch (0: DefaultSessionIdleTimeout; negative:
	// never); its next call answers ErrSessionLost.
	SessionIdleTimeout time.Duration
}

// Metrics is what the coordinator reports; cmd/sidecar backs it with
// Prometheus. Every method must be cheap and safe for concurrent use.
type Metrics interface {
	Records(job, sink string, n int, bytes int)
	CheckpointDone(job, phase string, d time.Duration) // phase: prepare, journal, commit (sinks), resolve (RESOLVED entry); flush
	CommitRetry(sink string)
	DataLoss(job, sink string)
}

// OwnershipMetrics is optionally implemented by a Metrics: what operators
// of a cluster watch about writers moving between nodes (handover.go).
type OwnershipMetrics interface {
	// SessionDropped: a session stopped by itself, reason "moved" (the
	// journal gave its writer to another node) or "lease_lost".
	SessionDropped(reason string)
	// Takeover: this node (the leader) took over another node's writer.
	Takeover()
	// HandoverWaited: a new owner waited d for the previous one;
	// released says whether it let go (else the wait ran out).
	HandoverWaited(d time.Duration, released bool)
}

type noMetrics struct{}

func (noMetrics) Records(string, string, int, int)             {}
func (noMetrics) CheckpointDone(string, string, time.Duration) {}
func (noMetrics) CommitRetry(string)                           {}
func (noMetrics) DataLoss(string, string)                      {}

// finishTimeout bounds one attempt to commit or abort decided branches; the
// recovery loop retries what did not finish.
const finishTimeout = 30 * time.Second

// Coordinator runs sessions and checkpoints against sinks and the journal.
//
// Lock order: a writer's opening lock, then session.mu, then Coordinator.mu,
// then Machine.mu (a leaf); writerLocks.mu and backlog.mu are leaves. Neither is held while the
// journal is proposed to, except session.mu, which serialises one writer's
// calls and so is held across its sink and journal calls on purpose.
// OpenSession takes opening[writer], then modeMu (shared), then the old
// session.mu; a PutJob that changes a mode takes modeMu alone. Both hold
// modeMu across journal and sink calls on purpose.
type Coordinator struct {
	cfg     Config
	lim     limits
	m       *Machine
	log     *slog.Logger
	metrics Metrics
	now     func() time.Time
	keyPfx  string
	keySeq  atomic.Uint64
	wg      sync.WaitGroup // background commits
	// modeMu: a commit-mode change (exclusive) never overlaps a session
	// being opened (shared), so the open-session check cannot miss one.
	modeMu sync.RWMutex
	// unfenced: writers not fenced since start-up (RecoverDecided).
	unfenced backlog
	// opening serialises OpenSession, DeleteWriter and start-up fences
	// per writer; it has its own lock.
	opening writerLocks

	// branches: prepared branches held in memory and who is finishing
	// which (inflight.go); it has its own lock.
	branches *inflight

	// guards: the whileOwner contexts in use, inRecovery: the writers
	// recoverWriter works on (handover.go); guardMu is a leaf.
	guardMu    sync.Mutex
	guards     map[*guard]bool
	inRecovery map[writerKey]int

	mu       sync.Mutex
	sessions map[writerKey]*session
	closed   bool
}

type writerKey struct{ job, writer string }

// session is a writer's current incarnation on this node.
type session struct {
	mu     sync.Mutex
	job    string
	writer string
	epoch  uint64
	// ctx ends when the session may no longer act: the journal gave the
	// writer to another node or a later epoch, or this node lost its
	// lease. Calls in progress run under it (bindSession).
	ctx      context.Context
	cancel   context.CancelCauseFunc
	retiring atomic.Bool // checkOwnership started to drop it
	fenced   bool        // a newer session was opened, or the coordinator closed
	fencedBy error       // why, when not a newer session on this node (checkOwnership)
	failed   error       // a sink failed; every branch was aborted; reopen
	lost     bool        // forgotten as idle (forgetIdle): the next call is ErrSessionLost
	used     atomic.Int64
	hasSeq   bool
	seq      int64
	seqSum   uint64 // digest of the last seq's body, from the caller
	lastAcc  int
	open     map[string]*openBranch // by sink
	// guarantee is the job's; direct holds the session's direct branches
	// (by sink) when it is at_least_once or none (direct.go).
	guarantee Guarantee
	direct    map[string]*directBranch
	nextSeq   uint64
	lastN     int64
	lastSum   uint64 // digest of checkpoint lastN's state
	dirty     bool   // records were sent to a sink since checkpoint lastN
	last      *CheckpointResult
}

// stateSeed hashes checkpoint states for the repeat check; a digest is
// compared only within this process, so a per-process seed is enough.
var stateSeed = maphash.MakeSeed()

type openBranch struct {
	id BranchID
	br Branch
}

// NewCoordinator checks cfg and returns a coordinator. Call Recover before
// serving and Run in the background.
func NewCoordinator(cfg Config) (*Coordinator, error) {
	if cfg.Journal == nil || cfg.Machine == nil || len(cfg.Sinks) == 0 {
		return nil, errors.New("twopc: coordinator needs a journal, a machine and at least one sink")
	}
	for name, s := range cfg.Sinks {
		if s.Name() != name || !ValidName(name) {
			return nil, fmt.Errorf("twopc: sink registered as %q is named %q", name, s.Name())
		}
		if s.MaxInflight() < 1 {
			return nil, fmt.Errorf("twopc: sink %s: max in-flight must be at least 1", name)
		}
	}
	if cfg.Node == "" {
		cfg.Node = "node1"
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = time.Second
	}
	if cfg.HandoverWait <= 0 {
		cfg.HandoverWait = DefaultHandoverWait
	}
	if cfg.TakeoverAfter <= 0 {
		cfg.TakeoverAfter = DefaultTakeoverAfter
	}
	if cfg.MaxRecordsPerCall <= 0 {
		cfg.MaxRecordsPerCall = 100_000
	}
	if err := cfg.Timeouts.Validate(); err != nil {
		return nil, err
	}
	cfg.Timeouts = cfg.Timeouts.withDefaults()
	c := &Coordinator{
		cfg: cfg, lim: limitsOf(cfg), m: cfg.Machine, log: cfg.Logger, metrics: cfg.Metrics, now: cfg.Now,
		sessions: map[writerKey]*session{}, branches: newInflight(),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.metrics == nil {
		c.metrics = noMetrics{}
	}
	if c.now == nil {
		c.now = time.Now
	}
	c.keyPfx = fmt.Sprintf("%s-%x-", cfg.Node, time.Now().UnixNano())
	return c, nil
}

func (c *Coordinator) failpoint(p string) {
	if c.cfg.Failpoint != nil {
		c.cfg.Failpoint(p)
	}
}

// propose stamps, journals and applies cmd. Domain errors come back as the
// machine's errors; anything else means the outcome is unknown (ErrUnavailable).
func (c *Coordinator) propose(ctx context.Context, cmd Command) (ApplyResult, error) {
	cmd.Key = c.keyPfx + strconv.FormatUint(c.keySeq.Add(1), 36)
	cmd.Time = c.now().UnixNano()
	r, err := c.cfg.Journal.Propose(ctx, EncodeCommand(cmd))
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			return ApplyResult{}, err
		}
		// %w twice: the cause (e.g. raftlog's *NotLeaderError, which names
		// the leader to forward to) stays reachable by errors.As.
		return ApplyResult{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return r, r.Err()
}
