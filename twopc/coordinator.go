package twopc

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"slices"
	"strconv"
	"strings"
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
	// IsLeader reports whether this node runs the recovery loop for branches
	// owned by other (dead) nodes. Nil means always (single node).
	IsLeader func() bool
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
	// "after-prepare", "after-journal", "after-commit-first-sink".
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
	CheckpointDone(job, phase string, d time.Duration) // phase: prepare, journal, commit
	CommitRetry(sink string)
	DataLoss(job, sink string)
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

	mu       sync.Mutex
	sessions map[writerKey]*session
	closed   bool
}

type writerKey struct{ job, writer string }

// session is a writer's current incarnation on this node.
type session struct {
	mu      sync.Mutex
	job     string
	writer  string
	epoch   uint64
	fenced  bool  // a newer session was opened, or the coordinator closed
	failed  error // a sink failed; every branch was aborted; reopen
	lost    bool  // forgotten as idle (forgetIdle): the next call is ErrSessionLost
	used    atomic.Int64
	hasSeq  bool
	seq     int64
	seqSum  uint64 // digest of the last seq's body, from the caller
	lastAcc int
	open    map[string]*openBranch // by sink
	nextSeq uint64
	lastN   int64
	lastSum uint64 // digest of checkpoint lastN's state
	dirty   bool   // records were sent to a sink since checkpoint lastN
	last    *CheckpointResult
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

// ---- jobs ----

// PutJob creates or updates a job (idempotent).
func (c *Coordinator) PutJob(ctx context.Context, spec JobSpec) (JobInfo, error) {
	if err := CheckName("job", spec.Name); err != nil {
		return JobInfo{}, err
	}
	if spec.Commit == "" {
		spec.Commit = ModeAuto
	}
	if !spec.Commit.Valid() {
		return JobInfo{}, fmt.Errorf("%w: commit mode %q: want %q or %q", ErrInvalid, spec.Commit, ModeAuto, ModeExternal)
	}
	if len(spec.Sinks) == 0 {
		spec.Sinks = sortedKeys(c.cfg.Sinks)
	}
	seen := map[string]bool{}
	for _, s := range spec.Sinks {
		if c.cfg.Sinks[s] == nil {
			return JobInfo{}, fmt.Errorf("%w: %q (configured: %v)", ErrUnknownSink, s, sortedKeys(c.cfg.Sinks))
		}
		if seen[s] {
			return JobInfo{}, fmt.Errorf("%w: sink %q listed twice", ErrInvalid, s)
		}
		seen[s] = true
	}
	slices.Sort(spec.Sinks)
	// A live writer keeps the mode it opened with in mind (it commits by
	// itself or waits for the commit call): switching under it would leave
	// its checkpoints undecided or decided behind its back. The journal
	// refuses the switch while checkpoints are unresolved; open sessions
	// are known only here.
	if cur, ok := c.m.JobSpec(spec.Name); ok && cur.Commit != spec.Commit {
		c.modeMu.Lock()
		defer c.modeMu.Unlock()
		if ws := c.openWriters(spec.Name); len(ws) > 0 {
			return JobInfo{}, fmt.Errorf("%w: job %s has open sessions (writers %s); cannot change commit mode from %s to %s while they run",
				ErrModeConflict, spec.Name, strings.Join(ws, ", "), cur.Commit, spec.Commit)
		}
	}
	if _, err := c.propose(ctx, Command{Op: OpPutJob, Spec: &spec}); err != nil {
		return JobInfo{}, err
	}
	return c.Job(spec.Name)
}

// openWriters lists the writers of a job with a session open on this node.
// A fenced session is removed from c.sessions when its successor opens, so
// every session still there is open (until Close).
func (c *Coordinator) openWriters(job string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ws []string
	for k := range c.sessions {
		if k.job == job {
			ws = append(ws, k.writer)
		}
	}
	slices.Sort(ws)
	return ws
}

// Jobs lists every job.
func (c *Coordinator) Jobs() []JobInfo {
	out := []JobInfo{}
	for _, n := range c.m.JobNames() {
		if j, ok := c.m.JobInfo(n); ok {
			out = append(out, j)
		}
	}
	return out
}

// Job describes one job.
func (c *Coordinator) Job(name string) (JobInfo, error) {
	j, ok := c.m.JobInfo(name)
	if !ok {
		return JobInfo{}, fmt.Errorf("%w: %s", ErrJobNotFound, name)
	}
	return j, nil
}

// Checkpoints lists a job's unresolved and recent checkpoints.
func (c *Coordinator) Checkpoints(job string) ([]CheckpointInfo, error) {
	cps, ok := c.m.Checkpoints(job, c.now())
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrJobNotFound, job)
	}
	return cps, nil
}

// ---- sessions ----

