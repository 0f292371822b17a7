package api

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/txsink/txsink/twopc"
)

// Problem codes: the stable "code" of every error answer. openapi.yaml lists
// the same set; a client switches on these, never on detail or title.
const (
	CodeInvalidRequest       = "invalid_request"        // 400: a parameter or field has a wrong value
	CodeInvalidName          = "invalid_name"           // 400: a job, writer or sink name breaks the name rule
	CodeMalformedBody        = "malformed_body"         // 400: the body is not the JSON (or NDJSON) expected
	CodeUnknownSink          = "unknown_sink"           // 400: a sink the job does not have
	CodeUnauthorized         = "unauthorized"           // 401: missing or wrong bearer token
	CodeJobNotFound          = "job_not_found"          // 404
	CodeNotFound             = "not_found"              // 404: no such route, or an optional endpoint not configured
	CodeNodeNotFound         = "node_not_found"         // 404: no cluster member has the id
	CodeMethodNotAllowed     = "method_not_allowed"     // 405
	CodeSessionFenced        = "session_fenced"         // 409: a newer session of the writer exists
	CodeSessionLost          = "session_lost"           // 409: the session's open branches are gone (restart)
	CodeNoSession            = "no_session"             // 409
	CodeSeqConflict          = "seq_conflict"           // 409: seq lower than the last one
	CodeCheckpointOrder      = "checkpoint_order"       // 409: checkpoint not above the last one
	CodeModeConflict         = "mode_conflict"          // 409: call not allowed in the job's commit mode
	CodeWriterInDoubt        = "writer_in_doubt"        // 409: the writer has unresolved checkpoints (DELETE)
	CodeMembershipConflict   = "membership_conflict"    // 409: a membership change that would break the cluster (e.g. its last voter)
	CodeBodyTooLarge         = "body_too_large"         // 413: body, records per call or state over the limit
	CodeUnsupportedMediaType = "unsupported_media_type" // 415
	CodeBackpressure         = "backpressure"           // 429: a limit is reached (checkpoints in flight, connections, writers, sessions); detail names it
	CodeInternal             = "internal"               // 500
	CodeRecordRejected       = "record_rejected"        // 422: a sink refused a record for good; fix or skip it
	CodeSinkFailure          = "sink_failure"           // 502: a sink failed; the checkpoint was aborted
	CodeDataLoss             = "data_loss"              // 502: a sink aborted a transaction decided to commit
	CodeUnavailable          = "unavailable"            // 503: no journal leader, not ready, timed out
)

// ProblemTypeBase prefixes a problem's code to form its "type" URI.
const ProblemTypeBase = "urn:txsink:problem:"

// Problem is an RFC 9457 problem details body (application/problem+json).
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Code     string `json:"code"`
	Instance string `json:"instance,omitempty"`
	// Result is an extension member of a data_loss answer: the result the
	// call would have returned (a CheckpointResult or CommitResult), so a
	// client sees which writer, sink and checkpoint lost data.
	Result json.RawMessage `json:"result,omitempty"`
	// Record is the 1-based index in the write call of the record the
	// problem is about (400 invalid_request, 422 record_rejected).
	Record int `json:"record,omitempty"`
	// Owner is an extension member of a 503 unavailable answered by a node
	// that could not pass a session call to the node owning the session:
	// that node's id. Reopen the session on a reachable node (which moves
	// the writer there) instead of retrying the call.
	Owner string `json:"owner,omitempty"`
}

// apiErr is an error answer decided by the API itself.
type apiErr struct {
	Status int
	Code   string
	Detail string
	Result any    // Problem.Result; nil: none
	Record int    // Problem.Record
	Owner  string // Problem.Owner
}

func (e *apiErr) Error() string { return e.Code + ": " + e.Detail }

func badRequest(code, detail string) *apiErr {
	return &apiErr{Status: http.StatusBadRequest, Code: code, Detail: detail}
}

