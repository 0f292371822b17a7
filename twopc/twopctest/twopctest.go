// Package twopctest provides an in-memory journal and fake sinks for tests
// of the coordinator and the API, like net/http/httptest.
//
// A fake Sink keeps its transactions' states the way a real sink's server
// would: a test can drop a Coordinator (simulating a crash), build a new one
// from the same Journal's entries and the same Sink, and check recovery.
package twopctest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/txsink/txsink/twopc"
)

// Journal is an in-memory twopc.Journal. It keeps every entry so a test can
// replay them into a fresh Machine, as a restarted node would.
type Journal struct {
	mu      sync.Mutex
	m       *twopc.Machine
	entries [][]byte
	// Fail, when set, makes Propose fail without applying, with an error
	// wrapping both twopc.ErrUnavailable and Fail (a test can make it a
	// raftlog.NotLeaderError, as a follower's journal returns).
	Fail error
}

// NewJournal returns a journal applying to m.
func NewJournal(m *twopc.Machine) *Journal { return &Journal{m: m} }

// Propose applies cmd and keeps it; its index is its 1-based position.
func (j *Journal) Propose(ctx context.Context, cmd []byte) (twopc.ApplyResult, error) {
	if err := ctx.Err(); err != nil {
		return twopc.ApplyResult{}, fmt.Errorf("%w: %w", twopc.ErrUnavailable, err)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.Fail != nil {
		return twopc.ApplyResult{}, fmt.Errorf("%w: %w", twopc.ErrUnavailable, j.Fail)
	}
	j.entries = append(j.entries, slices.Clone(cmd))
	return j.m.Apply(uint64(len(j.entries)), cmd).(twopc.ApplyResult), nil
}

// Reopen returns a new journal over a new Machine that has replayed every
// entry: the state a node finds after a restart.
func (j *Journal) Reopen() *Journal {
	j.mu.Lock()
	defer j.mu.Unlock()
	m := twopc.NewMachine()
	for i, e := range j.entries {
		m.Apply(uint64(i+1), e)
	}
	return &Journal{m: m, entries: slices.Clone(j.entries)}
}

// Machine returns the machine the journal applies to.
func (j *Journal) Machine() *twopc.Machine { return j.m }

// Branch states of the fake sink.
const (
	Open      = "open"
	Prepared  = "prepared"
	Committed = "committed"
	Aborted   = "aborted"
)

// Sink is a fake twopc.Sink that keeps records in memory.
type Sink struct {
	name        string
	maxInflight int

	mu sync.Mutex
	tx map[string]*tx // by BranchID.String()
	// committed records' values in commit order
	committed []string
	// Fault injection: when set, the next calls fail with these errors.
	FailWrite, FailPrepare, FailCommit, FailResolve error
	failFence                                       error
	fences                                          int
	// Hang makes the next calls of these kinds block until their context
	// ends and return its error, as a stopped server does: "write",
	// "prepare", "commit" (Branch.Commit and Resolve with commit), "abort"
	// (Branch.Abort), "fence", "flush" (DirectBranch.Flush).
	// Set it with SetHang.
	Hang    map[string]bool
	unhang  map[string]chan struct{} // closed when SetHang clears the op
	hanging map[string]int           // calls blocked in hang now, by op
	// Topics, when set, is the allow-list checked by Validate.
	Topics []string
	// expire, when set, is what every open branch's Expired returns
	// (set with ExpireOpen).
	expire error
	// reject is a value Write refuses for good (set with RejectValue).
	reject string
	// Direct branches (guarantee at_least_once or none): FailFlush makes
	// the next flushes fail; directs counts the open ones; flushes counts
	// Flush calls.
	FailFlush error
	directs   int
	flushes   int
	// groups holds committed consumer-group offsets: group → topic →
	// partition → offset (OffsetSink).
	groups map[string]map[string]map[int32]int64
}

type tx struct {
	id      twopc.BranchID
	state   string
	vals    []string
	offsets *twopc.Offsets // added by an OffsetSink's branch
}

// NewSink returns a fake sink with max in-flight branches per writer.
func NewSink(name string, maxInflight int) *Sink {
	return &Sink{name: name, maxInflight: maxInflight, tx: map[string]*tx{}}
}

// Name implements twopc.Sink.
func (s *Sink) Name() string { return s.name }

// MaxInflight implements twopc.Sink.
func (s *Sink) MaxInflight() int { return s.maxInflight }

// Validate accepts Kafka-style records with a value; rejects MySQL fields and
// topics outside Topics.
func (s *Sink) Validate(r *twopc.Record) error {
	if r.Stmt != "" || r.Args != nil {
		return fmt.Errorf("%w: sink %s takes no stmt/args", twopc.ErrInvalid, s.name)
	}
	if len(r.Value) == 0 && len(r.ValueB64) == 0 {
		return fmt.Errorf("%w: value is required", twopc.ErrInvalid)
	}
	if len(s.Topics) > 0 && r.Topic != "" && !slices.Contains(s.Topics, r.Topic) {
		return fmt.Errorf("%w: topic %q is not allowed in sink %s", twopc.ErrInvalid, r.Topic, s.name)
	}
	return nil
}

// Begin implements twopc.Sink.
func (s *Sink) Begin(ctx context.Context, id twopc.BranchID) (twopc.Branch, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := &tx{id: id, state: Open}
	s.tx[id.String()] = t
	return &branch{s: s, t: t}, nil
}

// Resolve implements twopc.Sink.
func (s *Sink) Resolve(ctx context.Context, id twopc.BranchID, h twopc.Handle, commit bool) error {
	if commit {
		if err := s.hang(ctx, "commit"); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.FailResolve != nil {
		return s.FailResolve
	}
	if string(h) != handleOf(id) {
		return fmt.Errorf("fake: handle %s does not match branch %s", h, id)
	}
	t := s.tx[id.String()]
	return s.finishLocked(t, commit)
}

func (s *Sink) finishLocked(t *tx, commit bool) error {
	switch {
	case t == nil && commit:
		return fmt.Errorf("%w: fake: unknown transaction", twopc.ErrDataLoss)
	case t == nil:
		return nil
	case commit && t.state == Aborted:
		return fmt.Errorf("%w: fake: %s was aborted", twopc.ErrDataLoss, t.id)
	case !commit && t.state == Committed:
		return fmt.Errorf("fake: cannot abort committed %s", t.id)
	case commit && t.state == Open:
		return fmt.Errorf("fake: commit of unprepared %s", t.id)
	case commit && t.state == Prepared:
		t.state = Committed
		s.committed = append(s.committed, t.vals...)
		if o := t.offsets; o != nil {
			if s.groups == nil {
				s.groups = map[string]map[string]map[int32]int64{}
			}
			if s.groups[o.Group] == nil {
				s.groups[o.Group] = map[string]map[int32]int64{}
			}
			for topic, ps := range o.Topics {
				if s.groups[o.Group][topic] == nil {
					s.groups[o.Group][topic] = map[int32]int64{}
				}
				for p, off := range ps {
					s.groups[o.Group][topic][p] = off
				}
			}
		}
	case !commit && t.state != Aborted:
		t.state = Aborted
	}
	return nil
}

// Fence aborts every open or prepared transaction of the writer not in keep.
func (s *Sink) Fence(ctx context.Context, job, writer string, keep []twopc.BranchID) error {
	if err := s.hang(ctx, "fence"); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fences++
	if s.failFence != nil {
		return s.failFence
	}
	for _, t := range s.tx {
		if t.id.Job != job || t.id.Writer != writer || slices.Contains(keep, t.id) {
			continue
		}
		if t.state == Open || t.state == Prepared {
			t.state = Aborted
		}
	}
	return nil
}

// SetFailFinish makes Commit and Resolve fail with err (nil: succeed), like
// setting FailCommit and FailResolve, but safe while coordinators run.
func (s *Sink) SetFailFinish(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.FailCommit, s.FailResolve = err, err
}

// SetFailFence makes every Fence fail with err (nil: succeed again); safe
// while a coordinator runs.
func (s *Sink) SetFailFence(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failFence = err
}

// Fences counts the calls of Fence.
func (s *Sink) Fences() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fences
}

// Committed returns the values of committed records, in commit order.
func (s *Sink) Committed() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.committed)
}