// OpenSession starts a new session for a writer: it fences the previous one,
// decides (external mode, with restore) and finishes the writer's decided
// branches, aborts whatever the sinks still hold that the journal does not
// keep, and returns the restored checkpoint and its state.
func (c *Coordinator) OpenSession(ctx context.Context, job, writer string, restore *int64) (SessionInfo, error) {
	if err := CheckName("writer", writer); err != nil {
		return SessionInfo{}, err
	}
	spec, ok := c.m.JobSpec(job)
	if !ok {
		return SessionInfo{}, fmt.Errorf("%w: %s", ErrJobNotFound, job)
	}
	if restore != nil && (*restore < 0 || *restore > MaxCheckpoint) {
		return SessionInfo{}, fmt.Errorf("%w: restore must be from 0 to %d, got %d", ErrInvalid, MaxCheckpoint, *restore)
	}
	if restore != nil && spec.Commit != ModeExternal {
		return SessionInfo{}, fmt.Errorf("%w: restore is for external commit mode; job %s commits by itself", ErrInvalid, job)
	}
	k := writerKey{job, writer}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return SessionInfo{}, fmt.Errorf("%w: sidecar is stopping", ErrUnavailable)
	}
	cl := bound(ctx, c.cfg.Timeouts.Session)
	defer cl.done()
	unlock, err := c.opening.lockWithin(cl.work, k)
	if err != nil {
		return SessionInfo{}, err
	}
	defer unlock()
	ctx = cl.work
	if err := c.admitSession(k); err != nil {
		return SessionInfo{}, err
	}
	c.modeMu.RLock()
	defer c.modeMu.RUnlock()

	// The old session's call in progress is waited for within this call's
	// deadline, before anything is journaled: an open that cannot get it
	// in time answers ErrUnavailable and changes nothing.
	c.mu.Lock()
	old := c.sessions[k]
	c.mu.Unlock()
	if old != nil {
		if err := lockWithin(cl.work, &old.mu, job, writer); err != nil {
			return SessionInfo{}, err
		}
		defer func() {
			if old != nil {
				old.mu.Unlock()
			}
		}()
	}
	res, err := c.propose(cl.ctx, Command{Op: OpOpenSession, Job: job, Writer: writer, Node: c.cfg.Node, Restore: restore,
		MaxWriters: c.lim.maxWritersPerJob})
	if err != nil {
		return SessionInfo{}, err
	}
	if old != nil {
		c.retire(ctx, k, old)
		old = nil
	}
	// Finish what is decided, then fence the sinks around what stays. The
	// checkpoints decided to commit are noted first: once finished they are
	// no longer pending, and a lost one must still be reported.
	mine := func(p PendingBranch) bool { return p.Job == job && p.Writer == writer }
	touched := c.decidedCommits(job, mine)
	c.finishDecided(ctx, mine)
	if err := c.fenceWriter(ctx, job, writer, spec.Sinks); err != nil {
		return SessionInfo{}, err
	}
	c.unfenced.done(k) // under the opening lock: no background fence of k after this
	s := &session{job: job, writer: writer, epoch: res.Session.Epoch, open: map[string]*openBranch{}}
	c.touch(s)
	c.mu.Lock()
	c.sessions[k] = s
	c.mu.Unlock()
	info := res.Session
	info.Status, info.DataLoss = StatusNone, []int64{}
	if info.Checkpoint > 0 {
		info.Status = c.m.CommittedStatus(job, writer, info.Checkpoint)
		if info.Status == StatusDataLoss {
			info.DataLoss = append(info.DataLoss, info.Checkpoint)
		}
	}
	for _, n := range touched[writer] {
		if r, ok := c.m.CheckpointStatus(job, writer, n); ok && r.Status == StatusDataLoss && !slices.Contains(info.DataLoss, n) {
			info.DataLoss = append(info.DataLoss, n)
		}
	}
	slices.Sort(info.DataLoss)
	if len(info.DataLoss) > 0 {
		c.log.Error("session opened; checkpoints of the writer lost data", "job", job, "writer", writer,
			"epoch", s.epoch, "restored", info.Checkpoint, "status", info.Status, "data_loss", info.DataLoss)
	} else {
		c.log.Info("session opened", "job", job, "writer", writer, "epoch", s.epoch, "restored", info.Checkpoint, "status", info.Status)
	}
	return info, nil
}

// retire ends session old, whose mu the caller holds: it leaves the map
// (unless a newer session took its place), is marked fenced, its open
// branches are aborted, and its mu is released.
func (c *Coordinator) retire(ctx context.Context, k writerKey, old *session) {
	c.mu.Lock()
	if c.sessions[k] == old {
		delete(c.sessions, k)
	}
	c.mu.Unlock()
	old.fenced = true
	c.abortOpen(ctx, old)
	old.mu.Unlock()
}

