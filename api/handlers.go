package api

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"net/http"
	"strconv"
	"time"

	"github.com/txsink/txsink/twopc"
)

// bodySeed hashes record bodies for the seq check; digests are compared
// only within this process.
var bodySeed = maphash.MakeSeed()

// smallBodyBytes bounds the bodies that are not records: a checkpoint's
// base64 state, its offsets (twopc.MaxOffsetPartitions, with room for long
// topic names) and room for the rest.
const smallBodyBytes = twopc.MaxStateBytes*4/3 + offsetsBodyBytes + 4<<10

// offsetsBodyBytes is the room for a checkpoint's offsets: 10,000
// partitions of about 40 bytes each ("2147483647":9223372036854775807,)
// fit with room for topic names.
const offsetsBodyBytes = 1 << 20

func (s *Server) routes() {
	h := func(pattern string, fn func(http.ResponseWriter, *http.Request) error) {
		s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			if err := fn(w, r); err != nil {
				s.fail(w, r, err)
			}
		})
	}
	h("PUT /v1/jobs/{job}", s.putJob)
	h("GET /v1/jobs", s.jobs)
	h("GET /v1/jobs/{job}", s.job)
	h("POST /v1/jobs/{job}/writers/{writer}/session", s.openSession)
	h("DELETE /v1/jobs/{job}/writers/{writer}", s.deleteWriter)
	// The session calls: passed to the node owning the session when that
	// is another node (proxy.go). The session open never is.
	h("POST /v1/jobs/{job}/writers/{writer}/records", s.owned(s.cfg.WriteTimeout, s.write))
	h("POST /v1/jobs/{job}/writers/{writer}/checkpoints/{n}", s.owned(s.cfg.CheckpointTimeout, s.checkpoint))
	h("POST /v1/jobs/{job}/checkpoints/{n}/commit", s.commit)
	h("POST /v1/jobs/{job}/checkpoints/{n}/abort", s.abort)
	h("GET /v1/jobs/{job}/checkpoints", s.checkpoints)
	h("GET /v1/cluster", s.cluster)
	h("POST /v1/cluster/join", s.join)
	h("DELETE /v1/cluster/nodes/{id}", s.removeNode)
	h("POST /v1/cluster/propose", s.propose)
	h("GET /healthz", s.healthz)
	h("GET /readyz", s.readyz)
	h("GET /metrics", s.metrics)
	// The status page (ui.go); GET also answers HEAD.
	h("GET /ui", s.ui)
	h("GET /ui/{$}", s.ui)
	h("GET /ui/app.js", s.ui)
	h("GET /ui/app.css", s.ui)
}

// JobList is the body of GET /v1/jobs.
type JobList struct {
	Jobs []twopc.JobInfo `json:"jobs"`
}

// CheckpointList is the body of GET /v1/jobs/{job}/checkpoints.
type CheckpointList struct {
	Checkpoints []twopc.CheckpointInfo `json:"checkpoints"`
}

// JobRequest is the body of PUT /v1/jobs/{job}; every field is optional.
type JobRequest struct {
	// Commit is the commit mode ("": auto).
	Commit twopc.Mode `json:"commit,omitempty"`
	// Sinks the job may write (empty: all).
	Sinks []string `json:"sinks,omitempty"`
	// Guarantee is the delivery guarantee ("": exactly_once). It cannot
	// change once the job exists; a guarantee other than exactly_once
	// needs commit mode auto.
	Guarantee twopc.Guarantee `json:"guarantee,omitempty"`
}

// SessionRequest is the optional body of the session call.
type SessionRequest struct {
	// Restore is the checkpoint the application restored (external mode).
	Restore *int64 `json:"restore,omitempty"`
}

// CheckpointRequest is the optional body of the checkpoint call.
type CheckpointRequest struct {
	// State is stored with the checkpoint (base64 in JSON, ≤ MaxStateBytes).
	State []byte `json:"state,omitempty"`
	// Wait is committed (default) or prepared.
	Wait twopc.Wait `json:"wait,omitempty"`
	// Offsets, when set, are consumer-group offsets committed in the named
	// Kafka sink's transaction of this checkpoint (twopc.Offsets).
	Offsets *twopc.Offsets `json:"offsets,omitempty"`
}

