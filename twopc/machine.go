package twopc

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"
)

// Machine is the journal's deterministic state machine: jobs, writers and
// every unresolved checkpoint with its branches' handles and the decision.
//
// Apply never touches a sink, a clock or randomness: everything it needs is
// in the command (the proposer stamps the time). Domain errors (fenced,
// out of order, …) are returned as values in ApplyResult; input that cannot
// be decoded is a programming error and panics, as a corrupt log must stop
// the node rather than diverge.
type Machine struct {
	mu sync.RWMutex
	st machineState
	// changed gets a token after every Apply and Restore (never blocks).
	changed chan struct{}
	// decided counts decisions applied by this process (not replicated
	// state: a change signal for watchOwnership).
	decided uint64
	// resultBytes is the size of the session states in st.Results,
	// derived from st (so alike on every replica), for dedupeStateBytes.
	resultBytes int
}

// Op names a command.
type Op string

const (
	OpPutJob      Op = "put_job"
	OpOpenSession Op = "open_session"
	OpPrepared    Op = "prepared"
	OpDecide      Op = "decide"
	OpResolved    Op = "resolved"
	// OpDeleteWriter forgets a writer with no unresolved checkpoint.
	OpDeleteWriter Op = "delete_writer"
)

// Decision of a checkpoint.
const (
	decisionNone   = ""
	decisionCommit = "commit"
	decisionAbort  = "abort"
)

// Outcomes of a branch as journaled by OpResolved.
const (
	OutcomeCommitted = "committed"
	OutcomeAborted   = "aborted"
	OutcomeDataLoss  = "data_loss"
)

// recentPerWriter bounds the finished checkpoints kept per writer for
// GET /v1/jobs/{job}/checkpoints; the last committed state is kept apart.
const recentPerWriter = 8

// dedupeKeys bounds the idempotency keys remembered, with their results.
const dedupeKeys = 4096

// dedupeStateBytes bounds the session states held by remembered results
// (open_session returns the restored state, up to MaxStateBytes each):
// past it the oldest keys are forgotten early, so snapshots stay small.
const dedupeStateBytes = 8 << 20

// Command is one journal entry. Key makes it idempotent: a command whose key
// was applied already changes nothing and returns the first one's result,
// marked Duplicate.
type Command struct {
	Op   Op     `json:"op"`
	Key  string `json:"key"`
	Time int64  `json:"time"` // unix nanoseconds, stamped by the proposer

	Job    string `json:"job,omitempty"`
	Writer string `json:"writer,omitempty"`

	Spec *JobSpec `json:"spec,omitempty"` // put_job

	// Node: open_session and takeover (the new owner), release (the
	// owner that stops), resolved (the finisher), remove_member.
	Node    string `json:"node,omitempty"`
	Restore *int64 `json:"restore,omitempty"` // open_session (external mode)
	// MaxWriters bounds the job's writers when open_session names a new
	// one (0: no limit). In the command, so every replica decides alike.
	MaxWriters int `json:"max_writers,omitempty"`

	Epoch      uint64          `json:"epoch,omitempty"`      // prepared; takeover, delete_writer: the epoch expected; release
	Checkpoint int64           `json:"checkpoint,omitempty"` // prepared, decide
	State      []byte          `json:"state,omitempty"`      // prepared
	Branches   []JournalBranch `json:"branches,omitempty"`   // prepared
	Decide     bool            `json:"decide,omitempty"`     // prepared: auto mode, decision commit in the same entry
	Commit     bool            `json:"commit,omitempty"`     // decide
	Outcomes   []BranchOutcome `json:"outcomes,omitempty"`   // resolved

	Member *MemberInfo `json:"member,omitempty"` // put_member
}

// JournalBranch is a prepared branch as the journal keeps it.
type JournalBranch struct {
	ID      BranchID `json:"id"`
	Handle  Handle   `json:"handle"`
	Outcome string   `json:"outcome,omitempty"` // "" until resolved
}

// BranchOutcome reports that a sink finished a branch.
type BranchOutcome struct {
	Writer     string `json:"writer"`
	Checkpoint int64  `json:"checkpoint"`
	Sink       string `json:"sink"`
	Seq        uint64 `json:"seq"`
	Epoch      uint64 `json:"epoch"`
	Outcome    string `json:"outcome"`
}