// States counts transactions by state.
func (s *Sink) States() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for _, t := range s.tx {
		out[t.state]++
	}
	return out
}

// Abort a branch from outside, as a broker timing a transaction out would.
func (s *Sink) Expire(id twopc.BranchID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tx[id.String()]; t != nil && t.state != Committed {
		t.state = Aborted
	}
}

// ExpireOpen makes every open branch report err from Expired, and fail its
// Write and Prepare with it, as a Kafka branch open too long does; nil
// ends that.
func (s *Sink) ExpireOpen(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire = err
}

// RejectValue makes Write refuse every record with value v (compared with
// the record's raw value) as a database refuses a duplicate key: a
// *twopc.RecordError wrapping twopc.ErrRecordRejected, and the branch keeps
// none of the call's records. "" ends that.
func (s *Sink) RejectValue(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reject = v
}

// Branches lists the ids of transactions in a state.
func (s *Sink) Branches(state string) []twopc.BranchID {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []twopc.BranchID
	for _, t := range s.tx {
		if t.state == state {
			out = append(out, t.id)
		}
	}
	return out
}

// hang blocks while Hang[op] is set, until ctx ends (then it returns the
// context's error) or SetHang clears it (then the call goes on).
func (s *Sink) hang(ctx context.Context, op string) error {
	s.mu.Lock()
	h, released := s.Hang[op], s.unhang[op]
	if h {
		if s.hanging == nil {
			s.hanging = map[string]int{}
		}
		s.hanging[op]++
		defer func() {
			s.mu.Lock()
			s.hanging[op]--
			s.mu.Unlock()
		}()
	}
	s.mu.Unlock()
	if !h {
		return nil
	}
	select {
	case <-ctx.Done():
		return fmt.Errorf("fake: %s hung: %w", op, ctx.Err())
	case <-released:
		return nil
	}
}

