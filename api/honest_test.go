package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// expire aborts every prepared transaction of s, as a broker's transaction
// timeout would.
func expire(s *twopctest.Sink) {
	for _, id := range s.Branches(twopctest.Prepared) {
		s.Expire(id)
	}
}

// lossProblem checks that r is 502 data_loss and decodes its result.
func lossProblem[T any](t *testing.T, r reply) T {
	t.Helper()
	if r.status != http.StatusBadGateway || r.problem(t).Code != api.CodeDataLoss {
		t.Fatalf("got %s, want 502 data_loss", r)
	}
	var p struct{ Result *T }
	if err := json.Unmarshal(r.body, &p); err != nil || p.Result == nil {
		t.Fatalf("problem %s: no result (%v)", r.body, err)
	}
	return *p.Result
}

// TestDataLossAnswers: a checkpoint, a commit and a session open that met a
// data loss say so, over HTTP and through the Go client.
func TestDataLossAnswers(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for i, tr := range e.ts {
		t.Run(tr.name, func(t *testing.T) {
			c := tr.c
			t.Run("auto checkpoint", func(t *testing.T) {
				job := fmt.Sprintf("auto-%d", i)
				must[twopc.JobInfo](t)(c.PutJob(ctx, job, twopc.ModeAuto, []string{"events"}))
				ep := must[twopc.SessionInfo](t)(c.OpenSession(ctx, job, "w", nil)).Epoch
				must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, job, "w", ep, nil, []byte(values("lost"))))
				h := func(p string) {
					if p == "after-journal" {
						expire(e.events)
					}
				}
				e.hook.Store(&h)
				r := tr.do(t, "POST", fmt.Sprintf("/v1/jobs/%s/writers/w/checkpoints/1?epoch=%d", job, ep), `{"state":"czE="}`,
					"Content-Type", "application/json")
				e.hook.Store(nil)
				cp := lossProblem[twopc.CheckpointResult](t, r)
				if cp.Checkpoint != 1 || cp.Status != twopc.StatusDataLoss || len(cp.Branches) != 1 || cp.Branches[0].Status != twopc.StatusDataLoss {
					t.Fatalf("result %+v, want checkpoint 1 with its branch data_loss", cp)
				}
				// A retry through the client: a typed error and the result.
				cp, err := c.Checkpoint(ctx, job, "w", ep, 1, []byte("s1"), "")
				wantCode(t, err, 502, api.CodeDataLoss)
				if !errors.Is(err, twopc.ErrDataLoss) || cp.Status != twopc.StatusDataLoss || cp.Branches[0].Sink != "events" {
					t.Fatalf("client: got %+v %v, want errors.Is ErrDataLoss and the data_loss result", cp, err)
				}
				// Reopening restores checkpoint 1, and says it was lost.
				r = tr.do(t, "POST", fmt.Sprintf("/v1/jobs/%s/writers/w/session", job), "")
				var s twopc.SessionInfo
				if err := json.Unmarshal(r.body, &s); err != nil || r.status != 200 || s.Checkpoint != 1 ||
					s.Status != twopc.StatusDataLoss || !slices.Equal(s.DataLoss, []int64{1}) {
					t.Fatalf("reopen: got %s, want 200 restoring 1 with status data_loss, data_loss [1]", r)
				}
				s, err = c.OpenSession(ctx, job, "w", nil)
				if !errors.Is(err, twopc.ErrDataLoss) || s.Epoch == 0 || s.Status != twopc.StatusDataLoss {
					t.Fatalf("client reopen: got %+v %v, want the session and an error matching ErrDataLoss", s, err)
				}
			})
			t.Run("external commit and restore", func(t *testing.T) {
				job := fmt.Sprintf("ext-%d", i)
				must[twopc.JobInfo](t)(c.PutJob(ctx, job, twopc.ModeExternal, []string{"other"}))
				eps := map[string]uint64{}
				for _, w := range []string{"a", "b"} {
					s := must[twopc.SessionInfo](t)(c.OpenSession(ctx, job, w, nil))
					if s.Status != twopc.StatusNone || len(s.DataLoss) != 0 {
						t.Fatalf("fresh session: got %+v, want status none", s)
					}
					eps[w] = s.Epoch
					must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, job, w, eps[w], nil, []byte(`{"value":"`+w+`"}`)))
					must[twopc.CheckpointResult](t)(c.Checkpoint(ctx, job, w, eps[w], 1, []byte("s1"), ""))
				}
				// Only writer a's transaction times out.
				for _, id := range e.other.Branches(twopctest.Prepared) {
					if id.Job == job && id.Writer == "a" {
						e.other.Expire(id)
					}
				}
				res := lossProblem[twopc.CommitResult](t, tr.do(t, "POST", "/v1/jobs/"+job+"/checkpoints/1/commit", ""))
				if res.Status != twopc.StatusDataLoss || !slices.Equal(res.DataLoss["a"], []int64{1}) || len(res.DataLoss) != 1 || len(res.Writers) != 2 {
					t.Fatalf("commit result %+v, want data_loss of a@1 only, both writers decided", res)
				}
				if got := committed(e.other); !slices.Contains(got, "b") || slices.Contains(got, "a") {
					t.Fatalf("committed %v, want b and not a", got)
				}
				res, err := c.Commit(ctx, job, 1) // a retry must not read as committed
				wantCode(t, err, 502, api.CodeDataLoss)
				if !errors.Is(err, twopc.ErrDataLoss) || res.Status != twopc.StatusDataLoss || !slices.Equal(res.DataLoss["a"], []int64{1}) {
					t.Fatalf("client commit: got %+v %v, want the data_loss result and ErrDataLoss", res, err)
				}
				// Restore: checkpoint 2 of writer a is decided by the open
				// (restore 2) and was lost too.
				must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, job, "a", eps["a"], nil, []byte(`{"value":"a2"}`)))
				must[twopc.CheckpointResult](t)(c.Checkpoint(ctx, job, "a", eps["a"], 2, []byte("s2"), ""))
				expire(e.other)
				r := tr.do(t, "POST", "/v1/jobs/"+job+"/writers/a/session", `{"restore":2}`, "Content-Type", "application/json")
				var s twopc.SessionInfo
				if err := json.Unmarshal(r.body, &s); err != nil || r.status != 200 || s.Checkpoint != 2 || string(s.State) != "s2" ||
					s.Status != twopc.StatusDataLoss || !slices.Equal(s.DataLoss, []int64{2}) {
					t.Fatalf("restore 2: got %s, want 200 restoring 2 with status data_loss, data_loss [2]", r)
				}
				// Writer b's restore is clean.
				one := int64(1)
				s = must[twopc.SessionInfo](t)(c.OpenSession(ctx, job, "b", &one))
				if s.Checkpoint != 1 || s.Status != twopc.StatusCommitted || len(s.DataLoss) != 0 {
					t.Fatalf("clean restore: got %+v, want committed, no data loss", s)
				}
			})
		})
	}
}