// ApplyResult is what Apply returns to the proposer. It is plain data, so a
// follower that forwards a command to the leader can get it back over the
// network (it round-trips through JSON): a domain error travels as its
// stable code and message, and Err turns them back into an error.
type ApplyResult struct {
	// Code is "" when the command applied, else ErrorCode of the domain
	// error that refused it (and changed nothing).
	Code string `json:"code,omitempty"`
	// Message is the error's text when Code is set.
	Message string `json:"message,omitempty"`
	// Index is the journal (raft log) index at which the command applied;
	// for a Duplicate, the index of the first command with its key.
	Index uint64 `json:"index"`
	// Duplicate: the key was applied before; this is that first result.
	Duplicate bool `json:"duplicate,omitempty"`
	// Session: open_session's result.
	Session SessionInfo `json:"session,omitzero"`
	// Decided lists per writer the checkpoints this command decided
	// (open_session with restore, decide).
	Decided map[string][]int64 `json:"decided,omitempty"`
	// Handover: open_session and takeover, the grant they replaced.
	Handover *Handover `json:"handover,omitempty"`
	// Ignored counts resolved outcomes not applied because the proposer
	// no longer owned the writer.
	Ignored int `json:"ignored,omitempty"`
}

// clone returns a deep copy: the machine keeps remembered results apart
// from the ones it hands out.
func (r ApplyResult) clone() ApplyResult {
	r.Session.State = slices.Clone(r.Session.State)
	r.Session.DataLoss = slices.Clone(r.Session.DataLoss)
	if r.Decided != nil {
		d := make(map[string][]int64, len(r.Decided))
		for w, ns := range r.Decided {
			d[w] = slices.Clone(ns)
		}
		r.Decided = d
	}
	if r.Handover != nil {
		h := *r.Handover
		r.Handover = &h
	}
	return r
}

// Err returns the domain error the result carries (nil when the command
// applied), wrapping its sentinel so errors.Is works.
func (r ApplyResult) Err() error { return CodeError(r.Code, r.Message) }

type machineState struct {
	Jobs map[string]*jobState `json:"jobs"`
	// Keys and KeyOrder remember recent idempotency keys (FIFO), Results
	// what each key's command returned. Snapshots written before Results
	// existed restore without them: such a key's duplicate returns only
	// Duplicate.
	Keys     map[string]bool        `json:"keys"`
	KeyOrder []string               `json:"key_order"`
	Results  map[string]ApplyResult `json:"results,omitempty"`
	// Members: the cluster's nodes with their API addresses (members.go).
	Members map[string]*MemberInfo `json:"members,omitempty"`
}

type jobState struct {
	Spec    JobSpec                 `json:"spec"`
	Writers map[string]*writerState `json:"writers"`
	// DeletedEpoch is the highest epoch any deleted writer of the job had:
	// a writer created later starts above it, so an epoch a zombie client
	// of a deleted writer still holds is never issued again to that name.
	DeletedEpoch uint64 `json:"deleted_epoch,omitempty"`
}

type writerState struct {
	Epoch uint64 `json:"epoch"`
	// Owner is the node granted Epoch (ownership.go); GrantedAt when.
	Owner     string `json:"owner"`
	GrantedAt int64  `json:"granted_at,omitempty"`
	// Released is the highest epoch whose owner said it stopped acting.
	Released uint64 `json:"released,omitempty"`
	// PrevOwner held PrevEpoch, the last grant to a node other than Owner.
	PrevOwner string `json:"prev_owner,omitempty"`
	PrevEpoch uint64 `json:"prev_epoch,omitempty"`
	// MaxCheckpoint is the highest checkpoint ever prepared: a new one must
	// be greater, across sessions, so a number never names two checkpoints.
	MaxCheckpoint int64  `json:"max_checkpoint"`
	LastCommitted int64  `json:"last_committed"`
	LastState     []byte `json:"last_state,omitempty"`
	// LastLost: a branch of LastCommitted was resolved as data_loss. Kept
	// with the writer because the checkpoint itself may leave Recent.
	LastLost bool `json:"last_lost,omitempty"`
	// Open: checkpoints with at least one unresolved branch, or undecided.
	Open map[int64]*checkpointState `json:"open"`
	// Recent: finished checkpoints, newest last, at most recentPerWriter.
	Recent []*checkpointState `json:"recent,omitempty"`
}

