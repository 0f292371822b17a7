package main

import (
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/txsink/txsink/twopc"
)

// clientCounter is a sink that caches clients (the Kafka sink's slots).
type clientCounter interface{ CachedClients() int }

// txnTimer is a sink whose transactions the broker aborts after a timeout
// (the Kafka sink). The gauge lets a dashboard or an alert compare
// txsink_oldest_prepared_branch_seconds with it.
type txnTimer interface{ TransactionTimeout() time.Duration }

// registerResourceGauges exposes what the configured limits bound: sessions
// held, writers still waiting for their start-up fence, and the Kafka
// sinks' cached slot clients and transaction timeouts. It also tells the
// branch collector which sinks to report at 0.
func (x *metrics) registerResourceGauges(c *twopc.Coordinator, sinks map[string]twopc.Sink) {
	x.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "txsink_sessions",
		Help: "Sessions held in memory on this node (bounded by limits.max_sessions; idle ones are forgotten)."},
		func() float64 { return float64(c.Sessions()) }))
	x.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "txsink_unfenced_writers",
		Help: "Writers whose start-up fence has not succeeded yet (fenced in the background after start)."},
		func() float64 { return float64(c.Unfenced()) }))
	names := make([]string, 0, len(sinks))
	for name := range sinks {
		names = append(names, name)
	}
	sort.Strings(names)
	x.branches.sinks.Store(&names)
	for name, s := range sinks {
		if cc, ok := s.(clientCounter); ok {
			x.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "txsink_kafka_slot_clients",
				Help:        "Cached transactional clients of a Kafka sink (free ones close after idle_client_timeout).",
				ConstLabels: prometheus.Labels{"sink": name}},
				func() float64 { return float64(cc.CachedClients()) }))
		}
		if tt, ok := s.(txnTimer); ok {
			x.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "txsink_kafka_transaction_timeout_seconds",
				Help:        "The transaction timeout in effect for a Kafka sink: a prepared branch older than this is aborted by the broker.",
				ConstLabels: prometheus.Labels{"sink": name}},
				func() float64 { return tt.TransactionTimeout().Seconds() }))
		}
	}
}