// Health is the body of /healthz and of a ready /readyz.
type Health struct {
	Status string `json:"status"`
}

func pathName(r *http.Request, kind string) (string, error) {
	v := r.PathValue(kind)
	if err := twopc.CheckName(kind, v); err != nil {
		return "", badRequest(CodeInvalidName, fmt.Sprintf("%s name %q must be 1-64 of A-Z a-z 0-9 . _ - and start with a letter or digit", kind, v))
	}
	return v, nil
}

func pathCheckpoint(r *http.Request) (int64, error) {
	v := r.PathValue("n")
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, badRequest(CodeInvalidRequest, fmt.Sprintf("checkpoint %q must be a positive integer", v))
	}
	return n, nil
}

// sessionCall parses what every session-scoped call names: the job and
// writer in the path and the epoch in the query.
func sessionCall(r *http.Request) (job, writer string, epoch uint64, err error) {
	if job, writer, err = writerPath(r); err != nil {
		return
	}
	epoch, err = queryEpoch(r)
	return
}

// writerPath parses the job and writer names in the path.
func writerPath(r *http.Request) (job, writer string, err error) {
	if job, err = pathName(r, "job"); err != nil {
		return
	}
	writer, err = pathName(r, "writer")
	return
}

func queryEpoch(r *http.Request) (uint64, error) {
	q := r.URL.Query()
	if !q.Has("epoch") {
		return 0, badRequest(CodeInvalidRequest, "the query parameter epoch (the session's epoch) is required")
	}
	v := q.Get("epoch")
	e, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, badRequest(CodeInvalidRequest, fmt.Sprintf("epoch %q must be an unsigned integer", v))
	}
	return e, nil
}

func querySeq(r *http.Request) (*int64, error) {
	q := r.URL.Query()
	if !q.Has("seq") {
		return nil, nil
	}
	v := q.Get("seq")
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return nil, badRequest(CodeInvalidRequest, fmt.Sprintf("seq %q must be a non-negative integer", v))
	}
	return &n, nil
}

func (s *Server) putJob(w http.ResponseWriter, r *http.Request) error {
	job, err := pathName(r, "job")
	if err != nil {
		return err
	}
	var req JobRequest
	if _, err := decodeJSONBody(w, r, smallBodyBytes, &req); err != nil {
		return err
	}
	if req.Commit == "" {
		req.Commit = twopc.ModeAuto
	}
	if !req.Commit.Valid() {
		return badRequest(CodeInvalidRequest, fmt.Sprintf("commit mode %q must be %q or %q", req.Commit, twopc.ModeAuto, twopc.ModeExternal))
	}
	req.Guarantee = req.Guarantee.Norm()
	if !req.Guarantee.Valid() {
		return badRequest(CodeInvalidRequest, fmt.Sprintf("guarantee %q must be %q, %q or %q", req.Guarantee,
			twopc.GuaranteeExactlyOnce, twopc.GuaranteeAtLeastOnce, twopc.GuaranteeNone))
	}
	if req.Guarantee.Direct() && req.Commit != twopc.ModeAuto {
		return badRequest(CodeInvalidRequest, fmt.Sprintf("guarantee %q needs commit mode %q: external commit decides prepared transactions, and a %s job has none",
			req.Guarantee, twopc.ModeAuto, req.Guarantee))
	}
	for _, sink := range req.Sinks {
		if !twopc.ValidName(sink) {
			return badRequest(CodeInvalidName, fmt.Sprintf("sink name %q must be 1-64 of A-Z a-z 0-9 . _ - and start with a letter or digit", sink))
		}
	}
	info, err := s.svc.PutJob(r.Context(), twopc.JobSpec{Name: job, Commit: req.Commit, Sinks: req.Sinks, Guarantee: req.Guarantee})
	if err != nil {
		return err
	}
	s.reply(w, r, http.StatusOK, normJob(info))
	return nil
}

func (s *Server) jobs(w http.ResponseWriter, r *http.Request) error {
	jobs := s.svc.Jobs()
	out := make([]twopc.JobInfo, len(jobs))
	for i, j := range jobs {
		out[i] = normJob(j)
	}
	s.reply(w, r, http.StatusOK, JobList{Jobs: out})
	return nil
}