type checkpointState struct {
	N          int64           `json:"n"`
	Epoch      uint64          `json:"epoch"`
	State      []byte          `json:"state,omitempty"`
	Decision   string          `json:"decision,omitempty"`
	PreparedAt int64           `json:"prepared_at"`
	DecidedAt  int64           `json:"decided_at,omitempty"`
	Branches   []JournalBranch `json:"branches"`
}

// NewMachine returns an empty machine.
func NewMachine() *Machine {
	return &Machine{st: emptyState(), changed: make(chan struct{}, 1)}
}

func emptyState() machineState {
	return machineState{Jobs: map[string]*jobState{}, Keys: map[string]bool{}, Results: map[string]ApplyResult{}}
}

// EncodeCommand encodes a command for Propose.
func EncodeCommand(c Command) []byte {
	b, err := json.Marshal(c)
	if err != nil {
		panic(fmt.Sprintf("twopc: encode command: %v", err)) // only plain data inside
	}
	return b
}

// Apply applies one encoded command, the journal's entry at index, and
// returns an ApplyResult.
func (m *Machine) Apply(index uint64, data []byte) any {
	var c Command
	if err := json.Unmarshal(data, &c); err != nil {
		panic(fmt.Sprintf("twopc: undecodable journal command: %v", err))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.notify()
	if c.Key != "" && m.st.Keys[c.Key] {
		r := m.st.Results[c.Key].clone()
		r.Duplicate = true
		return r
	}
	apply := applyOps[c.Op]
	if apply == nil {
		panic(fmt.Sprintf("twopc: unknown journal op %q", c.Op))
	}
	r := apply(m, c)
	r.Index = index
	// A refused command changed nothing, so its key is not remembered: a
	// retry is judged afresh.
	if c.Key != "" && r.Code == "" {
		m.remember(c.Key, r)
	}
	return r
}

// applyOps maps each op to its apply function.
var applyOps = map[Op]func(*Machine, Command) ApplyResult{
	OpPutJob:       (*Machine).putJob,
	OpOpenSession:  (*Machine).openSession,
	OpPrepared:     (*Machine).prepared,
	OpDecide:       (*Machine).decide,
	OpResolved:     (*Machine).resolved,
	OpDeleteWriter: (*Machine).deleteWriter,
	OpTakeover:     (*Machine).takeover,
	OpRelease:      (*Machine).release,
	OpPutMember:    (*Machine).putMember,
	OpRemoveMember: (*Machine).removeMember,
	OpBarrier:      (*Machine).barrier,
}

// KnownOp reports whether op is a journal operation Apply knows. Apply
// panics on any other (a corrupt log must stop a node), so a node refuses
// to forward a command with an unknown op.
func KnownOp(op Op) bool { return applyOps[op] != nil }

// remember keeps key and its result, forgetting the oldest keys past
// dedupeKeys or dedupeStateBytes (never the newest).
func (m *Machine) remember(key string, r ApplyResult) {
	m.st.Keys[key] = true
	m.st.Results[key] = r.clone() // the proposer gets r and may change it
	m.st.KeyOrder = append(m.st.KeyOrder, key)
	m.resultBytes += len(r.Session.State)
	for len(m.st.KeyOrder) > 1 && len(m.st.KeyOrder) > dedupeKeys {
		m.forget(0)
	}
	// Over the byte bound, the oldest results that hold a state go first:
	// a few large session states must not push out the keys of the many
	// small commands (a retried prepared entry must still be recognised).
	for i := 0; m.resultBytes > dedupeStateBytes && i < len(m.st.KeyOrder)-1; {
		if len(m.st.Results[m.st.KeyOrder[i]].Session.State) > 0 {
			m.forget(i)
			continue
		}
		i++
	}
}

// forget drops the i-th remembered key and its result.
func (m *Machine) forget(i int) {
	old := m.st.KeyOrder[i]
	m.resultBytes -= len(m.st.Results[old].Session.State)
	delete(m.st.Keys, old)
	delete(m.st.Results, old)
	m.st.KeyOrder = slices.Delete(m.st.KeyOrder, i, i+1)
}

func errResult(err error) ApplyResult { return ApplyResult{Code: ErrorCode(err), Message: err.Error()} }

func (m *Machine) putJob(c Command) ApplyResult {
	s := c.Spec
	if s == nil || !ValidName(s.Name) || !s.Commit.Valid() || len(s.Sinks) == 0 || !s.Guarantee.Norm().Valid() ||
		(s.Guarantee.Direct() && s.Commit != ModeAuto) {
		return errResult(fmt.Errorf("%w: bad job spec", ErrInvalid))
	}
	g := s.Guarantee.Norm()
	j := m.st.Jobs[s.Name]
	if j == nil {
		j = &jobState{Writers: map[string]*writerState{}}
		m.st.Jobs[s.Name] = j
	} else if cur := j.Spec.Guarantee.Norm(); cur != g {
		// A writer's checkpoints under one guarantee mean something else
		// under another (a direct checkpoint journals a state whose records
		// were not written atomically), and sinks hold no transactions of
		// a direct job to fence; a job keeps the guarantee it was made with.
		return errResult(fmt.Errorf("%w: job %s has guarantee %s; cannot change it to %s (delete the job and create it again)",
			ErrModeConflict, s.Name, cur, g))
	} else if j.Spec.Commit != s.Commit {
		for _, w := range j.Writers {
			if len(w.Open) > 0 {
				return errResult(fmt.Errorf("%w: job %s has unresolved checkpoints; cannot change commit mode from %s to %s",
					ErrModeConflict, s.Name, j.Spec.Commit, s.Commit))
			}
		}
	}
	j.Spec = JobSpec{Name: s.Name, Commit: s.Commit, Sinks: slices.Clone(s.Sinks), Guarantee: g}
	return ApplyResult{}
}

func (m *Machine) openSession(c Command) ApplyResult {
	j := m.st.Jobs[c.Job]
	if j == nil {
		return errResult(fmt.Errorf("%w: %s", ErrJobNotFound, c.Job))
	}
	w := j.Writers[c.Writer]
	if w == nil && c.MaxWriters > 0 && len(j.Writers) >= c.MaxWriters {
		return errResult(fmt.Errorf("%w: job %s has %d writers (limit max_writers_per_job); delete unused writers or raise the limit",
			ErrBackpressure, c.Job, len(j.Writers)))
	}
	if w == nil {
		w = &writerState{Epoch: j.DeletedEpoch, Open: map[int64]*checkpointState{}}
		j.Writers[c.Writer] = w
	}
	h := grant(w, c.Node, c.Time)
	r := ApplyResult{Handover: &h}
	if j.Spec.Commit == ModeExternal && c.Restore != nil {
		restore := *c.Restore
		for _, n := range sortedKeys(w.Open) {
			cp := w.Open[n]
			if cp.Decision != decisionNone {
				continue
			}
			if n <= restore {
				m.decideCheckpoint(w, cp, decisionCommit, c.Time)
			} else {
				m.decideCheckpoint(w, cp, decisionAbort, c.Time)
			}
			if r.Decided == nil {
				r.Decided = map[string][]int64{}
			}
			r.Decided[c.Writer] = append(r.Decided[c.Writer], n)
		}
	}
	r.Session = SessionInfo{Epoch: w.Epoch, Checkpoint: w.LastCommitted, State: slices.Clone(w.LastState)}
	return r
}

// decideCheckpoint records a decision; a commit moves the writer's restore
// point, because from now on the checkpoint will be committed whatever fails.
func (m *Machine) decideCheckpoint(w *writerState, cp *checkpointState, d string, now int64) {
	m.decided++
	cp.Decision = d
	cp.DecidedAt = now
	if d == decisionCommit && cp.N > w.LastCommitted {
		w.LastCommitted = cp.N
		w.LastState = slices.Clone(cp.State)
		w.LastLost = false
	}
	m.finishIfDone(w, cp)
}

// writerOf finds the job and writer a command names: an error result when
// either is unknown.
func (m *Machine) writerOf(c Command) (*jobState, *writerState, *ApplyResult) {
	j := m.st.Jobs[c.Job]
	if j == nil {
		r := errResult(fmt.Errorf("%w: %s", ErrJobNotFound, c.Job))
		return nil, nil, &r
	}
	w := j.Writers[c.Writer]
	if w == nil {
		r := errResult(fmt.Errorf("%w: writer %s/%s", ErrNoSession, c.Job, c.Writer))
		return j, nil, &r
	}
	return j, w, nil
}

func (m *Machine) prepared(c Command) ApplyResult {
	j, w, bad := m.writerOf(c)
	if bad != nil {
		return *bad
	}
	if c.Epoch != w.Epoch {
		return errResult(fmt.Errorf("%w: epoch %d, current %d", ErrSessionFenced, c.Epoch, w.Epoch))
	}
	if c.Checkpoint <= w.MaxCheckpoint {
		return errResult(fmt.Errorf("%w: checkpoint %d must be greater than %d", ErrCheckpointOrder, c.Checkpoint, w.MaxCheckpoint))
	}
	if c.Decide != (j.Spec.Commit == ModeAuto) {
		return errResult(fmt.Errorf("%w: job %s is in %s mode", ErrModeConflict, c.Job, j.Spec.Commit))
	}
	if len(c.Branches) > 0 && j.Spec.Guarantee.Direct() {
		return errResult(fmt.Errorf("%w: job %s has guarantee %s: its checkpoints have no branches", ErrModeConflict, c.Job, j.Spec.Guarantee))
	}
	w.MaxCheckpoint = c.Checkpoint
	cp := &checkpointState{
		N: c.Checkpoint, Epoch: c.Epoch, State: slices.Clone(c.State), PreparedAt: c.Time,
		Branches: slices.Clone(c.Branches),
	}
	w.Open[cp.N] = cp
	if c.Decide {
		m.decideCheckpoint(w, cp, decisionCommit, c.Time)
	}
	return ApplyResult{}
}

func (m *Machine) decide(c Command) ApplyResult {
	j := m.st.Jobs[c.Job]
	if j == nil {
		return errResult(fmt.Errorf("%w: %s", ErrJobNotFound, c.Job))
	}
	if j.Spec.Commit != ModeExternal {
		return errResult(fmt.Errorf("%w: job %s is in %s mode; checkpoints commit by themselves", ErrModeConflict, c.Job, j.Spec.Commit))
	}
	r := ApplyResult{Decided: map[string][]int64{}}
	for _, name := range sortedKeys(j.Writers) {
		w := j.Writers[name]
		for _, n := range sortedKeys(w.Open) {
			cp := w.Open[n]
			if cp.Decision != decisionNone {
				continue
			}
			switch {
			case c.Commit && n <= c.Checkpoint:
				m.decideCheckpoint(w, cp, decisionCommit, c.Time)
			case !c.Commit && n == c.Checkpoint:
				m.decideCheckpoint(w, cp, decisionAbort, c.Time)
			default:
				continue
			}
			r.Decided[name] = append(r.Decided[name], n)
		}
	}
	return r
}

func (m *Machine) resolved(c Command) ApplyResult {
	j := m.st.Jobs[c.Job]
	if j == nil {
		return errResult(fmt.Errorf("%w: %s", ErrJobNotFound, c.Job))
	}
	r := ApplyResult{}
	for _, o := range c.Outcomes {
		w := j.Writers[o.Writer]
		if w == nil {
			continue
		}
		if c.Node != "" && w.Owner != c.Node {
			// The finishing rule: only the writer's owner finishes its
			// branches. A node that lost the writer meanwhile may have
			// ended the branch the same way (finishing is idempotent),
			// but its word does not count; the owner finishes it again.
			r.Ignored++
			continue
		}
		cp := w.Open[o.Checkpoint]
		if cp == nil {
			continue // finished already: resolving twice is harmless
		}
		for i := range cp.Branches {
			b := &cp.Branches[i]
			if b.ID.Sink == o.Sink && b.ID.Seq == o.Seq && b.ID.Epoch == o.Epoch && b.Outcome == "" {
				b.Outcome = o.Outcome
				if o.Outcome == OutcomeDataLoss && cp.N == w.LastCommitted {
					w.LastLost = true
				}
			}
		}
		m.finishIfDone(w, cp)
	}
	return r
}

// deleteWriter forgets a writer: its epoch, checkpoints and last state. A
// writer with an unresolved checkpoint (in doubt, or decided and not yet
// finished in a sink) is refused: its handles are needed to finish it.
// Deleting an unknown writer changes nothing.
func (m *Machine) deleteWriter(c Command) ApplyResult {
	j := m.st.Jobs[c.Job]
	if j == nil {
		return errResult(fmt.Errorf("%w: %s", ErrJobNotFound, c.Job))
	}
	w := j.Writers[c.Writer]
	if w == nil {
		return ApplyResult{}
	}
	if len(w.Open) > 0 {
		return errResult(fmt.Errorf("%w: writer %s/%s has unresolved checkpoints %v; commit or abort them first",
			ErrWriterInDoubt, c.Job, c.Writer, sortedKeys(w.Open)))
	}
	if c.Epoch != 0 && c.Epoch != w.Epoch {
		// Granted again (a session opened) since the deleter took it over.
		return errResult(fmt.Errorf("%w: writer %s/%s was opened again (epoch %d, the delete took %d); retry the delete",
			ErrSessionFenced, c.Job, c.Writer, w.Epoch, c.Epoch))
	}
	j.DeletedEpoch = max(j.DeletedEpoch, w.Epoch)
	delete(j.Writers, c.Writer)
	return ApplyResult{}
}

// finishIfDone moves a decided checkpoint whose branches are all resolved
// from Open to Recent.
func (m *Machine) finishIfDone(w *writerState, cp *checkpointState) {
	if cp.Decision == decisionNone {
		return
	}
	for _, b := range cp.Branches {
		if b.Outcome == "" {
			return
		}
	}
	delete(w.Open, cp.N)
	cp.State = nil // the last committed state is kept in the writer
	w.Recent = append(w.Recent, cp)
	if len(w.Recent) > recentPerWriter {
		w.Recent = w.Recent[len(w.Recent)-recentPerWriter:]
	}
}

func sortedKeys[K int64 | string, V any](m map[K]V) []K {
	ks := make([]K, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// Snapshot returns the whole state, encoded.
func (m *Machine) Snapshot() ([]byte, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return json.Marshal(m.st)
}

// Restore replaces the state with a snapshot's.
func (m *Machine) Restore(data []byte) error {
	st := emptyState()
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("twopc: restore snapshot: %w", err)
	}
	if st.Jobs == nil {
		st.Jobs = map[string]*jobState{}
	}
	if st.Keys == nil {
		st.Keys = map[string]bool{}
	}
	if st.Results == nil {
		st.Results = map[string]ApplyResult{}
	}
	size := 0
	for _, r := range st.Results {
		size += len(r.Session.State)
	}
	for _, j := range st.Jobs {
		if j.Writers == nil {
			j.Writers = map[string]*writerState{}
		}
		for _, w := range j.Writers {
			if w.Open == nil {
				w.Open = map[int64]*checkpointState{}
			}
		}
	}
	m.mu.Lock()
	m.st = st
	m.resultBytes = size
	m.mu.Unlock()
	m.notify()
	return nil
}

// decisions counts the decisions applied so far (see decided).
func (m *Machine) decisions() uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.decided
}

// Changed receives a token after the state changed (Apply, Restore); a
// reader that was slow sees one token for many changes.
func (m *Machine) Changed() <-chan struct{} { return m.changed }

func (m *Machine) notify() {
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// ---- reads (for the coordinator and the API) ----

// JobSpec returns a job's spec.
func (m *Machine) JobSpec(name string) (JobSpec, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	j := m.st.Jobs[name]
	if j == nil {
		return JobSpec{}, false
	}
	s := j.Spec
	s.Sinks = slices.Clone(s.Sinks)
	s.Guarantee = s.Guarantee.Norm()
	return s, true
}

// JobNames lists the jobs, sorted.
func (m *Machine) JobNames() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return sortedKeys(m.st.Jobs)
}

// JobInfo describes a job.
func (m *Machine) JobInfo(name string) (JobInfo, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	j := m.st.Jobs[name]
	if j == nil {
		return JobInfo{}, false
	}
	info := JobInfo{Name: name, Commit: j.Spec.Commit, Sinks: slices.Clone(j.Spec.Sinks), Guarantee: j.Spec.Guarantee.Norm(), Writers: []WriterInfo{}}
	for _, wn := range sortedKeys(j.Writers) {
		w := j.Writers[wn]
		wi := WriterInfo{Name: wn, Epoch: w.Epoch, Owner: w.Owner, LastCommitted: w.LastCommitted, InDoubt: []int64{}}
		wi.InDoubt = append(wi.InDoubt, sortedKeys(w.Open)...)
		info.Writers = append(info.Writers, wi)
	}
	return info, true
}

// WriterView is a copy of a writer's journaled state.
type WriterView struct {
	Epoch         uint64
	Owner         string
	MaxCheckpoint int64
	LastCommitted int64
}

// Writer returns a writer's state; ok is false if job or writer is unknown.
func (m *Machine) Writer(job, writer string) (WriterView, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	j := m.st.Jobs[job]
	if j == nil {
		return WriterView{}, false
	}
	w := j.Writers[writer]
	if w == nil {
		return WriterView{}, false
	}
	return WriterView{Epoch: w.Epoch, Owner: w.Owner, MaxCheckpoint: w.MaxCheckpoint, LastCommitted: w.LastCommitted}, true
}

// PendingBranch is an unresolved journaled branch.
type PendingBranch struct {
	Job        string
	Writer     string
	Checkpoint int64
	// Decision: "" (in doubt), "commit" or "abort".
	Decision  string
	DecidedAt time.Time
	Branch    JournalBranch
}

// Pending lists every unresolved branch (job "" = all jobs), in a stable order.
func (m *Machine) Pending(job string) []PendingBranch {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []PendingBranch
	for _, jn := range sortedKeys(m.st.Jobs) {
		if job != "" && jn != job {
			continue
		}
		j := m.st.Jobs[jn]
		for _, wn := range sortedKeys(j.Writers) {
			w := j.Writers[wn]
			for _, n := range sortedKeys(w.Open) {
				cp := w.Open[n]
				for _, b := range cp.Branches {
					if b.Outcome != "" {
						continue
					}
					out = append(out, PendingBranch{Job: jn, Writer: wn, Checkpoint: n, Decision: cp.Decision,
						DecidedAt: time.Unix(0, cp.DecidedAt), Branch: b})
				}
			}
		}
	}
	return out
}

// unresolved reports whether branch id of a writer's checkpoint n is
// journaled and not yet resolved.
func (m *Machine) unresolved(job, writer string, n int64, id BranchID) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	j := m.st.Jobs[job]
	if j == nil || j.Writers[writer] == nil {
		return false
	}
	cp := j.Writers[writer].Open[n]
	if cp == nil {
		return false
	}
	for _, b := range cp.Branches {
		if b.ID == id {
			return b.Outcome == ""
		}
	}
	return false
}

