package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/txsink/txsink/raftlog"
	"github.com/txsink/txsink/twopc"
)

// metrics implements twopc.Metrics with Prometheus (txsink_ prefix) and
// holds every other family the sidecar exports. The README's "Operating
// it" section lists them.
type metrics struct {
	records   *prometheus.CounterVec
	bytes     *prometheus.CounterVec
	phase     *prometheus.HistogramVec
	retries   *prometheus.CounterVec
	dataLoss  *prometheus.CounterVec
	failed    *prometheus.CounterVec
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	sinkErrs  *prometheus.CounterVec
	proxied   *prometheus.CounterVec
	dropped   *prometheus.CounterVec
	takeovers prometheus.Counter
	handover  *prometheus.HistogramVec
	applyTime prometheus.Histogram
	branches  *branchCollector
	reg       *prometheus.Registry

	// Label children cached for the per-call paths, so that recording is
	// a read-locked map hit and an atomic add, without allocation.
	mu     sync.RWMutex
	recs   map[[2]string]recCounters
	routes map[routeKey]routeMetrics
}

type recCounters struct{ n, bytes prometheus.Counter }

type routeKey struct {
	route string
	code  int
}

type routeMetrics struct {
	n   prometheus.Counter
	lat prometheus.Observer
}

// Sink operations counted in txsink_sink_errors_total{op}.
var sinkOps = []string{"begin", "write", "offsets", "prepare", "commit", "abort", "resolve", "fence", "flush"}

func newMetrics(m *twopc.Machine, node *raftlog.Node) *metrics {
	x := &metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "txsink_records_total",
			Help: "Records accepted into open branches."}, []string{"job", "sink"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "txsink_record_bytes_total",
			Help: "Key and value bytes of accepted records."}, []string{"job", "sink"}),
		phase: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "txsink_checkpoint_phase_seconds",
			Help:    "Duration of checkpoint phases: prepare (all sinks), journal (Raft entry), commit (all sinks), resolve (the RESOLVED entry after the commits; an auto-mode checkpoint answers before it); flush (all sinks) for at_least_once and none jobs.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"job", "phase"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "txsink_commit_retries_total",
			Help: "Commits or aborts of decided branches that failed and will be retried."}, []string{"sink"}),
		dataLoss: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "txsink_data_loss_total",
			Help: "Decided commits the sink had already aborted (e.g. Kafka transaction timeout). Alert on any."}, []string{"job", "sink"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "txsink_records_failed_total",
			Help: "Records a sink gave up on for a job with guarantee none (fire and forget): written to no sink, reported in no answer."},
			[]string{"job", "sink", "guarantee"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "txsink_http_requests_total",
			Help: "HTTP API requests by route pattern and status code."}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "txsink_http_request_duration_seconds",
			Help:    "HTTP API request latency by route pattern.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14)}, []string{"route"}),
		sinkErrs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "txsink_sink_errors_total",
			Help: "Errors returned by a sink, by operation: begin, write, prepare, commit, abort, resolve, fence."},
			[]string{"sink", "op"}),
		proxied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "txsink_proxied_requests_total",
			Help: "Session calls passed to the node owning the session, by route and outcome: answered (the owner's answer " +
				"was passed back), unreachable (answered 503 here), canceled (the caller went away)."},
			[]string{"route", "outcome"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "txsink_sessions_dropped_total",
			Help: "Sessions this node stopped by itself: moved (the journal gave the writer to another node) or " +
				"lease_lost (no contact with the journal's leader)."}, []string{"reason"}),
		takeovers: prometheus.NewCounter(prometheus.CounterOpts{Name: "txsink_writer_takeovers_total",
			Help: "Writers of other nodes this node (as leader) took over to finish their decided branches."}),
		handover: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "txsink_handover_wait_seconds",
			Help: "Time a new owner waited for a writer's previous owner on another node, by outcome: released (it let go) " +
				"or expired (the handover wait ran out: the old owner was dead or cut off).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12)}, []string{"outcome"}),
		applyTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "txsink_journal_apply_seconds",
			Help:    "Time from proposing a journal entry to its being applied on this node (successful proposals).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14)}),
		reg:    prometheus.NewRegistry(),
		recs:   map[[2]string]recCounters{},
		routes: map[routeKey]routeMetrics{},
	}
	x.reg.MustRegister(x.records, x.bytes, x.phase, x.retries, x.dataLoss, x.failed, x.requests, x.latency, x.sinkErrs, x.proxied, x.applyTime,
		x.dropped, x.takeovers, x.handover,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, r := range []string{"moved", "lease_lost"} {
		x.dropped.WithLabelValues(r) // series exist at 0, so increase() sees the first
	}
	x.branches = &branchCollector{m: m}
	x.reg.MustRegister(x.branches)
	x.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "txsink_oldest_prepared_branch_seconds",
		Help: "Age of the oldest prepared, unresolved branch (compare with the Kafka transaction timeout)."},
		func() float64 { return m.OldestPrepared(time.Now()).Seconds() }))
	if node != nil {
		x.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "txsink_raft_leader",
			Help: "1 if this node is the journal's Raft leader."}, func() float64 {
			if node.IsLeader() {
				return 1
			}
			return 0
		}))
		x.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "txsink_raft_last_index",
			Help: "Last index of this node's Raft log."}, func() float64 { return float64(node.Status().LastIndex) }))
		x.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "txsink_raft_leader_changes_total",
			Help: "Times this node gained or lost the journal's leadership. Alert on a rate: a flapping leader stalls checkpoints."},
			func() float64 { return float64(node.LeaderChanges()) }))
		x.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "txsink_journal_store_batches_total",
			Help: "Append batches written to the Raft log store; each is one bolt commit (its fsyncs: bolt syncs the pages, then the meta page). " +
				"Compare with txsink_journal_store_entries_total: concurrent checkpoints share batches."},
			func() float64 { b, _ := node.LogWrites(); return float64(b) }))
		x.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "txsink_journal_store_entries_total",
			Help: "Entries written to the Raft log store (journal commands and Raft's own entries)."},
			func() float64 { _, e := node.LogWrites(); return float64(e) }))
		x.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "txsink_raft_refused_peers_total",
			Help: "Inbound Raft connections refused: failed peer authentication, or any on a node without cluster key or Raft TLS."},
			func() float64 { return float64(node.RefusedPeers()) }))
	}
	return x
}

