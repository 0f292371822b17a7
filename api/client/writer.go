package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/twopc"
)

// This file is the writer abstraction every txsink client offers (the
// Python and Node clients have the same shape): a Job names a job, a Writer
// is one open session of one of its writers. The Writer numbers its write
// calls (seq) so that a repeat is harmless, and retries what the sidecar
// asks to be retried (429 backpressure, 503 unavailable without an owner)
// with backoff. What it never does is reopen by itself: after an error for
// which errors.Is(err, ErrReopen) holds, the application calls Reopen,
// resumes its input from the restored Checkpoint and State, and replays.
//
//	job, err := c.UseJob(ctx, "pageviews", twopc.ModeAuto, nil)
//	w, err := job.OpenWriter(ctx, "w1", nil)
//	// resume the input from w.Restored, w.State
//	_, err = w.Write(ctx, recs...)
//	_, err = w.Checkpoint(ctx, w.Restored+1, newState)

// Retry is how a Writer retries 429 and 503 answers: up to Attempts calls
// in all, waiting Min, then twice as long each time up to Max, or what the
// answer's Retry-After asks when that is longer. The call's context bounds
// it all.
type Retry struct {
	Attempts int
	Min, Max time.Duration
}

// DefaultRetry is the Retry a Job uses when none is given.
var DefaultRetry = Retry{Attempts: 8, Min: 50 * time.Millisecond, Max: 2 * time.Second}

// Job is a handle on one job for opening writers.
type Job struct {
	c      *Client
	name   string
	info   twopc.JobInfo
	retry  Retry
	binary bool
}

// UseJob creates or updates the job (PUT is idempotent) and returns a
// handle on it. sinks nil means every configured sink.
func (c *Client) UseJob(ctx context.Context, name string, mode twopc.Mode, sinks []string) (*Job, error) {
	return c.UseJobSpec(ctx, name, api.JobRequest{Commit: mode, Sinks: sinks})
}

// UseJobSpec is UseJob with the full request, e.g. to choose a delivery
// guarantee: c.UseJobSpec(ctx, "pageviews", api.JobRequest{Guarantee:
// twopc.GuaranteeAtLeastOnce}). Job.Info().Guarantee names the job's.
func (c *Client) UseJobSpec(ctx context.Context, name string, req api.JobRequest) (*Job, error) {
	info, err := c.PutJobSpec(ctx, name, req)
	if err != nil {
		return nil, err
	}
	return &Job{c: c, name: name, info: info, retry: DefaultRetry}, nil
}

// WithRetry sets how the job's writers retry 429 and 503 answers.
func (j *Job) WithRetry(r Retry) *Job { j.retry = r; return j }

// WithBinary makes the job's writers send their records as
// api.BinaryRecordsType instead of NDJSON (the default): less CPU in the app
// and in the sidecar, for Kafka records only (see AppendBinaryRecords; a
// record it cannot encode fails the Write before anything is sent).
func (j *Job) WithBinary(on bool) *Job { j.binary = on; return j }

// Name is the job's name.
func (j *Job) Name() string { return j.name }

// Info is the job as the sidecar described it when UseJob ran.
func (j *Job) Info() twopc.JobInfo { return j.info }

// Writer is one open session of a writer. It is not safe for concurrent
// use: a writer's calls are ordered by nature.
type Writer struct {
	job  *Job
	name string
	seq  int64
	sess twopc.SessionInfo
	// Restored is the checkpoint the open restored (0: none); the next
	// checkpoint must be greater. State is its state (nil when none).
	// Resume the input from them.
	Restored int64
	State    []byte
}

// OpenWriter opens a session of the writer (a newer session fences any
// older one, in this process or another). restore is for external mode:
// the checkpoint the application restored, nil for none. A data_loss
// answer returns the opened Writer too, with an error matching
// twopc.ErrDataLoss: the records of the checkpoints it lists are not in
// the sink, and an operator should decide before the app goes on.
func (j *Job) OpenWriter(ctx context.Context, name string, restore *int64) (*Writer, error) {
	w := &Writer{job: j, name: name}
	err := w.open(ctx, restore)
	if err != nil && !errors.Is(err, twopc.ErrDataLoss) {
		return nil, err
	}
	return w, err
}

// Reopen opens a new session of the same writer, after an error matching
// ErrReopen: resume the input from Restored and State and replay.
func (w *Writer) Reopen(ctx context.Context, restore *int64) error { return w.open(ctx, restore) }

func (w *Writer) open(ctx context.Context, restore *int64) error {
	var s twopc.SessionInfo
	err := w.job.retry.do(ctx, func() error {
		var err error
		s, err = w.job.c.OpenSession(ctx, w.job.name, w.name, restore)
		return err
	})
	if err != nil && !errors.Is(err, twopc.ErrDataLoss) {
		return err
	}
	w.sess, w.seq = s, 0
	w.Restored, w.State = s.Checkpoint, s.State
	return err
}