// decidedCommits lists per writer the checkpoints with a branch that is
// decided to commit, unresolved and selected by match.
func (c *Coordinator) decidedCommits(job string, match func(PendingBranch) bool) map[string][]int64 {
	out := map[string][]int64{}
	for _, p := range c.m.Pending(job) {
		if p.Decision == decisionCommit && match(p) && !slices.Contains(out[p.Writer], p.Checkpoint) {
			out[p.Writer] = append(out[p.Writer], p.Checkpoint)
		}
	}
	return out
}

// fenceWriter asks every sink of the job to abort what it holds for the
// writer beyond the journal's unresolved branches.
func (c *Coordinator) fenceWriter(ctx context.Context, job, writer string, sinks []string) error {
	keep := map[string][]BranchID{}
	for _, p := range c.m.Pending(job) {
		if p.Writer == writer {
			keep[p.Branch.ID.Sink] = append(keep[p.Branch.ID.Sink], p.Branch.ID)
		}
	}
	for _, name := range sinks {
		sink := c.cfg.Sinks[name]
		if sink == nil {
			continue
		}
		if err := sink.Fence(ctx, job, writer, keep[name]); err != nil {
			return fmt.Errorf("%w: fence %s/%s in sink %s: %v", ErrSinkFailure, job, writer, name, err)
		}
	}
	// Branches held for a checkpoint whose journal entry had an unknown
	// outcome and that the journal does not keep were just aborted by the
	// fences: forget them. Busy ones are being finished (journaled).
	c.branches.forgetFenced(job, writer, keep)
	return nil
}

// sessionFor finds the live session for (job, writer, epoch).
func (c *Coordinator) sessionFor(job, writer string, epoch uint64) (*session, error) {
	wv, ok := c.m.Writer(job, writer)
	if !ok {
		if _, ok := c.m.JobSpec(job); !ok {
			return nil, fmt.Errorf("%w: %s", ErrJobNotFound, job)
		}
		return nil, fmt.Errorf("%w: writer %s of job %s: open a session first", ErrNoSession, writer, job)
	}
	if epoch < wv.Epoch {
		return nil, fmt.Errorf("%w: epoch %d of %s/%s, current %d", ErrSessionFenced, epoch, job, writer, wv.Epoch)
	}
	if epoch > wv.Epoch {
		return nil, fmt.Errorf("%w: epoch %d of %s/%s was never opened (current %d)", ErrNoSession, epoch, job, writer, wv.Epoch)
	}
	c.mu.Lock()
	s := c.sessions[writerKey{job, writer}]
	c.mu.Unlock()
	if s == nil || s.epoch != epoch {
		return nil, fmt.Errorf("%w: %s/%s epoch %d is not open on this node (restarted, or idle too long?); reopen and restore",
			ErrSessionLost, job, writer, epoch)
	}
	c.touch(s)
	return s, nil
}

// usable reports why a session cannot take calls. Needs s.mu.
func (s *session) usable() error {
	if s.fenced {
		return fmt.Errorf("%w: %s/%s epoch %d", ErrSessionFenced, s.job, s.writer, s.epoch)
	}
	if s.lost {
		return fmt.Errorf("%w: %s/%s epoch %d was idle too long and forgotten; reopen and restore", ErrSessionLost, s.job, s.writer, s.epoch)
	}
	if s.failed != nil {
		return fmt.Errorf("%w: %s/%s epoch %d failed earlier (%v); reopen the session", ErrSinkFailure, s.job, s.writer, s.epoch, s.failed)
	}
	return nil
}

// abortOpen aborts a session's open branches. Needs s.mu.
func (c *Coordinator) abortOpen(ctx context.Context, s *session) {
	for name, ob := range s.open {
		if err := ob.br.Abort(ctx); err != nil {
			// Fence on the next open (or at start-up) aborts it in the sink.
			c.log.Warn("abort of open branch failed", "branch", ob.id.String(), "err", err)
		}
		delete(s.open, name)
	}
}

// fail marks a session failed after a sink error and aborts its open
// branches. Needs s.mu.
func (c *Coordinator) fail(ctx context.Context, s *session, err error) error {
	s.failed = err
	c.abortOpen(ctx, s)
	c.log.Error("session failed; branches aborted", "job", s.job, "writer", s.writer, "epoch", s.epoch, "err", err)
	if errors.Is(err, ErrSinkFailure) {
		return err
	}
	// %v, not %w: a sink error that also wraps ErrInvalid (a statement the
	// server refused) must still answer sink_failure, since the session is
	// failed and the app has to reopen.
	return fmt.Errorf("%w: %v", ErrSinkFailure, err)
}

// ---- writes ----

