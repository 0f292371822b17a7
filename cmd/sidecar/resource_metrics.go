package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/txsink/txsink/twopc"
)

// clientCounter is a sink that caches clients (the Kafka sink's slots).
type clientCounter interface{ CachedClients() int }

// registerResourceGauges exposes what the configured limits bound: sessions
// held, writers still waiting for their start-up fence, and the Kafka
// sinks' cached slot clients.
func (x *metrics) registerResourceGauges(c *twopc.Coordinator, sinks map[string]twopc.Sink) {
	x.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "txsink_sessions",
		Help: "Sessions held in memory on this node (bounded by limits.max_sessions; idle ones are forgotten)."},
		func() float64 { return float64(c.Sessions()) }))
	x.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "txsink_unfenced_writers",
		Help: "Writers whose start-up fence has not succeeded yet (fenced in the background after start)."},
		func() float64 { return float64(c.Unfenced()) }))
	for name, s := range sinks {
		if cc, ok := s.(clientCounter); ok {
			x.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "txsink_kafka_slot_clients",
				Help:        "Cached transactional clients of a Kafka sink (free ones close after idle_client_timeout).",
				ConstLabels: prometheus.Labels{"sink": name}},
				func() float64 { return float64(cc.CachedClients()) }))
		}
	}
}