// Writers lists every (job, writer) pair.
func (m *Machine) Writers() [][2]string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out [][2]string
	for _, jn := range sortedKeys(m.st.Jobs) {
		for _, wn := range sortedKeys(m.st.Jobs[jn].Writers) {
			out = append(out, [2]string{jn, wn})
		}
	}
	return out
}

// CheckpointStatus returns the status of a writer's checkpoint n and its
// branches; ok is false when the journal no longer (or never) knew it.
func (m *Machine) CheckpointStatus(job, writer string, n int64) (CheckpointResult, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	j := m.st.Jobs[job]
	if j == nil || j.Writers[writer] == nil {
		return CheckpointResult{}, false
	}
	w := j.Writers[writer]
	if cp := w.Open[n]; cp != nil {
		return CheckpointResult{Checkpoint: n, Status: cpStatus(cp), Branches: branchInfos(cp)}, true
	}
	for _, cp := range w.Recent {
		if cp.N == n {
			return CheckpointResult{Checkpoint: n, Status: cpStatus(cp), Branches: branchInfos(cp)}, true
		}
	}
	return CheckpointResult{}, false
}

// journaledAt reports whether the journal holds checkpoint n of the writer
// prepared by the session at epoch (unresolved or recent).
func (m *Machine) journaledAt(job, writer string, n int64, epoch uint64) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	j := m.st.Jobs[job]
	if j == nil || j.Writers[writer] == nil {
		return false
	}
	w := j.Writers[writer]
	if cp := w.Open[n]; cp != nil {
		return cp.Epoch == epoch
	}
	for _, cp := range w.Recent {
		if cp.N == n {
			return cp.Epoch == epoch
		}
	}
	return false
}