// validateRecords checks records for a job without writing anything. It
// fills in the sink when the job has only one, and lets each sink normalise.
func (c *Coordinator) validateRecords(job string, recs []*Record) error {
	spec, ok := c.m.JobSpec(job)
	if !ok {
		return fmt.Errorf("%w: %s", ErrJobNotFound, job)
	}
	if len(recs) > c.cfg.MaxRecordsPerCall {
		return fmt.Errorf("%w: %d records in one call; the limit is %d", ErrInvalid, len(recs), c.cfg.MaxRecordsPerCall)
	}
	var lastName string
	var last Sink
	for i, r := range recs {
		if r == nil {
			return fmt.Errorf("%w: record %d is null", ErrInvalid, i+1)
		}
		if r.Sink == "" && len(spec.Sinks) == 1 {
			r.Sink = spec.Sinks[0]
		}
		if r.Sink != lastName || last == nil {
			if !slices.Contains(spec.Sinks, r.Sink) || c.cfg.Sinks[r.Sink] == nil {
				return fmt.Errorf("%w: record %d: sink %q is not a sink of job %s (sinks: %v)", ErrUnknownSink, i+1, r.Sink, job, spec.Sinks)
			}
			lastName, last = r.Sink, c.cfg.Sinks[r.Sink]
		}
		if err := last.Validate(r); err != nil {
			return &RecordError{Line: i + 1, Err: err}
		}
	}
	return nil
}

// Write validates records and appends them to the writer's open branches.
// Invalid input changes nothing. A repeat of the last seq with the same
// digest is acknowledged without effect; with another digest, or a lower
// seq, it is a conflict. seq nil means the call has none.
func (c *Coordinator) Write(ctx context.Context, job, writer string, epoch uint64, seq *Seq, recs []*Record) (WriteResult, error) {
	s, err := c.sessionFor(job, writer, epoch)
	if err != nil {
		return WriteResult{}, err
	}
	cl := bound(ctx, c.cfg.Timeouts.Write)
	defer cl.done()
	if err := lockWithin(cl.work, &s.mu, job, writer); err != nil {
		return WriteResult{}, err
	}
	defer s.mu.Unlock()
	if err := s.usable(); err != nil {
		return WriteResult{}, err
	}
	if seq != nil && s.hasSeq {
		if seq.N == s.seq && seq.Digest != s.seqSum {
			// Acknowledging it would drop records the app believes written.
			return WriteResult{}, fmt.Errorf("%w: seq %d was already used with a different body; a retry must repeat the body, new records need a higher seq",
				ErrSeqConflict, seq.N)
		}
		if seq.N == s.seq {
			return WriteResult{Accepted: s.lastAcc, Seq: seq.N, Duplicate: true}, nil
		}
		if seq.N < s.seq {
			return WriteResult{}, fmt.Errorf("%w: seq %d is lower than the last one, %d", ErrSeqConflict, seq.N, s.seq)
		}
	}
	if err := c.validateRecords(job, recs); err != nil {
		return WriteResult{}, err
	}
	// Group by sink, keeping each sink's order. Most calls have one sink.
	groups := map[string][]*Record{}
	var order []string
	for _, r := range recs {
		if _, ok := groups[r.Sink]; !ok {
			order = append(order, r.Sink)
		}
		groups[r.Sink] = append(groups[r.Sink], r)
	}
	// Open every needed branch before writing anything, so backpressure
	// leaves the call without effect.
	for _, name := range order {
		if _, err := c.openBranch(cl, s, name); err != nil {
			return WriteResult{}, err
		}
	}
	// From here on a sink may hold records of this call, even if it fails.
	wasDirty := s.dirty
	s.dirty = s.dirty || len(recs) > 0
	for i, name := range order {
		ob := s.open[name]
		if err := ob.br.Write(cl.work, groups[name]); err != nil {
			if errors.Is(err, ErrRecordRejected) {
				err = c.rejected(cl.cleanup, s, recs, name, i > 0, err)
				if s.failed == nil {
					s.dirty = wasDirty // the rejected call changed nothing
				}
				return WriteResult{}, err
			}
			return WriteResult{}, c.fail(cl.cleanup, s, fmt.Errorf("write to sink %s: %w", name, err))
		}
		c.metrics.Records(job, name, len(groups[name]), recordBytes(groups[name]))
	}
	c.failpoint("after-write")
	if seq != nil {
		s.hasSeq, s.seq, s.seqSum = true, seq.N, seq.Digest
	}
	s.lastAcc = len(recs)
	res := WriteResult{Accepted: len(recs)}
	if seq != nil {
		res.Seq = seq.N
	}
	return res, nil
}

func recordBytes(recs []*Record) int {
	n := 0
	for _, r := range recs {
		n += len(r.Key) + len(r.Value) + len(r.KeyB64) + len(r.ValueB64)
	}
	return n
}

