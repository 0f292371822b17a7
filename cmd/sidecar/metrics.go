package main

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/txsink/txsink/raftlog"
	"github.com/txsink/txsink/twopc"
)

// metrics implements twopc.Metrics with Prometheus (txsink_ prefix).
type metrics struct {
	records  *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	phase    *prometheus.HistogramVec
	retries  *prometheus.CounterVec
	dataLoss *prometheus.CounterVec
	reg      *prometheus.Registry
}

func newMetrics(m *twopc.Machine, node *raftlog.Node) *metrics {
	x := &metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "txsink_records_total",
			Help: "Records accepted into open branches."}, []string{"job", "sink"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "txsink_record_bytes_total",
			Help: "Key and value bytes of accepted records."}, []string{"job", "sink"}),
		phase: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "txsink_checkpoint_phase_seconds",
			Help:    "Duration of checkpoint phases: prepare (all sinks), journal (Raft entry), commit (all sinks).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"job", "phase"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "txsink_commit_retries_total",
			Help: "Commits or aborts of decided branches that failed and will be retried."}, []string{"sink"}),
		dataLoss: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "txsink_data_loss_total",
			Help: "Decided commits the sink had already aborted (e.g. Kafka transaction timeout). Alert on any."}, []string{"job", "sink"}),
		reg: prometheus.NewRegistry(),
	}
	x.reg.MustRegister(x.records, x.bytes, x.phase, x.retries, x.dataLoss,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	x.reg.MustRegister(&branchCollector{m: m})
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
	}
	return x
}

func (x *metrics) Records(job, sink string, n, bytes int) {
	x.records.WithLabelValues(job, sink).Add(float64(n))
	x.bytes.WithLabelValues(job, sink).Add(float64(bytes))
}
func (x *metrics) CheckpointDone(job, phase string, d time.Duration) {
	x.phase.WithLabelValues(job, phase).Observe(d.Seconds())
}
func (x *metrics) CommitRetry(sink string)   { x.retries.WithLabelValues(sink).Inc() }
func (x *metrics) DataLoss(job, sink string) { x.dataLoss.WithLabelValues(job, sink).Inc() }

// branchCollector reports unresolved branches by state at scrape time.
type branchCollector struct{ m *twopc.Machine }

var branchDesc = prometheus.NewDesc("txsink_branches", "Unresolved journaled branches by state (in_doubt: prepared, undecided).",
	[]string{"sink", "state"}, nil)

func (b *branchCollector) Describe(ch chan<- *prometheus.Desc) { ch <- branchDesc }
func (b *branchCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct{ sink, state string }
	counts := map[key]int{}
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
