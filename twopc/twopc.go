// Package twopc is txsink's protocol: the types of jobs, sessions, checkpoints
// and branches, the deterministic journal state machine (Machine), and the
// Coordinator that drives sinks through two-phase commit.
//
// It imports only the standard library. Sinks (sinks/kafka, sinks/mysql)
// implement Sink; the replicated log (raftlog) carries Machine's commands and
// is connected to it by cmd/sidecar through the Journal interface.
//
// See DESIGN.md in this folder for the invariants and the state diagram.
package twopc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
)

// Errors returned by the coordinator and the machine. The API maps each to an
// HTTP status and a stable problem code; sinks wrap driver errors with
// ErrSinkFailure or ErrDataLoss where they enter our code.
var (
	ErrInvalid         = errors.New("twopc: invalid request")                   // 400 invalid_request
	ErrJobNotFound     = errors.New("twopc: job not found")                     // 404 job_not_found
	ErrUnknownSink     = errors.New("twopc: unknown sink")                      // 400 unknown_sink
	ErrSessionFenced   = errors.New("twopc: session fenced")                    // 409 session_fenced
	ErrSessionLost     = errors.New("twopc: session lost")                      // 409 session_lost
	ErrNoSession       = errors.New("twopc: no session open")                   // 409 no_session
	ErrSeqConflict     = errors.New("twopc: seq conflict")                      // 409 seq_conflict
	ErrCheckpointOrder = errors.New("twopc: checkpoint out of order")           // 409 checkpoint_order
	ErrModeConflict    = errors.New("twopc: wrong commit mode")                 // 409 mode_conflict
	ErrWriterInDoubt   = errors.New("twopc: writer has unresolved checkpoints") // 409 writer_in_doubt
	ErrBackpressure    = errors.New("twopc: backpressure")                      // 429 backpressure: a limit is reached (named in the message)
	ErrSinkFailure     = errors.New("twopc: sink failure")                      // 502 sink_failure
	ErrUnavailable     = errors.New("twopc: journal unavailable")               // 503 unavailable
	// ErrDataLoss means a sink had already aborted a transaction the journal
	// decided to commit (e.g. Kafka's transaction timeout expired). It is
	// reported loudly: error log, metric, checkpoint status "data_loss".
	ErrDataLoss = errors.New("twopc: data loss: sink aborted a decided transaction")
	// ErrRecordRejected means a sink refused a record for a reason that
	// does not go away on a retry (duplicate key, value out of range or
	// too long, message over the broker's limit, ...). The app must fix
	// or skip the record; replaying it would fail again.
	ErrRecordRejected = errors.New("twopc: record rejected") // 422 record_rejected
)

// RecordError names the record of a write call that an error is about.
// Line is its 1-based index in the call (in the body: its NDJSON line or
// array element). It unwraps to Err, which wraps ErrInvalid (400) or
// ErrRecordRejected (422).
type RecordError struct {
	Line int
	Err  error
}

func (e *RecordError) Error() string { return fmt.Sprintf("record %d: %v", e.Line, e.Err) }

// Unwrap returns Err.
func (e *RecordError) Unwrap() error { return e.Err }

// nameRe is the rule for job, writer and sink names (docs/DESIGN.md §3).
var nameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidName reports whether s is a valid job, writer or sink name.
func ValidName(s string) bool { return nameRe.MatchString(s) }

// CheckName returns an ErrInvalid error naming what is wrong with s.
func CheckName(kind, s string) error {
	if !ValidName(s) {
		return fmt.Errorf("%w: %s name %q must match %s", ErrInvalid, kind, s, nameRe)
	}
	return nil
}

// Mode is a job's commit mode.
type Mode string

const (
	// ModeAuto: a writer's checkpoint commits as soon as all its branches
	// are prepared; PREPARED and DECIDED(commit) are one journal entry.
	ModeAuto Mode = "auto"
	// ModeExternal: the application's coordinator commits checkpoint n of
	// the whole job with one call.
	ModeExternal Mode = "external"
)

// Valid reports whether m is a known mode.
func (m Mode) Valid() bool { return m == ModeAuto || m == ModeExternal }