// openBranch returns the session's open branch in a sink, beginning one on
// the lowest free slot. Needs s.mu.
func (c *Coordinator) openBranch(cl *call, s *session, sinkName string) (*openBranch, error) {
	if ob := s.open[sinkName]; ob != nil {
		return ob, nil
	}
	sink := c.cfg.Sinks[sinkName]
	used := map[int]bool{}
	for _, p := range c.m.Pending(s.job) {
		if p.Writer == s.writer && p.Branch.ID.Sink == sinkName {
			used[p.Branch.ID.Slot] = true
		}
	}
	slot := -1
	for i := 0; i < sink.MaxInflight(); i++ {
		if !used[i] {
			slot = i
			break
		}
	}
	if slot < 0 {
		return nil, fmt.Errorf("%w: writer %s/%s has %d unfinished checkpoints in sink %s; commit or wait",
			ErrBackpressure, s.job, s.writer, sink.MaxInflight(), sinkName)
	}
	wv, _ := c.m.Writer(s.job, s.writer)
	s.nextSeq++
	id := BranchID{Job: s.job, Writer: s.writer, Sink: sinkName, Epoch: s.epoch, Seq: s.nextSeq, Slot: slot, After: wv.MaxCheckpoint}
	br, err := sink.Begin(cl.work, id)
	if errors.Is(err, ErrBackpressure) {
		// The sink is out of a bounded resource (e.g. connections);
		// nothing was written, so the session stays usable.
		return nil, err
	}
	if err != nil {
		return nil, c.fail(cl.cleanup, s, fmt.Errorf("begin %s: %w", id, err))
	}
	ob := &openBranch{id: id, br: br}
	s.open[sinkName] = ob
	return ob, nil
}

// ---- checkpoints ----

// Checkpoint prepares every open branch of the writer, journals checkpoint n
// with its state and handles (in auto mode with the commit decision in the
// same entry), and in auto mode commits. A repeat of the session's last
// checkpoint with the same state and no records written since returns its
// current result; otherwise it is ErrCheckpointOrder. A checkpoint that
// ended in data_loss returns its result and an error wrapping ErrDataLoss.
func (c *Coordinator) Checkpoint(ctx context.Context, job, writer string, epoch uint64, n int64, state []byte, wait Wait) (CheckpointResult, error) {
	if err := CheckCheckpoint(n); err != nil {
		return CheckpointResult{}, err
	}
	if len(state) > MaxStateBytes {
		return CheckpointResult{}, fmt.Errorf("%w: state is %d bytes; the limit is %d", ErrInvalid, len(state), MaxStateBytes)
	}
	switch wait {
	case "":
		wait = WaitCommitted
	case WaitCommitted, WaitPrepared:
	default:
		return CheckpointResult{}, fmt.Errorf("%w: wait %q: want %q or %q", ErrInvalid, wait, WaitCommitted, WaitPrepared)
	}
	s, err := c.sessionFor(job, writer, epoch)
	if err != nil {
		return CheckpointResult{}, err
	}
	cl := bound(ctx, c.cfg.Timeouts.Checkpoint)
	defer cl.done()
	if err := lockWithin(cl.work, &s.mu, job, writer); err != nil {
		return CheckpointResult{}, err
	}
	defer s.mu.Unlock()
	if s.last != nil && n == s.lastN {
		// Only a true retry is idempotent: records written since would
		// otherwise go silently into a later checkpoint, and another state
		// would be acknowledged without being stored.
		if s.dirty || len(s.open) > 0 {
			if err := s.usable(); err != nil {
				return CheckpointResult{}, err // those records were aborted: reopen
			}
			return CheckpointResult{}, fmt.Errorf("%w: checkpoint %d of %s/%s is complete and records were written since; they need a checkpoint greater than %d",
				ErrCheckpointOrder, n, job, writer, n)
		}
		if maphash.Bytes(stateSeed, state) != s.lastSum {
			return CheckpointResult{}, fmt.Errorf("%w: checkpoint %d of %s/%s was completed with another state; a retry must repeat the state",
				ErrCheckpointOrder, n, job, writer)
		}
		r := *s.last
		if cur, ok := c.m.CheckpointStatus(job, writer, n); ok {
			r = cur
		}
		return r, checkpointLoss(job, writer, r)
	}
	if err := s.usable(); err != nil {
		return CheckpointResult{}, err
	}
	spec, ok := c.m.JobSpec(job)
	if !ok {
		return CheckpointResult{}, fmt.Errorf("%w: %s", ErrJobNotFound, job)
	}
	if wv, _ := c.m.Writer(job, writer); n <= wv.MaxCheckpoint {
		return CheckpointResult{}, fmt.Errorf("%w: checkpoint %d of %s/%s must be greater than %d",
			ErrCheckpointOrder, n, job, writer, wv.MaxCheckpoint)
	}

	// Phase 1: prepare every open branch (in parallel: sinks are independent).
	t0 := c.now()
	obs := make([]*openBranch, 0, len(s.open))
	for _, name := range sortedKeys(s.open) {
		obs = append(obs, s.open[name])
	}
	handles := make([]Handle, len(obs))
	errs := make([]error, len(obs))
	var pwg sync.WaitGroup
	for i, ob := range obs {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			handles[i], errs[i] = ob.br.Prepare(cl.work)
		}()
	}
	pwg.Wait()
	if err := errors.Join(errs...); err != nil {
		return CheckpointResult{}, c.fail(cl.cleanup, s, fmt.Errorf("prepare checkpoint %d: %w", n, err))
	}
	c.metrics.CheckpointDone(job, "prepare", c.now().Sub(t0))
	c.failpoint("after-prepare")

	// The durable point: PREPARED (+ DECIDED in auto mode) in one entry.
	jbs := make([]JournalBranch, len(obs))
	ids := make([]BranchID, len(obs))
	brs := make([]Branch, len(obs))
	for i, ob := range obs {
		jbs[i] = JournalBranch{ID: ob.id, Handle: handles[i]}
		ids[i], brs[i] = ob.id, ob.br
	}
	c.branches.hold(ids, brs)
	clear(s.open)
	t1 := c.now()
	auto := spec.Commit == ModeAuto
	// The journal gets the whole call's time, not only the work's: a
	// prepared checkpoint is worth journaling until the deadline.
	_, err = c.propose(cl.cleanup, Command{Op: OpPrepared, Job: job, Writer: writer, Epoch: epoch, Checkpoint: n,
		State: state, Branches: jbs, Decide: auto})
	if err != nil && errors.Is(err, ErrUnavailable) {
		// Unknown outcome: the entry may still be applied (the journal
		// keeps an entry whose proposer stopped waiting). If the journal
		// shows it, it is ours.
		if _, ok := c.m.CheckpointStatus(job, writer, n); ok {
			err = nil
		} else {
			// Aborting now would turn a late apply into data_loss. The
			// branches stay prepared and held, not claimed: if the
			// entry applies, the recovery loop or the writer's next
			// open finishes them; if it never does, the next open —
			// whose own entry comes after this one in the journal —
			// fences them away (fenceWriter forgets them).
			c.branches.release(ids)
			s.failed = err
			c.log.Warn("checkpoint's journal entry has an unknown outcome; its branches stay prepared until the journal settles",
				"job", job, "writer", writer, "checkpoint", n, "err", err)
			return CheckpointResult{}, fmt.Errorf("%w (checkpoint %d may still be journaled: reopen the session, which restores what the journal has)", err, n)
		}
	}
	if err != nil {
		for i, ob := range obs {
			if aerr := ob.br.Abort(cl.cleanup); aerr != nil {
				c.log.Warn("abort after failed journal entry", "branch", ob.id.String(), "err", aerr)
			}
			c.branches.forget(ids[i])
		}
		s.failed = err
		return CheckpointResult{}, err
	}
	c.metrics.CheckpointDone(job, "journal", c.now().Sub(t1))
	c.failpoint("after-journal")
	s.lastN, s.lastSum, s.dirty = n, maphash.Bytes(stateSeed, state), false

	if !auto || len(obs) == 0 {
		c.branches.release(ids) // held for the external commit
		r, _ := c.m.CheckpointStatus(job, writer, n)
		s.last = &r
		return r, nil
	}
	fin := make([]PendingBranch, len(obs))
	for i := range obs {
		fin[i] = PendingBranch{Job: job, Writer: writer, Checkpoint: n, Decision: decisionCommit, Branch: jbs[i]}
	}
	if wait == WaitPrepared {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.finish(context.WithoutCancel(ctx), fin)
		}()
		r := CheckpointResult{Checkpoint: n, Status: StatusCommitting, Branches: branchInfosOf(jbs, StatusCommitting)}
		s.last = &r
		return r, nil
	}
	c.finishWithin(cl.ctx, func(ctx context.Context) { c.finish(ctx, fin) })
	r, _ := c.m.CheckpointStatus(job, writer, n)
	s.last = &r
	return r, checkpointLoss(job, writer, r)
}