// SessionDropped implements twopc.OwnershipMetrics.
func (x *metrics) SessionDropped(reason string) { x.dropped.WithLabelValues(reason).Inc() }

// Takeover implements twopc.OwnershipMetrics.
func (x *metrics) Takeover() { x.takeovers.Inc() }

// HandoverWaited implements twopc.OwnershipMetrics.
func (x *metrics) HandoverWaited(d time.Duration, released bool) {
	outcome := "expired"
	if released {
		outcome = "released"
	}
	x.handover.WithLabelValues(outcome).Observe(d.Seconds())
}

// Records implements twopc.Metrics; it runs on every write call.
func (x *metrics) Records(job, sink string, n, bytes int) {
	k := [2]string{job, sink}
	x.mu.RLock()
	c, ok := x.recs[k]
	x.mu.RUnlock()
	if !ok {
		c = recCounters{x.records.WithLabelValues(job, sink), x.bytes.WithLabelValues(job, sink)}
		// Data loss starts at 0 for every job and sink that wrote: a
		// series that first appears at 1 never shows an increase().
		x.dataLoss.WithLabelValues(job, sink)
		x.mu.Lock()
		x.recs[k] = c
		x.mu.Unlock()
	}
	c.n.Add(float64(n))
	c.bytes.Add(float64(bytes))
}

// CheckpointDone implements twopc.Metrics.
func (x *metrics) CheckpointDone(job, phase string, d time.Duration) {
	x.phase.WithLabelValues(job, phase).Observe(d.Seconds())
}

// CommitRetry implements twopc.Metrics.
func (x *metrics) CommitRetry(sink string) { x.retries.WithLabelValues(sink).Inc() }

// DataLoss implements twopc.Metrics.
func (x *metrics) DataLoss(job, sink string) { x.dataLoss.WithLabelValues(job, sink).Inc() }

// RecordsFailed implements twopc.DirectMetrics.
func (x *metrics) RecordsFailed(job, sink string, g twopc.Guarantee, n int) {
	x.failed.WithLabelValues(job, sink, string(g)).Add(float64(n))
}