// Hanging reports how many calls of kind op are blocked by Hang now.
func (s *Sink) Hanging(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hanging[op]
}

// SetHang sets or clears Hang[op]; clearing it lets hanging calls go on, as
// a server that resumes does.
func (s *Sink) SetHang(op string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Hang == nil {
		s.Hang = map[string]bool{}
	}
	if s.unhang == nil {
		s.unhang = map[string]chan struct{}{}
	}
	if ch := s.unhang[op]; ch != nil && s.Hang[op] && !on {
		close(ch)
	}
	if on && !s.Hang[op] {
		s.unhang[op] = make(chan struct{})
	}
	s.Hang[op] = on
}

func handleOf(id twopc.BranchID) string { return fmt.Sprintf("%q", id.String()) }

type branch struct {
	s *Sink
	t *tx
}

func (b *branch) Write(ctx context.Context, recs []*twopc.Record) error {
	if err := b.s.hang(ctx, "write"); err != nil {
		return err
	}
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	if b.s.FailWrite != nil {
		return b.s.FailWrite
	}
	if b.t.state == Open && b.s.expire != nil {
		return b.s.expire
	}
	if b.t.state != Open {
		return fmt.Errorf("fake: write to %s %s", b.t.state, b.t.id)
	}
	vals := make([]string, len(recs))
	for i, r := range recs {
		vals[i] = string(r.Value)
		if len(r.ValueB64) > 0 {
			vals[i] = string(r.ValueB64)
		}
		if b.s.reject != "" && vals[i] == b.s.reject {
			return &twopc.RecordError{Line: i + 1, Err: fmt.Errorf("%w: fake: value %s refused", twopc.ErrRecordRejected, vals[i])}
		}
	}
	b.t.vals = append(b.t.vals, vals...)
	return nil
}

