package twopc

import (
	"errors"
	"fmt"
)

// errorCodes gives each sentinel error a stable code: the one home for the
// rule that turns a journal result into data that crosses a network (a
// follower forwards a command to the leader and gets an ApplyResult back)
// and back into an error callers test with errors.Is. The codes match the
// API's problem codes. Most specific first: an error wrapping two sentinels
// (an unknown sink error may also wrap ErrInvalid) gets the first's code.
var errorCodes = []struct {
	err  error
	code string
}{
	{ErrDataLoss, "data_loss"},
	{ErrSessionFenced, "session_fenced"},
	{ErrSessionLost, "session_lost"},
	{ErrNoSession, "no_session"},
	{ErrSeqConflict, "seq_conflict"},
	{ErrCheckpointOrder, "checkpoint_order"},
	{ErrModeConflict, "mode_conflict"},
	{ErrWriterInDoubt, "writer_in_doubt"},
	{ErrBackpressure, "backpressure"},
	{ErrJobNotFound, "job_not_found"},
	{ErrUnknownSink, "unknown_sink"},
	{ErrInvalid, "invalid_request"},
	{ErrRecordRejected, "record_rejected"},
	{ErrSinkFailure, "sink_failure"},
	{ErrUnavailable, "unavailable"},
}

// CodeInternal is the code of an error that wraps none of the sentinels.
const CodeInternal = "internal"

// ErrorCode returns the stable code of err: "" for nil, the code of the
// first sentinel err wraps, or CodeInternal.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return CodeInternal
}

// CodeError turns a code and message (from ErrorCode and err.Error()) back
// into an error: its text is msg and it wraps the code's sentinel, so
// errors.Is works as on the original. It returns nil for code "". An
// unknown code (say, from a newer node) wraps no sentinel.
func CodeError(code, msg string) error {
	if code == "" {
		return nil
	}
	for _, c := range errorCodes {
		if c.code == code {
			return &codedError{msg: msg, err: c.err}
		}
	}
	return &codedError{msg: fmt.Sprintf("twopc: error code %q: %s", code, msg)}
}

// codedError is an error rebuilt from its code: the original text, and the
// sentinel it wrapped.
type codedError struct {
	msg string
	err error
}

func (e *codedError) Error() string { return e.msg }
func (e *codedError) Unwrap() error { return e.err }