// checkpointLoss returns an error wrapping ErrDataLoss, naming the sinks,
// when r reports data loss; nil otherwise.
func checkpointLoss(job, writer string, r CheckpointResult) error {
	if r.Status != StatusDataLoss {
		return nil
	}
	var sinks []string
	for _, b := range r.Branches {
		if b.Status == StatusDataLoss {
			sinks = append(sinks, b.Sink)
		}
	}
	return fmt.Errorf("%w: checkpoint %d of %s/%s was decided to commit, but sink %s had aborted it",
		ErrDataLoss, r.Checkpoint, job, writer, strings.Join(sinks, ", "))
}

func branchInfosOf(jbs []JournalBranch, status string) []BranchInfo {
	out := make([]BranchInfo, len(jbs))
	for i, b := range jbs {
		out[i] = BranchInfo{Sink: b.ID.Sink, Slot: b.ID.Slot, Status: status, Handle: b.Handle}
	}
	return out
}

// claim claims the branches of ps that nobody else is finishing and that
// the journal still shows unresolved (the list was read before the claim;
// see inflight for why the journal is checked again under its lock).
func (c *Coordinator) claim(ps []PendingBranch) []PendingBranch {
	return c.branches.claim(ps, func(p PendingBranch) bool {
		return c.m.unresolved(p.Job, p.Writer, p.Checkpoint, p.Branch.ID)
	})
}