// Guarantee is a job's delivery guarantee: what a checkpoint promises about
// the records written before it (twopc/DESIGN.md "Delivery guarantees").
type Guarantee string

const (
	// GuaranteeExactlyOnce (the default): a checkpoint commits every
	// sink's transaction atomically with the state (two-phase commit).
	GuaranteeExactlyOnce Guarantee = "exactly_once"
	// GuaranteeAtLeastOnce: the checkpoint flushes every sink (Kafka
	// idempotent producer acked; MySQL plain COMMIT) and journals the state
	// only after that, so a crash replays and may duplicate, never lose.
	GuaranteeAtLeastOnce Guarantee = "at_least_once"
	// GuaranteeNone: writes are handed to the sinks without waiting;
	// failures are logged and counted; the checkpoint journals at once.
	GuaranteeNone Guarantee = "none"
)

// Valid reports whether g is a known guarantee ("" is not; see Norm).
func (g Guarantee) Valid() bool {
	return g == GuaranteeExactlyOnce || g == GuaranteeAtLeastOnce || g == GuaranteeNone
}

// Norm maps "" (a request that names none, or a job journaled before the
// field existed) to GuaranteeExactlyOnce.
func (g Guarantee) Norm() Guarantee {
	if g == "" {
		return GuaranteeExactlyOnce
	}
	return g
}

// Direct reports whether a job with guarantee g writes through direct
// (non-transactional) branches: at_least_once and none.
func (g Guarantee) Direct() bool { return g.Norm() != GuaranteeExactlyOnce }

// MaxStateBytes bounds a checkpoint's opaque state.
const MaxStateBytes = 1 << 20

// MaxCheckpoint is the largest checkpoint number, 2^53-1: JavaScript's
// Number.MAX_SAFE_INTEGER, so that a client whose JSON numbers are doubles
// holds every checkpoint exactly. It leaves room for millisecond timestamps
// as checkpoint numbers. A cap below 2^63-1 also keeps a writer from being
// stuck for ever by one huge number: the next checkpoint must be greater.
const MaxCheckpoint int64 = 1<<53 - 1

// CheckCheckpoint returns an ErrInvalid error unless 1 ≤ n ≤ MaxCheckpoint.
func CheckCheckpoint(n int64) error {
	if n <= 0 || n > MaxCheckpoint {
		return fmt.Errorf("%w: checkpoint must be an integer from 1 to %d, got %d", ErrInvalid, MaxCheckpoint, n)
	}
	return nil
}

// Record is one record as the application sent it. The sink named by Sink
// interprets the fields of its kind and rejects the others in Validate:
// Kafka uses Topic, Key/Value (or KeyB64/ValueB64), Headers and Partition;
// MySQL uses Stmt and Args.
type Record struct {
	Sink string `json:"sink"`

	Topic     string            `json:"topic,omitempty"`
	Key       json.RawMessage   `json:"key,omitempty"`
	Value     json.RawMessage   `json:"value,omitempty"`
	KeyB64    []byte            `json:"key_b64,omitempty"`
	ValueB64  []byte            `json:"value_b64,omitempty"`
	Headers   map[string]string `json:"headers,omitempty"`
	Partition *int32            `json:"partition,omitempty"`

	Stmt string            `json:"stmt,omitempty"`
	Args []json.RawMessage `json:"args,omitempty"`

	// JSONChecked says that Key, Value and every Args element are
	// well-formed JSON, checked by whoever made the record (the API's body
	// decoders, which check every value they copy), so a sink need not
	// scan them again. False means nothing is known: a sink checks. Never
	// sent or journaled.
	JSONChecked bool `json:"-"`
	// KeyPlain (ValuePlain) says that Key (Value) is exactly a JSON string,
	// quotes included and no space around, whose content is its own
	// decoding: no escape, no control character, valid UTF-8. So the
	// bytes between the quotes are the string, and a sink that wants them
	// need not scan them again. Set only by the API's fast decoder, which
	// checked it while copying the value; false means nothing is known.
	// Never sent or journaled.
	KeyPlain, ValuePlain bool `json:"-"`
}