func (s *Server) job(w http.ResponseWriter, r *http.Request) error {
	job, err := pathName(r, "job")
	if err != nil {
		return err
	}
	info, err := s.svc.Job(job)
	if err != nil {
		return err
	}
	s.reply(w, r, http.StatusOK, normJob(info))
	return nil
}

func (s *Server) openSession(w http.ResponseWriter, r *http.Request) error {
	job, writer, err := writerPath(r)
	if err != nil {
		return err
	}
	var req SessionRequest
	if _, err := decodeJSONBody(w, r, smallBodyBytes, &req); err != nil {
		return err
	}
	if req.Restore != nil && *req.Restore < 0 {
		return badRequest(CodeInvalidRequest, fmt.Sprintf("restore %d must not be negative", *req.Restore))
	}
	info, err := s.svc.OpenSession(r.Context(), job, writer, req.Restore)
	if err != nil {
		return err
	}
	if info.DataLoss == nil {
		info.DataLoss = []int64{}
	}
	s.reply(w, r, http.StatusOK, info)
	return nil
}

// WriterDeleted is the body of DELETE /v1/jobs/{job}/writers/{writer}.
type WriterDeleted struct {
	Job    string `json:"job"`
	Writer string `json:"writer"`
	// Deleted is false when the writer did not exist (nothing changed).
	Deleted bool `json:"deleted"`
}

func (s *Server) deleteWriter(w http.ResponseWriter, r *http.Request) error {
	job, writer, err := writerPath(r)
	if err != nil {
		return err
	}
	deleted, err := s.svc.DeleteWriter(r.Context(), job, writer)
	if err != nil {
		return err
	}
	s.reply(w, r, http.StatusOK, WriterDeleted{Job: job, Writer: writer, Deleted: deleted})
	return nil
}

// write is the hot path: read the body once into a pooled buffer, decode
// every record into one slab (NDJSON, a JSON array or BinaryRecordsType),
// hand them to the service.
func (s *Server) write(w http.ResponseWriter, r *http.Request) error {
	job, writer, epoch, err := sessionCall(r)
	if err != nil {
		return err
	}
	seq, err := querySeq(r)
	if err != nil {
		return err
	}
	mt := mediaType(r)
	if !isRecordsType(mt) {
		return unsupported(mt, "application/x-ndjson (one record a line) or application/json (an array of records); with curl: -H 'Content-Type: application/x-ndjson' --data-binary @file; "+
			"or "+BinaryRecordsType+" (binary Kafka records, see openapi.yaml)")
	}
	buf, err := readBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		return err
	}
	var sq *twopc.Seq
	if seq != nil {
		// Over the raw bytes: a retry repeats the body byte for byte.
		sq = &twopc.Seq{N: *seq, Digest: maphash.Bytes(bodySeed, buf.Bytes())}
	}
	recs, err := decodeBody(mt, buf.Bytes(), s.cfg.MaxRecordsPerCall)
	putBuf(buf)
	if errors.Is(err, errTooManyRecords) {
		return &apiErr{Status: http.StatusRequestEntityTooLarge, Code: CodeBodyTooLarge, Detail: err.Error()}
	}
	if err != nil {
		return badRequest(CodeMalformedBody, err.Error())
	}
	res, err := s.svc.Write(r.Context(), job, writer, epoch, sq, recs)
	if err != nil {
		return err
	}
	s.reply(w, r, http.StatusOK, res)
	return nil
}