// twopcErrors maps the coordinator's sentinel errors, most specific first
// (an unknown sink error may also wrap ErrInvalid).
var twopcErrors = []struct {
	err    error
	status int
	code   string
}{
	{twopc.ErrDataLoss, http.StatusBadGateway, CodeDataLoss},
	{ErrNodeNotFound, http.StatusNotFound, CodeNodeNotFound},
	{ErrMembershipConflict, http.StatusConflict, CodeMembershipConflict},
	{twopc.ErrSessionFenced, http.StatusConflict, CodeSessionFenced},
	{twopc.ErrSessionLost, http.StatusConflict, CodeSessionLost},
	{twopc.ErrNoSession, http.StatusConflict, CodeNoSession},
	{twopc.ErrSeqConflict, http.StatusConflict, CodeSeqConflict},
	{twopc.ErrCheckpointOrder, http.StatusConflict, CodeCheckpointOrder},
	{twopc.ErrModeConflict, http.StatusConflict, CodeModeConflict},
	{twopc.ErrWriterInDoubt, http.StatusConflict, CodeWriterInDoubt},
	{twopc.ErrBackpressure, http.StatusTooManyRequests, CodeBackpressure},
	{twopc.ErrJobNotFound, http.StatusNotFound, CodeJobNotFound},
	{twopc.ErrUnknownSink, http.StatusBadRequest, CodeUnknownSink},
	{twopc.ErrInvalid, http.StatusBadRequest, CodeInvalidRequest},
	{twopc.ErrRecordRejected, http.StatusUnprocessableEntity, CodeRecordRejected},
	{twopc.ErrSinkFailure, http.StatusBadGateway, CodeSinkFailure},
	{twopc.ErrUnavailable, http.StatusServiceUnavailable, CodeUnavailable},
	{context.DeadlineExceeded, http.StatusServiceUnavailable, CodeUnavailable},
}

// toAPIErr classifies err; anything unknown is 500 internal.
func toAPIErr(err error) *apiErr {
	if e, ok := errors.AsType[*apiErr](err); ok {
		return e
	}
	if e, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return tooLarge(e.Limit)
	}
	for _, m := range twopcErrors {
		if errors.Is(err, m.err) {
			e := &apiErr{Status: m.status, Code: m.code, Detail: err.Error()}
			if re, ok := errors.AsType[*twopc.RecordError](err); ok {
				e.Record = re.Line
			}
			return e
		}
	}
	return &apiErr{Status: http.StatusInternalServerError, Code: CodeInternal, Detail: err.Error()}
}

func tooLarge(limit int64) *apiErr {
	return &apiErr{Status: http.StatusRequestEntityTooLarge, Code: CodeBodyTooLarge,
		Detail: "the request body is larger than " + strconv.FormatInt(limit, 10) + " bytes"}
}

// dataLoss is the answer of a checkpoint or commit call whose result
// reports data loss: 502 data_loss carrying the result. A service that
// reports the status without the error gets the same answer.
func dataLoss(err error, status string, result any) error {
	if err == nil && status == twopc.StatusDataLoss {
		err = twopc.ErrDataLoss
	}
	if !errors.Is(err, twopc.ErrDataLoss) || status != twopc.StatusDataLoss {
		return err
	}
	return &apiErr{Status: http.StatusBadGateway, Code: CodeDataLoss, Detail: err.Error(), Result: result}
}

// fail answers err as a problem.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	e := toAPIErr(err)
	if e.Status >= 500 {
		s.log.Error("api: call failed", "method", r.Method, "path", r.URL.Path, "status", e.Status, "code", e.Code, "err", err)
	} else if s.log.Enabled(r.Context(), slog.LevelDebug) {
		s.log.Debug("api: call refused", "method", r.Method, "path", r.URL.Path, "status", e.Status, "code", e.Code, "err", err)
	}
	s.problem(w, r, e)
}

func (s *Server) problem(w http.ResponseWriter, r *http.Request, e *apiErr) {
	p := Problem{
		Type:     ProblemTypeBase + e.Code,
		Title:    http.StatusText(e.Status),
		Status:   e.Status,
		Detail:   e.Detail,
		Code:     e.Code,
		Instance: r.URL.Path,
		Record:   e.Record,
		Owner:    e.Owner,
	}
	if e.Result != nil {
		rb, err := json.Marshal(e.Result)
		if err != nil {
			s.log.Error("api: encoding a problem's result", "err", err)
		} else {
			p.Result = rb
		}
	}
	b, _ := json.Marshal(p) // cannot fail: strings, an int and valid JSON
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Content-Length", strconv.Itoa(len(b)+1))
	switch e.Status {
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		h.Set("Retry-After", "1")
	}
	w.WriteHeader(e.Status)
	w.Write(append(b, '\n'))
}

// reply answers v as JSON with status.
func (s *Server) reply(w http.ResponseWriter, r *http.Request, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