// observeRequest is api.Config.Observe: route is a mux pattern, so the
// label values are bounded by the routes times the codes they answer.
func (x *metrics) observeRequest(route string, code int, d time.Duration) {
	k := routeKey{route, code}
	x.mu.RLock()
	c, ok := x.routes[k]
	x.mu.RUnlock()
	if !ok {
		c = routeMetrics{x.requests.WithLabelValues(route, strconv.Itoa(code)), x.latency.WithLabelValues(route)}
		x.mu.Lock()
		x.routes[k] = c
		x.mu.Unlock()
	}
	c.n.Inc()
	c.lat.Observe(d.Seconds())
}

// observeProxy is api.Config.ObserveProxy: route is a mux pattern and
// outcome one of three, so the label values are bounded.
func (x *metrics) observeProxy(route, outcome string) {
	x.proxied.WithLabelValues(route, outcome).Inc()
}

// journal wraps the journal to time each proposal until it is applied.
func (x *metrics) journal(j twopc.Journal) twopc.Journal {
	return &meteredJournal{j: j, apply: x.applyTime}
}

type meteredJournal struct {
	j     twopc.Journal
	apply prometheus.Observer
}

func (m *meteredJournal) Propose(ctx context.Context, cmd []byte) (twopc.ApplyResult, error) {
	t0 := time.Now()
	res, err := m.j.Propose(ctx, cmd)
	if err == nil {
		m.apply.Observe(time.Since(t0).Seconds())
	}
	return res, err
}

// wrapSinks returns the sinks with their errors counted by operation. The
// coordinator gets the wrapped ones, which keep the optional methods it
// asks for (TransactionTimeout, a branch's Expired); Ping is used on the
// originals.
func (x *metrics) wrapSinks(sinks map[string]twopc.Sink) map[string]twopc.Sink {
	out := make(map[string]twopc.Sink, len(sinks))
	for name, s := range sinks {
		ms := &meteredSink{Sink: s, errs: map[string]prometheus.Counter{}}
		for _, op := range sinkOps {
			// Pre-created so every sink shows a 0 for every op before
			// its first error: a rate() alert then works from the start.
			ms.errs[op] = x.sinkErrs.WithLabelValues(name, op)
		}
		out[name] = ms
		if _, ok := s.(twopc.OffsetSink); ok {
			// The coordinator asks for twopc.OffsetSink: a wrapper
			// without it would refuse every checkpoint's offsets.
			out[name] = &meteredOffsetSink{ms}
		}
		x.retries.WithLabelValues(name) // 0 from the start, like the errors
	}
	return out
}

// meteredSink counts a sink's errors; errs is read-only after wrapSinks.
type meteredSink struct {
	twopc.Sink
	errs map[string]prometheus.Counter
}

func (s *meteredSink) count(op string, err error) error {
	if err != nil {
		s.errs[op].Inc()
	}
	return err
}

func (s *meteredSink) Begin(ctx context.Context, id twopc.BranchID) (twopc.Branch, error) {
	b, err := s.Sink.Begin(ctx, id)
	if err != nil {
		return nil, s.count("begin", err)
	}
	return &meteredBranch{b: b, s: s}, nil
}

func (s *meteredSink) Resolve(ctx context.Context, id twopc.BranchID, h twopc.Handle, commit bool) error {
	return s.count("resolve", s.Sink.Resolve(ctx, id, h, commit))
}

func (s *meteredSink) Fence(ctx context.Context, job, writer string, keep []twopc.BranchID) error {
	return s.count("fence", s.Sink.Fence(ctx, job, writer, keep))
}

// TransactionTimeout passes on the sink's (0 when it has none): the
// coordinator warns about old prepared branches through it.
func (s *meteredSink) TransactionTimeout() time.Duration {
	if t, ok := s.Sink.(interface{ TransactionTimeout() time.Duration }); ok {
		return t.TransactionTimeout()
	}
	return 0
}

// BeginDirect passes on twopc.DirectSink (jobs with guarantee
// at_least_once or none), counting write and flush errors.
func (s *meteredSink) BeginDirect(ctx context.Context, id twopc.BranchID, opt twopc.DirectOptions) (twopc.DirectBranch, error) {
	ds, ok := s.Sink.(twopc.DirectSink)
	if !ok {
		return nil, s.count("begin", fmt.Errorf("%w: sink %s cannot serve guarantee %s", twopc.ErrInvalid, s.Name(), opt.Guarantee))
	}
	d, err := ds.BeginDirect(ctx, id, opt)
	if err != nil {
		return nil, s.count("begin", err)
	}
	return &meteredDirect{d: d, s: s}, nil
}