func (b *branch) Prepare(ctx context.Context) (twopc.Handle, error) {
	if err := b.s.hang(ctx, "prepare"); err != nil {
		return nil, err
	}
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	if b.s.FailPrepare != nil {
		return nil, b.s.FailPrepare
	}
	if b.t.state == Open && b.s.expire != nil {
		return nil, b.s.expire
	}
	if b.t.state != Open {
		return nil, fmt.Errorf("fake: prepare of %s %s", b.t.state, b.t.id)
	}
	b.t.state = Prepared
	return twopc.Handle(handleOf(b.t.id)), nil
}

// Expired reports the error set with ExpireOpen while the branch is open.
func (b *branch) Expired() error {
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	if b.t.state != Open {
		return nil
	}
	return b.s.expire
}

func (b *branch) Commit(ctx context.Context) error {
	if err := b.s.hang(ctx, "commit"); err != nil {
		return err
	}
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	if b.s.FailCommit != nil {
		return b.s.FailCommit
	}
	return b.s.finishLocked(b.t, true)
}

func (b *branch) Abort(ctx context.Context) error {
	if err := b.s.hang(ctx, "abort"); err != nil {
		return err
	}
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	return b.s.finishLocked(b.t, false)
}

var _ twopc.Sink = (*Sink)(nil)

var _ twopc.DirectSink = (*Sink)(nil)

// BeginDirect implements twopc.DirectSink. A direct branch keeps its
// records until Flush appends them to Committed (at_least_once); with
// guarantee none, Write appends them at once, and a FailWrite or a
// rejected value is reported to OnFailed instead of returned. Close drops
// what was not flushed.
func (s *Sink) BeginDirect(ctx context.Context, id twopc.BranchID, opt twopc.DirectOptions) (twopc.DirectBranch, error) {
	if opt.Guarantee != twopc.GuaranteeAtLeastOnce && opt.Guarantee != twopc.GuaranteeNone {
		return nil, fmt.Errorf("%w: fake: direct branch with guarantee %q", twopc.ErrInvalid, opt.Guarantee)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.directs++
	return &direct{s: s, id: id, opt: opt}, nil
}

// Directs is the number of direct branches begun and not closed.
func (s *Sink) Directs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.directs
}

// Flushes is the number of direct branch flushes so far.
func (s *Sink) Flushes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.flushes
}

type direct struct {
	s       *Sink
	id      twopc.BranchID
	opt     twopc.DirectOptions
	pending []string
	closed  bool
}

func (d *direct) Write(ctx context.Context, recs []*twopc.Record) error {
	if err := d.s.hang(ctx, "write"); err != nil {
		return err
	}
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	if d.closed {
		return fmt.Errorf("fake: write to closed direct branch %s", d.id)
	}
	none := d.opt.Guarantee == twopc.GuaranteeNone
	if d.s.FailWrite != nil {
		if none {
			d.opt.OnFailed(len(recs), d.s.FailWrite)
			return nil
		}
		return d.s.FailWrite
	}
	vals := make([]string, 0, len(recs))
	for i, r := range recs {
		v := string(r.Value)
		if len(r.ValueB64) > 0 {
			v = string(r.ValueB64)
		}
		if d.s.reject != "" && v == d.s.reject {
			err := &twopc.RecordError{Line: i + 1, Err: fmt.Errorf("%w: fake: value %s refused", twopc.ErrRecordRejected, v)}
			if none {
				d.opt.OnFailed(1, err)
				continue
			}
			return err
		}
		vals = append(vals, v)
	}
	if none {
		d.s.committed = append(d.s.committed, vals...)
		return nil
	}
	d.pending = append(d.pending, vals...)
	return nil
}

func (d *direct) Flush(ctx context.Context) error {
	if err := d.s.hang(ctx, "flush"); err != nil {
		return err
	}
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	d.s.flushes++
	if d.closed {
		return fmt.Errorf("fake: flush of closed direct branch %s", d.id)
	}
	if d.s.FailFlush != nil {
		return d.s.FailFlush
	}
	d.s.committed = append(d.s.committed, d.pending...)
	d.pending = nil
	return nil
}