// finish commits or aborts decided branches that the caller has claimed
// and journals their outcomes. Branches this process prepared are finished on
// their own connection; others through the sink's Resolve with the handle.
// A branch that fails stays unresolved for the recovery loop.
func (c *Coordinator) finish(ctx context.Context, ps []PendingBranch) {
	ctx, cancel := context.WithTimeout(ctx, finishTimeout)
	defer cancel()
	t0 := c.now()
	byJob := map[string][]BranchOutcome{}
	for i, p := range ps {
		if i == 1 {
			c.failpoint("after-commit-first-sink")
		}
		id := p.Branch.ID
		commit := p.Decision == decisionCommit
		br := c.branches.branch(id)
		var err error
		switch {
		case br != nil && commit:
			err = br.Commit(ctx)
		case br != nil:
			err = br.Abort(ctx)
		default:
			err = c.cfg.Sinks[id.Sink].Resolve(ctx, id, p.Branch.Handle, commit)
		}
		outcome := OutcomeAborted
		if commit {
			outcome = OutcomeCommitted
		}
		switch {
		case err == nil:
		case errors.Is(err, ErrDataLoss):
			outcome = OutcomeDataLoss
			c.metrics.DataLoss(p.Job, id.Sink)
			c.log.Error("DATA LOSS: the sink had aborted a transaction the journal decided to commit",
				"job", p.Job, "writer", p.Writer, "checkpoint", p.Checkpoint, "branch", id.String(), "err", err)
		default:
			c.metrics.CommitRetry(id.Sink)
			c.log.Warn("finishing branch failed; will retry", "job", p.Job, "writer", p.Writer,
				"checkpoint", p.Checkpoint, "branch", id.String(), "commit", commit, "err", err)
			c.branches.forget(id) // the retry goes through Resolve with the handle
			continue
		}
		byJob[p.Job] = append(byJob[p.Job], BranchOutcome{Writer: p.Writer, Checkpoint: p.Checkpoint, Sink: id.Sink,
			Seq: id.Seq, Epoch: id.Epoch, Outcome: outcome})
	}
	for job, outs := range byJob {
		if _, err := c.propose(ctx, Command{Op: OpResolved, Job: job, Outcomes: outs}); err != nil {
			// The sinks are finished; the journal will learn it on a retry
			// (finishing again is idempotent).
			c.log.Warn("journaling finished branches failed; will retry", "job", job, "err", err)
		}
	}
	for _, p := range ps {
		c.branches.forget(p.Branch.ID)
	}
	if len(ps) > 0 {
		c.metrics.CheckpointDone(ps[0].Job, "commit", c.now().Sub(t0))
	}
}

// finishDecided finishes every decided, unresolved branch that match
// selects and that no other goroutine is finishing.
func (c *Coordinator) finishDecided(ctx context.Context, match func(PendingBranch) bool) {
	var ps []PendingBranch
	for _, p := range c.m.Pending("") {
		if p.Decision != decisionNone && match(p) {
			ps = append(ps, p)
		}
	}
	if ps = c.claim(ps); len(ps) > 0 {
		c.finish(ctx, ps)
	}
}

// Commit decides to commit, for every writer of an external-mode job, each
// prepared checkpoint ≤ n, then commits their branches. Status "committing"
// means the decision is durable and some sink has not confirmed yet; the
// recovery loop retries until it does.
func (c *Coordinator) Commit(ctx context.Context, job string, n int64) (CommitResult, error) {
	return c.decide(ctx, job, n, true)
}

// Abort decides to abort checkpoint n of every writer of an external-mode job.
func (c *Coordinator) Abort(ctx context.Context, job string, n int64) (CommitResult, error) {
	return c.decide(ctx, job, n, false)
}