// CommittedStatus returns the status of a writer's checkpoint n that was
// decided to commit: from the journal while it knows the checkpoint, and for
// the writer's last committed one also after it left the recent list. A
// checkpoint the journal no longer knows otherwise finished committed or
// lost; only the last committed one keeps which, so others read committed.
func (m *Machine) CommittedStatus(job, writer string, n int64) string {
	if r, ok := m.CheckpointStatus(job, writer, n); ok {
		return r.Status
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if j := m.st.Jobs[job]; j != nil {
		if w := j.Writers[writer]; w != nil && w.LastCommitted == n && w.LastLost {
			return StatusDataLoss
		}
	}
	return StatusCommitted
}

// Checkpoints lists unresolved and recent checkpoints of a job.
func (m *Machine) Checkpoints(job string, now time.Time) ([]CheckpointInfo, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	j := m.st.Jobs[job]
	if j == nil {
		return nil, false
	}
	out := []CheckpointInfo{}
	for _, wn := range sortedKeys(j.Writers) {
		w := j.Writers[wn]
		cps := slices.Clone(w.Recent)
		for _, n := range sortedKeys(w.Open) {
			cps = append(cps, w.Open[n])
		}
		sort.SliceStable(cps, func(a, b int) bool { return cps[a].N < cps[b].N })
		for _, cp := range cps {
			at := time.Unix(0, cp.PreparedAt).UTC()
			out = append(out, CheckpointInfo{Writer: wn, Checkpoint: cp.N, Epoch: cp.Epoch, Status: cpStatus(cp),
				PreparedAt: at, AgeSeconds: now.Sub(at).Seconds(), Branches: branchInfos(cp)})
		}
	}
	return out, true
}

// OldestPrepared returns the age of the oldest unresolved branch.
func (m *Machine) OldestPrepared(now time.Time) time.Duration {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var oldest int64
	for _, j := range m.st.Jobs {
		for _, w := range j.Writers {
			for _, cp := range w.Open {
				if len(cp.Branches) > 0 && (oldest == 0 || cp.PreparedAt < oldest) {
					oldest = cp.PreparedAt
				}
			}
		}
	}
	if oldest == 0 {
		return 0
	}
	return now.Sub(time.Unix(0, oldest))
}

func cpStatus(cp *checkpointState) string {
	done, lost := true, false
	for _, b := range cp.Branches {
		if b.Outcome == "" {
			done = false
		}
		if b.Outcome == OutcomeDataLoss {
			lost = true
		}
	}
	switch {
	case lost:
		return StatusDataLoss
	case cp.Decision == decisionNone:
		return StatusPrepared
	case cp.Decision == decisionCommit && done:
		return StatusCommitted
	case cp.Decision == decisionCommit:
		return StatusCommitting
	case done:
		return StatusAborted
	default:
		return StatusAborting
	}
}

func branchInfos(cp *checkpointState) []BranchInfo {
	out := make([]BranchInfo, 0, len(cp.Branches))
	for _, b := range cp.Branches {
		st := b.Outcome
		if st == "" {
			switch cp.Decision {
			case decisionCommit:
				st = StatusCommitting
			case decisionAbort:
				st = StatusAborting
			default:
				st = StatusPrepared
			}
		}
		out = append(out, BranchInfo{Sink: b.ID.Sink, Slot: b.ID.Slot, Status: st, Handle: b.Handle})
	}
	return out
}
