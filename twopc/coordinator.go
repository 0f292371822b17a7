package twopc

import (
	"context"
	"log/slog"
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
}

// Metrics is what the coordinator reports; cmd/sidecar backs it with
// Prometheus. Every method must be cheap and safe for concurrent use.
type Metrics interface {
	Records(job, sink string, n int, bytes int)
	CheckpointDone(job, phase string, d time.Duration) // phase: prepare, journal, commit
	CommitRetry(sink string)
	DataLoss(job, sink string)
}

// The methods below are the coordinator's surface used by the API.
//
//	PutJob(ctx, JobSpec) (JobInfo, error)
//	Jobs() []JobInfo
//	Job(name string) (JobInfo, error)
//	OpenSession(ctx, job, writer string, restore *int64) (SessionInfo, error)
//	Write(ctx, job, writer string, epoch uint64, seq *int64, recs []*Record) (WriteResult, error)
//	Checkpoint(ctx, job, writer string, epoch uint64, n int64, state []byte, wait Wait) (CheckpointResult, error)
//	Commit(ctx, job string, n int64) (CommitResult, error)
//	Abort(ctx, job string, n int64) (CommitResult, error)
//	Checkpoints(job string) ([]CheckpointInfo, error)
//	ValidateRecords(job string, recs []*Record) error
//	Start(ctx) error   // start-up recovery, then the recovery loop until ctx ends
//	Close()            // stop taking writes, abort open branches
var _ = context.Background