// BranchID names one branch: the transaction of one writer in one sink for
// the records between two checkpoints. (Epoch, Seq) is unique per writer for
// all time because epochs strictly increase and Seq counts branches within a
// session; Slot is chosen by the coordinator below the sink's MaxInflight and
// is never held by two unresolved branches of the same writer and sink.
type BranchID struct {
	Job    string `json:"job"`
	Writer string `json:"writer"`
	Sink   string `json:"sink"`
	Epoch  uint64 `json:"epoch"`
	Seq    uint64 `json:"seq"`
	Slot   int    `json:"slot"`
	// After is the writer's last checkpoint when the branch began; the
	// checkpoint that will prepare it is not known yet then.
	After int64 `json:"after"`
}

func (b BranchID) String() string {
	return fmt.Sprintf("%s/%s/%s@%d.%d(slot %d)", b.Job, b.Writer, b.Sink, b.Epoch, b.Seq, b.Slot)
}

// Handle is what a sink needs to finish a prepared branch from any process:
// sink-specific JSON, journaled with the PREPARED entry.
type Handle = json.RawMessage

// Sink is one destination (a Kafka cluster, a MySQL database).
//
// Commit and abort are idempotent: finishing an already finished branch the
// same way is not an error. A commit that finds the branch already aborted by
// the sink returns an error wrapping ErrDataLoss.
type Sink interface {
	// Name is the sink's configured name.
	Name() string
	// MaxInflight bounds the unresolved (open or prepared) branches of one
	// writer in this sink; slots are 0..MaxInflight-1.
	MaxInflight() int
	// Validate checks one record on the request path, before anything is
	// written, and may normalise it (e.g. fill in the default topic). An
	// invalid record is an error wrapping ErrInvalid.
	Validate(r *Record) error
	// Begin opens a branch. No I/O is required before the first Write.
	Begin(ctx context.Context, id BranchID) (Branch, error)
	// Resolve commits (commit=true) or aborts a prepared branch from its
	// journaled handle, possibly in another process than the one that
	// prepared it (recovery path).
	Resolve(ctx context.Context, id BranchID, h Handle, commit bool) error
	// Fence aborts every transaction of this writer in the sink that is not
	// one of the keep branches (prepared and journaled, still in doubt or
	// decided): lingering open transactions of a dead session, and branches
	// prepared in the sink whose PREPARED entry never reached the journal.
	// It must never abort a kept branch. Called at start-up and when a
	// session is opened, after decided branches were resolved.
	Fence(ctx context.Context, job, writer string, keep []BranchID) error
}

// Branch is one open transaction in a sink, owned by one session.
// Calls on a branch are serialised by the coordinator.
type Branch interface {
	// Write appends validated records to the open transaction. A record
	// the sink refuses deterministically is a *RecordError (Line indexes
	// recs) wrapping ErrRecordRejected; the branch must then be as it was
	// before the call, so the session goes on without the record. A sink
	// that cannot undo the call's earlier records also wraps
	// ErrSinkFailure, and the coordinator fails the session.
	Write(ctx context.Context, recs []*Record) error
	// Prepare makes the branch durable and returns its handle
	// (Kafka: flush and check every produce; MySQL: XA END + XA PREPARE).
	Prepare(ctx context.Context) (Handle, error)
	// Commit commits a prepared branch on its own connection (normal path).
	Commit(ctx context.Context) error
	// Abort rolls back an open or prepared branch and releases it.
	Abort(ctx context.Context) error
}

// Detacher is implemented by branches that can let go of a prepared
// branch without ending it: the process keeps no connection or client for
// it any more, and whoever owns the writer finishes it from its handle. The
// coordinator detaches the prepared branches it holds for a writer that
// moved to another node.
type Detacher interface {
	Detach()
}

// Journal replicates commands for Machine. cmd/sidecar adapts raftlog to it;
// twopctest has an in-memory one.
type Journal interface {
	// Propose makes cmd durable, applies it to the Machine and returns what
	// Machine.Apply returned: plain data, so a journal may as well get it
	// from another node. A domain error is in the result (its Code), not
	// in the error. An error means it is unknown whether cmd was applied
	// (e.g. no leader); keep its cause reachable for errors.As.
	Propose(ctx context.Context, cmd []byte) (ApplyResult, error)
}