// Name is the writer's name.
func (w *Writer) Name() string { return w.name }

// Epoch is the open session's epoch.
func (w *Writer) Epoch() uint64 { return w.sess.Epoch }

// Session is what opening the session answered.
func (w *Writer) Session() twopc.SessionInfo { return w.sess }

// Write sends records into the open checkpoint. Each call gets the next
// seq, so a retried call is acknowledged once (Duplicate when the first
// attempt had landed).
func (w *Writer) Write(ctx context.Context, recs ...*twopc.Record) (twopc.WriteResult, error) {
	var body []byte
	if w.job.binary {
		var err error
		if body, err = AppendBinaryRecords(nil, recs); err != nil {
			return twopc.WriteResult{}, err
		}
	}
	w.seq++
	seq := w.seq
	var out twopc.WriteResult
	err := w.job.retry.do(ctx, func() error {
		var err error
		if body != nil {
			out, err = w.job.c.WriteBinary(ctx, w.job.name, w.name, w.sess.Epoch, &seq, body)
		} else {
			out, err = w.job.c.Write(ctx, w.job.name, w.name, w.sess.Epoch, &seq, recs)
		}
		return err
	})
	return out, err
}

// Checkpoint completes checkpoint n (greater than the last one) with the
// state the app resumes from after it. In auto mode it returns once the
// checkpoint committed (status "committed", or "committing" when a sink has
// not confirmed yet; the sidecar retries that by itself). A repeat of the
// same checkpoint returns its result again, which is what makes the retry
// safe.
func (w *Writer) Checkpoint(ctx context.Context, n int64, state []byte) (twopc.CheckpointResult, error) {
	return w.checkpoint(ctx, n, state, nil, "")
}

// CheckpointWith is Checkpoint that also commits consumer-group offsets in
// the checkpoint's transaction of the Kafka sink offsets.Sink (nil: none):
// the group's offsets move exactly when the checkpoint's output commits.
// A retry of checkpoint n must pass the same offsets.
func (w *Writer) CheckpointWith(ctx context.Context, n int64, state []byte, offsets *twopc.Offsets) (twopc.CheckpointResult, error) {
	return w.checkpoint(ctx, n, state, offsets, "")
}

// Prepare is Checkpoint for external mode: it returns once every sink
// prepared; the job's coordinator then commits (Client.Commit).
func (w *Writer) Prepare(ctx context.Context, n int64, state []byte) (twopc.CheckpointResult, error) {
	return w.checkpoint(ctx, n, state, nil, twopc.WaitPrepared)
}

// PrepareWith is Prepare with consumer-group offsets (see CheckpointWith):
// they commit when the coordinator commits the checkpoint.
func (w *Writer) PrepareWith(ctx context.Context, n int64, state []byte, offsets *twopc.Offsets) (twopc.CheckpointResult, error) {
	return w.checkpoint(ctx, n, state, offsets, twopc.WaitPrepared)
}

func (w *Writer) checkpoint(ctx context.Context, n int64, state []byte, offsets *twopc.Offsets, wait twopc.Wait) (twopc.CheckpointResult, error) {
	var out twopc.CheckpointResult
	req := api.CheckpointRequest{State: state, Wait: wait, Offsets: offsets}
	err := w.job.retry.do(ctx, func() error {
		var err error
		out, err = w.job.c.CheckpointWith(ctx, w.job.name, w.name, w.sess.Epoch, n, req)
		return err
	})
	return out, err
}

// retryable reports an answer that asks to be sent again: 429
// backpressure, and 503 unavailable from a node that is not passing the
// call to an owner it cannot reach (that one means reopen, see ErrReopen).
func retryable(err error) (*Error, bool) {
	e, ok := errors.AsType[*Error](err)
	if !ok {
		return nil, false
	}
	switch {
	case e.Status == http.StatusTooManyRequests:
		return e, true
	case e.Status == http.StatusServiceUnavailable && e.Owner == "":
		return e, true
	}
	return e, false
}

func (r Retry) do(ctx context.Context, call func() error) error {
	if r.Attempts < 1 {
		r.Attempts = 1
	}
	wait := r.Min
	for i := 1; ; i++ {
		err := call()
		e, again := retryable(err)
		if !again || i >= r.Attempts {
			if again {
				return fmt.Errorf("%w (gave up after %d attempts)", err, i)
			}
			return err
		}
		d := max(wait, e.RetryAfter)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (retrying: %w)", err, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, r.Max)
	}
}

// retryAfter reads a Retry-After header given in seconds (the form the
// sidecar sends); anything else is 0.
func retryAfter(h http.Header) time.Duration {
	s, err := strconv.Atoi(h.Get("Retry-After"))
	if err != nil || s < 0 {
		return 0
	}
	return time.Duration(s) * time.Second
}