type meteredDirect struct {
	d twopc.DirectBranch
	s *meteredSink
}

func (d *meteredDirect) Write(ctx context.Context, recs []*twopc.Record) error {
	return d.s.count("write", d.d.Write(ctx, recs))
}

func (d *meteredDirect) Flush(ctx context.Context) error { return d.s.count("flush", d.d.Flush(ctx)) }

func (d *meteredDirect) Close(ctx context.Context) error { return d.d.Close(ctx) }

// meteredOffsetSink is a meteredSink of a sink that takes offsets.
type meteredOffsetSink struct{ *meteredSink }

// ValidateOffsets passes on twopc.OffsetSink.
func (s *meteredOffsetSink) ValidateOffsets(o *twopc.Offsets) error {
	return s.Sink.(twopc.OffsetSink).ValidateOffsets(o)
}

type meteredBranch struct {
	b twopc.Branch
	s *meteredSink
}

// Expired passes on the branch's (nil when it cannot expire): the
// coordinator's loop fails a session with an expired Kafka transaction
// through it, before the broker aborts the transaction.
func (b *meteredBranch) Expired() error {
	if e, ok := b.b.(interface{ Expired() error }); ok {
		return e.Expired()
	}
	return nil
}

// Detach passes on twopc.Detacher. Without it the coordinator's type
// assertion fails on every branch of the real binary, so a node that lost a
// writer would keep its prepared MySQL branch's connection open and the
// writer's new owner could not finish or fence that branch (it waits for the
// preparer's session to leave the server) while the old node runs.
func (b *meteredBranch) Detach() {
	if d, ok := b.b.(twopc.Detacher); ok {
		d.Detach()
	}
}

// AddOffsets passes on twopc.OffsetBranch; the coordinator calls it only
// on branches of a meteredOffsetSink.
func (b *meteredBranch) AddOffsets(ctx context.Context, o *twopc.Offsets) error {
	ob, ok := b.b.(twopc.OffsetBranch)
	if !ok {
		return b.s.count("offsets", fmt.Errorf("%w: the branch of sink %s takes no offsets", twopc.ErrSinkFailure, b.s.Name()))
	}
	return b.s.count("offsets", ob.AddOffsets(ctx, o))
}

func (b *meteredBranch) Write(ctx context.Context, recs []*twopc.Record) error {
	return b.s.count("write", b.b.Write(ctx, recs))
}

func (b *meteredBranch) Prepare(ctx context.Context) (twopc.Handle, error) {
	h, err := b.b.Prepare(ctx)
	return h, b.s.count("prepare", err)
}

func (b *meteredBranch) Commit(ctx context.Context) error {
	return b.s.count("commit", b.b.Commit(ctx))
}

func (b *meteredBranch) Abort(ctx context.Context) error {
	return b.s.count("abort", b.b.Abort(ctx))
}

// branchCollector reports unresolved branches by state at scrape time.
// Every configured sink gets all three states, at 0 when it has none, so
// that a dashboard shows 0 rather than "no data" and an alert on the
// series sees it before the first branch.
type branchCollector struct {
	m     *twopc.Machine
	sinks atomic.Pointer[[]string] // set once the sinks are known
}

var branchDesc = prometheus.NewDesc("txsink_branches", "Unresolved journaled branches by state (in_doubt: prepared, undecided).",
	[]string{"sink", "state"}, nil)

func (b *branchCollector) Describe(ch chan<- *prometheus.Desc) { ch <- branchDesc }
func (b *branchCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct{ sink, state string }
	counts := map[key]int{}
	if sinks := b.sinks.Load(); sinks != nil {
		for _, s := range *sinks {
			for _, st := range []string{"in_doubt", "committing", "aborting"} {
				counts[key{s, st}] = 0
			}
		}
	}
	for _, p := range b.m.Pending("") {
		st := "in_doubt"
		switch p.Decision {
		case "commit":
			st = "committing"
		case "abort":
			st = "aborting"
		}
		counts[key{p.Branch.ID.Sink, st}]++
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(branchDesc, prometheus.GaugeValue, float64(n), k.sink, k.state)
	}
}