func (d *direct) Close(ctx context.Context) error {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	if !d.closed {
		d.closed = true
		d.s.directs--
		d.pending = nil
	}
	return nil
}

// ErrInjected is a convenient error for fault injection.
var ErrInjected = errors.New("twopctest: injected failure")

// OffsetSink is a fake Sink whose branches carry consumer-group offsets
// (twopc.OffsetSink), as the Kafka sink's do: a branch's commit commits
// them, its abort drops them. GroupOffsets reads what is committed.
type OffsetSink struct {
	*Sink
	// FailOffsets, when set, is what the next AddOffsets calls return.
	FailOffsets error
	// BadTopic is a topic ValidateOffsets refuses (as the Kafka sink
	// refuses a topic the broker does not have).
	BadTopic string
}

// NewOffsetSink returns a fake offsets-taking sink.
func NewOffsetSink(name string, maxInflight int) *OffsetSink {
	return &OffsetSink{Sink: NewSink(name, maxInflight)}
}

// ValidateOffsets implements twopc.OffsetSink.
func (s *OffsetSink) ValidateOffsets(o *twopc.Offsets) error {
	if _, ok := o.Topics[s.BadTopic]; ok && s.BadTopic != "" {
		return fmt.Errorf("%w: fake: no topic %q", twopc.ErrInvalid, s.BadTopic)
	}
	return nil
}

// Begin implements twopc.Sink with branches that take offsets.
func (s *OffsetSink) Begin(ctx context.Context, id twopc.BranchID) (twopc.Branch, error) {
	b, err := s.Sink.Begin(ctx, id)
	if err != nil {
		return nil, err
	}
	return &offsetBranch{branch: b.(*branch), s: s}, nil
}

// GroupOffsets returns a copy of group's committed offsets (topic →
// partition → offset; empty when none).
func (s *OffsetSink) GroupOffsets(group string) map[string]map[int32]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]map[int32]int64{}
	for t, ps := range s.groups[group] {
		out[t] = maps.Clone(ps)
	}
	return out
}

// Groups returns a copy of every group's committed offsets.
func (s *OffsetSink) Groups() map[string]map[string]map[int32]int64 {
	s.mu.Lock()
	names := slices.Collect(maps.Keys(s.groups))
	s.mu.Unlock()
	out := map[string]map[string]map[int32]int64{}
	for _, g := range names {
		out[g] = s.GroupOffsets(g)
	}
	return out
}

// Offsets returns the offsets added to the branch id ("": none).
func (s *OffsetSink) Offsets(id twopc.BranchID) *twopc.Offsets {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tx[id.String()]; t != nil {
		return t.offsets
	}
	return nil
}

type offsetBranch struct {
	*branch
	s *OffsetSink
}

// AddOffsets implements twopc.OffsetBranch.
func (b *offsetBranch) AddOffsets(ctx context.Context, o *twopc.Offsets) error {
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	if b.s.FailOffsets != nil {
		return b.s.FailOffsets
	}
	if b.t.state != Open {
		return fmt.Errorf("fake: offsets for %s %s", b.t.state, b.t.id)
	}
	if b.t.offsets != nil {
		return fmt.Errorf("fake: offsets added twice to %s", b.t.id)
	}
	c := *o
	c.Topics = map[string]map[int32]int64{}
	for t, ps := range o.Topics {
		c.Topics[t] = maps.Clone(ps)
	}
	b.t.offsets = &c
	return nil
}

var (
	_ twopc.OffsetSink   = (*OffsetSink)(nil)
	_ twopc.OffsetBranch = (*offsetBranch)(nil)
)

// CommitBranch runs one branch of s through its whole exactly-once life:
// Begin, Write recs, Prepare, Commit. Sink tests and benchmarks use it
// where the branch itself is not what they look at.
func CommitBranch(ctx context.Context, s twopc.Sink, id twopc.BranchID, recs []*twopc.Record) error {
	br, err := s.Begin(ctx, id)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := br.Write(ctx, recs); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := br.Prepare(ctx); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	if err := br.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}
