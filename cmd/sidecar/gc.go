package main

import (
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// Garbage collector defaults. The record path allocates per call (bodies,
// decoded records, franz-go's batches) over a small live heap, so with
// Go's default GOGC=100 a busy sidecar collects several times a second
// and `make bench` measured about a quarter of its CPU in the collector.
// GOGC=400 cut the sidecar's CPU per Kafka record from ~2.5 µs to ~1.4 µs
// (kafka-tcp-100ms: 0.29× → 0.52× of the direct client) for ~2× the RSS;
// 800 gained nothing more.
//
// The price is a heap up to five times the live one, so in a container
// the soft memory limit follows the container's: by default 85% of the
// cgroup's memory limit, where the runtime collects as often as it must
// instead of growing into an OOM kill. A fixed default would be wrong both
// ways: above a small container's limit it does not prevent the kill, and
// below a big live heap it makes the collector run without pause.
const (
	defaultGCPercent  = 400
	cgroupLimitShare  = 0.85
	minMemoryLimitMiB = 32
)

// cgroupFiles hold the container's memory limit: cgroup v2, then v1.
var cgroupFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// cgroupMemoryLimit returns the container's memory limit in bytes, or 0
// when there is none (no cgroup file, "max", or v1's "unlimited" value).
func cgroupMemoryLimit(files []string) int64 {
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || n <= 0 || n >= 1<<60 {
			return 0 // "max", or v1's page-rounded MaxInt64
		}
		return n
	}
	return 0
}

// tuneGC applies limits.gc_percent and limits.memory_limit_mib (0: 85% of
// the container's memory limit, none outside a container; negative: none),
// unless the operator set GOGC or GOMEMLIMIT in the environment (those
// win, as they do for any Go program). It logs what is in effect.
func tuneGC(cfg Config, log *slog.Logger, cgroup []string) {
	pct := cfg.Limits.GCPercent
	if pct == 0 {
		pct = defaultGCPercent
	}
	limit, from := cfg.Limits.MemoryLimitMiB<<20, "limits.memory_limit_mib"
	if cfg.Limits.MemoryLimitMiB == 0 {
		limit, from = int64(float64(cgroupMemoryLimit(cgroup))*cgroupLimitShare), "85% of the container's memory limit"
	}
	gogcFrom := "GOGC from the environment"
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(pct)
		gogcFrom = "limits.gc_percent"
	}
	switch {
	case os.Getenv("GOMEMLIMIT") != "":
		from = "GOMEMLIMIT from the environment"
	case limit > 0:
		debug.SetMemoryLimit(limit)
	default:
		from = "none"
	}
	cur := debug.SetGCPercent(-1)
	debug.SetGCPercent(cur)
	attrs := []any{"gc_percent", cur, "gc_percent_from", gogcFrom, "memory_limit_from", from}
	if l := debug.SetMemoryLimit(-1); l < 1<<62 { // -1 reads without changing; MaxInt64 means none
		attrs = append(attrs, "memory_limit_mib", l>>20)
	}
	log.Info("garbage collector", attrs...)
}