func (c *Coordinator) decide(ctx context.Context, job string, n int64, commit bool) (CommitResult, error) {
	if err := CheckCheckpoint(n); err != nil {
		return CommitResult{}, err
	}
	spec, ok := c.m.JobSpec(job)
	if !ok {
		return CommitResult{}, fmt.Errorf("%w: %s", ErrJobNotFound, job)
	}
	if spec.Commit != ModeExternal {
		return CommitResult{}, fmt.Errorf("%w: job %s is in %s mode; its checkpoints commit by themselves", ErrModeConflict, job, spec.Commit)
	}
	cl := bound(ctx, c.cfg.Timeouts.Commit)
	defer cl.done()
	res, err := c.propose(cl.ctx, Command{Op: OpDecide, Job: job, Checkpoint: n, Commit: commit})
	if err != nil {
		return CommitResult{}, err
	}
	inScope := func(p PendingBranch) bool {
		if p.Job != job {
			return false
		}
		if commit {
			return p.Checkpoint <= n && p.Decision == decisionCommit
		}
		return p.Checkpoint == n && p.Decision == decisionAbort
	}
	// What this call finishes is noted before: a branch resolved as
	// data_loss is no longer pending, so "nothing pending" afterwards would
	// read as committed. The status comes from the journal instead.
	scope := c.decidedCommits(job, inScope)
	c.finishWithin(cl.ctx, func(ctx context.Context) { c.finishDecided(ctx, inScope) })
	out := CommitResult{Checkpoint: n, Status: StatusCommitted, Writers: res.Decided}
	if !commit {
		out.Status = StatusAborted
	}
	if out.Writers == nil {
		out.Writers = map[string][]int64{}
	}
	for _, p := range c.m.Pending(job) {
		if inScope(p) {
			out.Status = StatusCommitting
			if !commit {
				out.Status = StatusAborting
			}
			break
		}
	}
	if !commit {
		return out, nil
	}
	// A repeated call decides nothing new: checkpoint n itself is in its
	// scope too, so a retry of a call that met a loss reports it again.
	if j, ok := c.m.JobInfo(job); ok {
		for _, w := range j.Writers {
			if !slices.Contains(scope[w.Name], n) {
				scope[w.Name] = append(scope[w.Name], n)
			}
		}
	}
	var lost []string
	for _, w := range sortedKeys(scope) {
		cps := slices.Clone(scope[w])
		slices.Sort(cps)
		for _, cp := range cps {
			if r, ok := c.m.CheckpointStatus(job, w, cp); ok && r.Status == StatusDataLoss {
				if out.DataLoss == nil {
					out.DataLoss = map[string][]int64{}
				}
				out.DataLoss[w] = append(out.DataLoss[w], cp)
				lost = append(lost, fmt.Sprintf("%s@%d", w, cp))
			}
		}
	}
	if len(lost) > 0 {
		out.Status = StatusDataLoss
		return out, fmt.Errorf("%w: commit of %s up to checkpoint %d: a sink had aborted writer@checkpoint %s",
			ErrDataLoss, job, n, strings.Join(lost, ", "))
	}
	return out, nil
}

// ---- recovery ----

// Recover runs start-up recovery: it finishes every decided branch and
// fences every known writer in every sink of its job, so nothing a dead
// process left open survives. In-doubt (external, undecided) branches stay
// prepared until the application decides them.
//
// It waits for every writer's fence; a sidecar calls RecoverDecided instead
// and leaves the fences to Run. Writers whose fence failed are retried by
// Run.
func (c *Coordinator) Recover(ctx context.Context) error {
	c.RecoverDecided(ctx)
	return c.fenceBacklog(ctx)
}

func (c *Coordinator) countDecided() int {
	n := 0
	for _, p := range c.m.Pending("") {
		if p.Decision != decisionNone {
			n++
		}
	}
	return n
}

// Run retries unfinished decided branches until ctx ends, fences the writers
// RecoverDecided left (first thing, then every round until each succeeded),
// forgets idle sessions, and warns when a prepared branch grows old
// compared with the sinks' transaction timeouts.
func (c *Coordinator) Run(ctx context.Context) {
	t := time.NewTicker(c.cfg.RetryInterval)
	defer t.Stop()
	if c.cfg.IsLeader == nil || c.cfg.IsLeader() {
		_ = c.fenceBacklog(ctx) // logged; retried below
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if c.cfg.IsLeader != nil && !c.cfg.IsLeader() {
			continue
		}
		c.finishDecided(ctx, func(PendingBranch) bool { return true })
		c.failExpired(ctx)
		_ = c.fenceBacklog(ctx)
		c.warnOld()
		c.forgetIdle()
	}
}

type timeouter interface{ TransactionTimeout() time.Duration }

func (c *Coordinator) warnOld() {
	age := c.m.OldestPrepared(c.now())
	if age <= 0 {
		return
	}
	for name, s := range c.cfg.Sinks {
		if t, ok := s.(timeouter); ok && t.TransactionTimeout() > 0 && age > t.TransactionTimeout()/2 {
			c.log.Warn("a prepared branch is older than half the transaction timeout; decide it before the sink aborts it",
				"sink", name, "age", age.Round(time.Second), "timeout", t.TransactionTimeout())
		}
	}
}

// OldestPrepared is the age of the oldest unresolved branch (a metric).
func (c *Coordinator) OldestPrepared() time.Duration { return c.m.OldestPrepared(c.now()) }

// Close stops taking calls, aborts every open branch and waits for
// background commits. Prepared branches stay for recovery.
func (c *Coordinator) Close() {
	c.mu.Lock()
	c.closed = true
	ss := make([]*session, 0, len(c.sessions))
	for _, s := range c.sessions {
		ss = append(ss, s)
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, s := range ss {
		s.mu.Lock()
		s.fenced = true
		c.abortOpen(ctx, s)
		s.mu.Unlock()
	}
	c.wg.Wait()
}