func (s *Server) checkpoint(w http.ResponseWriter, r *http.Request) error {
	job, writer, epoch, err := sessionCall(r)
	if err != nil {
		return err
	}
	n, err := pathCheckpoint(r)
	if err != nil {
		return err
	}
	var req CheckpointRequest
	if _, err := decodeJSONBody(w, r, smallBodyBytes, &req); err != nil {
		return err
	}
	if len(req.State) > twopc.MaxStateBytes {
		return &apiErr{Status: http.StatusRequestEntityTooLarge, Code: CodeBodyTooLarge,
			Detail: fmt.Sprintf("state is %d bytes, the limit is %d", len(req.State), twopc.MaxStateBytes)}
	}
	switch req.Wait {
	case "":
		req.Wait = twopc.WaitCommitted
	case twopc.WaitCommitted, twopc.WaitPrepared:
	default:
		return badRequest(CodeInvalidRequest, fmt.Sprintf("wait %q must be %q or %q", req.Wait, twopc.WaitCommitted, twopc.WaitPrepared))
	}
	if req.Offsets != nil {
		// The sink-independent rules here, before anything else; the
		// coordinator checks them again with the job's sinks.
		if err := twopc.CheckOffsets(req.Offsets); err != nil {
			return err // 400 invalid_request
		}
	}
	res, err := s.svc.CheckpointWith(r.Context(), job, writer, epoch, n, req.State, req.Wait, req.Offsets)
	if res.Branches == nil {
		res.Branches = []twopc.BranchInfo{}
	}
	if err := dataLoss(err, res.Status, res); err != nil {
		return err
	}
	s.reply(w, r, resultStatus(res.Status), res)
	return nil
}

// resultStatus is 202 while a decision is durable but not yet carried out
// by every sink: the sidecar keeps retrying it.
func resultStatus(status string) int {
	switch status {
	case twopc.StatusCommitting, twopc.StatusAborting:
		return http.StatusAccepted
	}
	return http.StatusOK
}

func (s *Server) commit(w http.ResponseWriter, r *http.Request) error {
	return s.decide(w, r, s.svc.Commit)
}

func (s *Server) abort(w http.ResponseWriter, r *http.Request) error {
	return s.decide(w, r, s.svc.Abort)
}

func (s *Server) decide(w http.ResponseWriter, r *http.Request, fn func(context.Context, string, int64) (twopc.CommitResult, error)) error {
	job, err := pathName(r, "job")
	if err != nil {
		return err
	}
	n, err := pathCheckpoint(r)
	if err != nil {
		return err
	}
	res, err := fn(r.Context(), job, n)
	if res.Writers == nil {
		res.Writers = map[string][]int64{}
	}
	if err := dataLoss(err, res.Status, res); err != nil {
		return err
	}
	s.reply(w, r, resultStatus(res.Status), res)
	return nil
}

func (s *Server) checkpoints(w http.ResponseWriter, r *http.Request) error {
	job, err := pathName(r, "job")
	if err != nil {
		return err
	}
	cps, err := s.svc.Checkpoints(job)
	if err != nil {
		return err
	}
	out := make([]twopc.CheckpointInfo, len(cps))
	for i, c := range cps {
		if c.Branches == nil {
			c.Branches = []twopc.BranchInfo{}
		}
		out[i] = c
	}
	s.reply(w, r, http.StatusOK, CheckpointList{Checkpoints: out})
	return nil
}

func (s *Server) cluster(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Cluster == nil {
		return &apiErr{Status: http.StatusNotFound, Code: CodeNotFound, Detail: "this server has no cluster status"}
	}
	st, err := s.cfg.Cluster(r.Context())
	if err != nil {
		return err
	}
	if st.Members == nil {
		st.Members = []Member{}
	}
	s.reply(w, r, http.StatusOK, st)
	return nil
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) error {
	s.reply(w, r, http.StatusOK, Health{Status: "ok"})
	return nil
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := s.cfg.Ready(ctx); err != nil {
			return &apiErr{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Detail: "not ready: " + err.Error()}
		}
	}
	s.reply(w, r, http.StatusOK, Health{Status: "ready"})
	return nil
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Metrics == nil {
		return &apiErr{Status: http.StatusNotFound, Code: CodeNotFound, Detail: "this server exports no metrics"}
	}
	s.cfg.Metrics.ServeHTTP(w, r)
	return nil
}

// normJob answers empty lists as [] rather than null.
func normJob(j twopc.JobInfo) twopc.JobInfo {
	j.Guarantee = j.Guarantee.Norm()
	if j.Sinks == nil {
		j.Sinks = []string{}
	}
	ws := make([]twopc.WriterInfo, len(j.Writers))
	for i, wi := range j.Writers {
		if wi.InDoubt == nil {
			wi.InDoubt = []int64{}
		}
		ws[i] = wi
	}
	j.Writers = ws
	return j
}
