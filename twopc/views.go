package twopc

import "time"

// The types in this file are what the coordinator returns to the API; their
// JSON form is the HTTP API's (api/openapi.yaml describes them).

// JobSpec is the body of PUT /v1/jobs/{job}.
type JobSpec struct {
	Name   string   `json:"name"`
	Commit Mode     `json:"commit"`
	Sinks  []string `json:"sinks"`
	// Guarantee is journaled with the spec; "" (entries written before
	// the field existed) means exactly_once.
	Guarantee Guarantee `json:"guarantee,omitempty"`
}

// JobInfo describes a job and its writers.
type JobInfo struct {
	Name   string   `json:"name"`
	Commit Mode     `json:"commit"`
	Sinks  []string `json:"sinks"`
	// Guarantee is always named ("" is answered as exactly_once).
	Guarantee Guarantee    `json:"guarantee"`
	Writers   []WriterInfo `json:"writers"`
}

// WriterInfo describes one writer of a job.
type WriterInfo struct {
	Name  string `json:"name"`
	Epoch uint64 `json:"epoch"`
	// Owner is the node that holds the writer's current session.
	Owner string `json:"owner"`
	// LastCommitted is the last checkpoint decided to commit (0: none).
	LastCommitted int64 `json:"last_committed"`
	// InDoubt lists checkpoints prepared and not yet decided or not yet
	// finished in every sink.
	InDoubt []int64 `json:"in_doubt"`
}

// SessionInfo is the result of opening a session.
type SessionInfo struct {
	Epoch uint64 `json:"epoch"`
	// Checkpoint is the restored checkpoint (0: nothing to restore).
	Checkpoint int64 `json:"checkpoint"`
	// State is that checkpoint's state; nil when Checkpoint is 0.
	State []byte `json:"state"`
	// Status is the restored checkpoint's status after the open finished
	// what it could: StatusNone (nothing restored), StatusCommitted,
	// StatusCommitting (decided; some sink has not confirmed yet, the
	// sidecar retries) or StatusDataLoss (a sink had aborted it).
	Status string `json:"status"`
	// DataLoss lists the writer's checkpoints that ended in data_loss: the
	// restored one, and any the open decided or finished. Empty when none.
	DataLoss []int64 `json:"data_loss"`
}

// Seq identifies a write call for retries: N is the call's per-session
// number, Digest a hash of its body. A repeat of the last N with the same
// Digest is a duplicate; with another Digest it is a conflict.
type Seq struct {
	N      int64
	Digest uint64
}

// WriteResult is the result of appending records.
type WriteResult struct {
	Accepted  int   `json:"accepted"`
	Seq       int64 `json:"seq,omitempty"`
	Duplicate bool  `json:"duplicate,omitempty"`
}

// Wait says how long a checkpoint call waits.
type Wait string

const (
	WaitCommitted Wait = "committed" // default: until every branch committed (auto mode)
	WaitPrepared  Wait = "prepared"  // until the PREPARED entry is durable
)

// Checkpoint and branch statuses as the API reports them.
const (
	StatusOpen       = "open"
	StatusPrepared   = "prepared"   // journaled, no decision (external mode)
	StatusCommitting = "committing" // decided commit, not yet confirmed by every sink
	StatusAborting   = "aborting"   // decided abort, not yet confirmed
	StatusCommitted  = "committed"
	StatusAborted    = "aborted"
	StatusDataLoss   = "data_loss" // decided commit, the sink had aborted it
	StatusNone       = "none"      // session open: nothing was restored
)

// CheckpointResult is the result of a checkpoint call.
type CheckpointResult struct {
	Checkpoint int64        `json:"checkpoint"`
	Status     string       `json:"status"`
	Branches   []BranchInfo `json:"branches"`
	// Guarantee is set (at_least_once, none) when the job is not
	// exactly_once, so that "committed" is read for what it means there:
	// at_least_once, the records were durable in every sink before the
	// state was journaled; none, only the state is journaled.
	Guarantee Guarantee `json:"guarantee,omitempty"`
}

// BranchInfo describes one branch of a checkpoint.
type BranchInfo struct {
	Sink   string `json:"sink"`
	Slot   int    `json:"slot"`
	Status string `json:"status"`
	Handle Handle `json:"handle,omitempty"`
}

// CommitResult is the result of an external commit or abort of checkpoint n.
type CommitResult struct {
	Checkpoint int64  `json:"checkpoint"`
	Status     string `json:"status"`
	// Writers lists, per writer, the checkpoints this call decided.
	Writers map[string][]int64 `json:"writers"`
	// DataLoss lists, per writer, the checkpoints in the call's scope that
	// ended in data_loss (then Status is StatusDataLoss); nil when none.
	DataLoss map[string][]int64 `json:"data_loss,omitempty"`
}

// CheckpointInfo describes one unresolved or recent checkpoint of a writer.
type CheckpointInfo struct {
	Writer     string       `json:"writer"`
	Checkpoint int64        `json:"checkpoint"`
	Epoch      uint64       `json:"epoch"`
	Status     string       `json:"status"`
	PreparedAt time.Time    `json:"prepared_at"`
	AgeSeconds float64      `json:"age_seconds"`
	Branches   []BranchInfo `json:"branches"`
}