// TestRepeatAnswers: repeats that are not true retries, and a mode change
// under live writers, are refused and change nothing.
func TestRepeatAnswers(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.ts[0].c
	must[twopc.JobInfo](t)(c.PutJob(ctx, "j", twopc.ModeAuto, []string{"events"}))
	must[twopc.JobInfo](t)(c.PutJob(ctx, "idle", twopc.ModeAuto, []string{"events"}))
	ep := must[twopc.SessionInfo](t)(c.OpenSession(ctx, "j", "w", nil)).Epoch
	must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, "j", "w", ep, nil, []byte(values("r1"))))
	must[twopc.CheckpointResult](t)(c.Checkpoint(ctx, "j", "w", ep, 1, []byte("s1"), ""))
	js := []string{"Content-Type", "application/json"}
	cases := []struct {
		name, method, path, body string
		status                   int
		code, detail             string
	}{
		{"checkpoint repeated", "POST", fmt.Sprintf("/v1/jobs/j/writers/w/checkpoints/1?epoch=%d", ep), `{"state":"czE="}`, 200, "", ""},
		{"checkpoint repeated with another state", "POST", fmt.Sprintf("/v1/jobs/j/writers/w/checkpoints/1?epoch=%d", ep), `{"state":"czI="}`,
			409, api.CodeCheckpointOrder, "another state"},
		{"same mode again", "PUT", "/v1/jobs/j", `{"commit":"auto","sinks":["events"]}`, 200, "", ""},
		{"mode change with an open session", "PUT", "/v1/jobs/j", `{"commit":"external","sinks":["events"]}`,
			409, api.CodeModeConflict, "open sessions (writers w)"},
	}
	before := e.snapshot()
	for _, tr := range e.ts {
		for _, tc := range cases {
			t.Run(tr.name+"/"+tc.name, func(t *testing.T) {
				r := tr.do(t, tc.method, tc.path, tc.body, js...)
				if r.status != tc.status {
					t.Fatalf("got %s, want %d %s", r, tc.status, tc.code)
				}
				if tc.code != "" {
					if p := r.problem(t); p.Code != tc.code || !strings.Contains(p.Detail, tc.detail) {
						t.Fatalf("got %+v, want %s with %q in the detail", p, tc.code, tc.detail)
					}
				}
				if after := e.snapshot(); after != before {
					t.Fatalf("the call changed state:\nbefore %s\nafter  %s", before, after)
				}
			})
		}
	}
	// A job without open sessions changes its mode.
	if j := must[twopc.JobInfo](t)(c.PutJob(ctx, "idle", twopc.ModeExternal, []string{"events"})); j.Commit != twopc.ModeExternal {
		t.Fatalf("idle job: got %+v, want external", j)
	}
	// A seq repeated with another body is refused and writes nothing; the
	// same body is a duplicate.
	seq := int64(1)
	must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, "j", "w", ep, &seq, []byte(values("r2"))))
	_, err := c.WriteNDJSON(ctx, "j", "w", ep, &seq, []byte(values("r2", "r3")))
	wantCode(t, err, 409, api.CodeSeqConflict)
	if w := must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, "j", "w", ep, &seq, []byte(values("r2")))); !w.Duplicate {
		t.Fatalf("same seq, same body: got %+v, want duplicate", w)
	}
	must[twopc.CheckpointResult](t)(c.Checkpoint(ctx, "j", "w", ep, 2, nil, ""))
	if got := committed(e.events); !slices.Equal(got, []string{"r1", "r2"}) {
		t.Fatalf("committed %v, want [r1 r2]", got)
	}
}
