package api_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

func TestAutoModeRoundTrip(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for i, tr := range e.ts {
		t.Run(tr.name, func(t *testing.T) {
			c := tr.c
			job := fmt.Sprintf("auto-%d", i)
			info := must[twopc.JobInfo](t)(c.PutJob(ctx, job, "", []string{"events"}))
			if info.Name != job || info.Commit != twopc.ModeAuto || len(info.Sinks) != 1 {
				t.Fatalf("PutJob: got %+v, want %s auto [events]", info, job)
			}
			s := must[twopc.SessionInfo](t)(c.OpenSession(ctx, job, "0", nil))
			if s.Epoch == 0 || s.Checkpoint != 0 || s.State != nil {
				t.Fatalf("OpenSession: got %+v, want a fresh session", s)
			}
			before := len(committed(e.events))
			seq := int64(1)
			body := []byte(values(job+"-a", job+"-b") + "\n\n" + `{"value":{"n":1},"key":"k","headers":{"h":"v"},"topic":"pv","partition":0}` + "\r\n")
			w := must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, job, "0", s.Epoch, &seq, body))
			if w.Accepted != 3 || w.Seq != 1 || w.Duplicate {
				t.Fatalf("write: got %+v, want 3 accepted, seq 1", w)
			}
			// A retry of the same seq is acknowledged without effect.
			w = must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, job, "0", s.Epoch, &seq, body))
			if !w.Duplicate || w.Accepted != 3 {
				t.Fatalf("repeated seq: got %+v, want duplicate", w)
			}
			// A JSON array works too.
			r := tr.do(t, "POST", fmt.Sprintf("/v1/jobs/%s/writers/0/records?epoch=%d", job, s.Epoch),
				`[{"sink":"events","value":"`+job+`-c"}, {"value_b64":"`+base64.StdEncoding.EncodeToString([]byte(job+"-d"))+`"}]`,
				"Content-Type", "application/json")
			if r.status != http.StatusOK || !strings.Contains(string(r.body), `"accepted":2`) {
				t.Fatalf("array write: got %s, want 200 accepted 2", r)
			}
			if n := len(committed(e.events)); n != before {
				t.Fatalf("committed before the checkpoint: %d records, want %d", n, before)
			}
			cp := must[twopc.CheckpointResult](t)(c.Checkpoint(ctx, job, "0", s.Epoch, 1, []byte("offset=5"), ""))
			if cp.Status != twopc.StatusCommitted || cp.Checkpoint != 1 || len(cp.Branches) != 1 {
				t.Fatalf("checkpoint: got %+v, want committed with one branch", cp)
			}
			got := committed(e.events)
			if !contains(got, job+"-a", job+"-b", `{"n":1}`, job+"-c", job+"-d") || len(got) != before+5 {
				t.Fatalf("committed %v, want the 5 records of %s once", got[before:], job)
			}
			// The checkpoint call is idempotent for the same epoch.
			again := must[twopc.CheckpointResult](t)(c.Checkpoint(ctx, job, "0", s.Epoch, 1, []byte("offset=5"), ""))
			if again.Status != twopc.StatusCommitted {
				t.Fatalf("repeated checkpoint: got %+v, want committed", again)
			}
			j := must[twopc.JobInfo](t)(c.Job(ctx, job))
			if len(j.Writers) != 1 || j.Writers[0].LastCommitted != 1 || j.Writers[0].Owner != "n1" {
				t.Fatalf("job: got %+v, want writer 0 with last committed 1", j)
			}
			s2 := must[twopc.SessionInfo](t)(c.OpenSession(ctx, job, "0", nil))
			if s2.Epoch <= s.Epoch || s2.Checkpoint != 1 || string(s2.State) != "offset=5" {
				t.Fatalf("reopen: got %+v, want epoch > %d restoring 1 with its state", s2, s.Epoch)
			}
			jobs := must[[]twopc.JobInfo](t)(c.Jobs(ctx))
			found := false
			for _, j := range jobs {
				found = found || j.Name == job
			}
			if !found {
				t.Fatalf("jobs %v: %s missing", jobs, job)
			}
			must[[]twopc.CheckpointInfo](t)(c.Checkpoints(ctx, job))
			// wait=prepared: answered once durable; the commit may still run.
			must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, job, "0", s2.Epoch, nil, []byte(values(job+"-e"))))
			cp = must[twopc.CheckpointResult](t)(c.Checkpoint(ctx, job, "0", s2.Epoch, 2, nil, twopc.WaitPrepared))
			if cp.Status != twopc.StatusCommitting && cp.Status != twopc.StatusCommitted {
				t.Fatalf("wait=prepared: got %+v, want committing or committed", cp)
			}
			// The commit finishes in the background; wait for it, so that it
			// cannot land in the next subtest's count of the shared sink.
			deadline := time.Now().Add(10 * time.Second)
			for !contains(committed(e.events), job+"-e") {
				if time.Now().After(deadline) {
					t.Fatalf("checkpoint 2 (wait=prepared): %s-e not committed after 10s", job)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

func TestExternalMode(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for i, tr := range e.ts {
		t.Run(tr.name, func(t *testing.T) {
			c := tr.c
			job := fmt.Sprintf("ext-%d", i)
			must[twopc.JobInfo](t)(c.PutJob(ctx, job, twopc.ModeExternal, []string{"other"}))
			epochs := map[string]uint64{}
			for _, w := range []string{"0", "1"} {
				epochs[w] = must[twopc.SessionInfo](t)(c.OpenSession(ctx, job, w, nil)).Epoch
				must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, job, w, epochs[w], nil, []byte(`{"value":"`+job+w+`"}`)))
				cp := must[twopc.CheckpointResult](t)(c.Checkpoint(ctx, job, w, epochs[w], 1, nil, ""))
				if cp.Status != twopc.StatusPrepared {
					t.Fatalf("external checkpoint: got %+v, want prepared", cp)
				}
			}
			cps := must[[]twopc.CheckpointInfo](t)(c.Checkpoints(ctx, job))
			if len(cps) != 2 || cps[0].Status != twopc.StatusPrepared || len(cps[0].Branches) != 1 {
				t.Fatalf("checkpoints: got %+v, want two prepared", cps)
			}
			res := must[twopc.CommitResult](t)(c.Commit(ctx, job, 1))
			if res.Status != twopc.StatusCommitted || len(res.Writers) != 2 {
				t.Fatalf("commit: got %+v, want committed for 2 writers", res)
			}
			if got := committed(e.other); !contains(got, job+"0", job+"1") {
				t.Fatalf("committed %v, want both writers' records", got)
			}
			// Abort checkpoint 2 of writer 0; a new session restores 1.
			must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, job, "0", epochs["0"], nil, []byte(`{"value":"`+job+`-lost"}`)))
			must[twopc.CheckpointResult](t)(c.Checkpoint(ctx, job, "0", epochs["0"], 2, []byte("s2"), ""))
			res = must[twopc.CommitResult](t)(c.Abort(ctx, job, 2))
			if res.Status != twopc.StatusAborted {
				t.Fatalf("abort: got %+v, want aborted", res)
			}
			restore := int64(1)
			s := must[twopc.SessionInfo](t)(c.OpenSession(ctx, job, "0", &restore))
			if s.Checkpoint != 1 {
				t.Fatalf("restore: got %+v, want checkpoint 1", s)
			}
			if got := committed(e.other); contains(got, job+"-lost") {
				t.Fatalf("committed %v: the aborted record is there", got)
			}
		})
	}
}

// TestBadInput sends every kind of bad call over both transports: each gets
// its 4xx problem, changes nothing, and the server keeps serving.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.ts[0].c
	must[twopc.JobInfo](t)(c.PutJob(ctx, "j", twopc.ModeAuto, []string{"events"}))
	must[twopc.JobInfo](t)(c.PutJob(ctx, "x", twopc.ModeExternal, []string{"events", "other"}))
	stale := must[twopc.SessionInfo](t)(c.OpenSession(ctx, "j", "w", nil)).Epoch
	ep := must[twopc.SessionInfo](t)(c.OpenSession(ctx, "j", "w", nil)).Epoch
	for n, seq := range []int64{4, 5} {
		must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, "j", "w", ep, &seq, []byte(values(fmt.Sprint("cp", n+1)))))
		must[twopc.CheckpointResult](t)(c.Checkpoint(ctx, "j", "w", ep, int64(n+1), nil, ""))
	}
	seq := int64(6)
	must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, "j", "w", ep, &seq, []byte(values("open"))))

	rec := fmt.Sprintf("/v1/jobs/j/writers/w/records?epoch=%d", ep)
	recSeq := func(s string) string { return rec + "&seq=" + s }
	cpPath := func(n string, epoch uint64) string {
		return fmt.Sprintf("/v1/jobs/j/writers/w/checkpoints/%s?epoch=%d", n, epoch)
	}
	nd := []string{"Content-Type", "application/x-ndjson"}
	js := []string{"Content-Type", "application/json"}
	bigState := `{"state":"` + base64.StdEncoding.EncodeToString(make([]byte, twopc.MaxStateBytes+1)) + `"}`
	tooMany := strings.Repeat(`{"value":"a"}`+"\n", 1001)
	tooBig := values(strings.Repeat("x", 70<<10))

	cases := []struct {
		name, method, path, body string
		header                   []string
		status                   int
		code                     string
		detail                   string // substring of the problem's detail
	}{
		// names
		{"job name with a bang", "PUT", "/v1/jobs/bad!name", `{"commit":"auto"}`, js, 400, api.CodeInvalidName, `job name "bad!name"`},
		{"job name starting with a dot", "GET", "/v1/jobs/.hidden", "", nil, 400, api.CodeInvalidName, "job name"},
		{"job name too long", "GET", "/v1/jobs/" + strings.Repeat("a", 65), "", nil, 400, api.CodeInvalidName, "job name"},
		{"writer name", "POST", fmt.Sprintf("/v1/jobs/j/writers/w$/records?epoch=%d", ep), values("a"), nd, 400, api.CodeInvalidName, "writer name"},
		{"sink name in job", "PUT", "/v1/jobs/j", `{"sinks":["bad sink"]}`, js, 400, api.CodeInvalidName, "sink name"},
		// jobs
		{"unknown commit mode", "PUT", "/v1/jobs/j", `{"commit":"sometimes"}`, js, 400, api.CodeInvalidRequest, `"sometimes"`},
		{"unknown sink in job", "PUT", "/v1/jobs/j", `{"sinks":["nope"]}`, js, 400, api.CodeUnknownSink, "nope"},
		{"unknown guarantee", "PUT", "/v1/jobs/g", `{"guarantee":"at_most_once"}`, js, 400, api.CodeInvalidRequest, `guarantee "at_most_once"`},
		{"guarantee of the wrong type", "PUT", "/v1/jobs/g", `{"guarantee":1}`, js, 400, api.CodeMalformedBody, `field "guarantee"`},
		{"guarantee in another case", "PUT", "/v1/jobs/g", `{"guarantee":"Exactly_Once"}`, js, 400, api.CodeInvalidRequest, "guarantee"},
		{"at_least_once with external commit", "PUT", "/v1/jobs/g", `{"commit":"external","guarantee":"at_least_once"}`, js, 400, api.CodeInvalidRequest, "needs commit mode"},
		{"none with external commit", "PUT", "/v1/jobs/g", `{"commit":"external","guarantee":"none"}`, js, 400, api.CodeInvalidRequest, "needs commit mode"},
		{"guarantee change of a job", "PUT", "/v1/jobs/j", `{"sinks":["events"],"guarantee":"at_least_once"}`, js, 409, api.CodeModeConflict, "cannot change it"},
		{"unknown field in job", "PUT", "/v1/jobs/j", `{"commit":"auto","mode":"x"}`, js, 400, api.CodeMalformedBody, `unknown field "mode"`},
		{"job body not an object", "PUT", "/v1/jobs/j", `["auto"]`, js, 400, api.CodeMalformedBody, "JSON object"},
		{"job body trailing data", "PUT", "/v1/jobs/j", `{"commit":"auto"} {}`, js, 400, api.CodeMalformedBody, "after the JSON object"},
		{"job body as text", "PUT", "/v1/jobs/j", `{"commit":"auto"}`, []string{"Content-Type", "text/plain"}, 415, api.CodeUnsupportedMediaType, "text/plain"},
		{"unknown job", "GET", "/v1/jobs/nope", "", nil, 404, api.CodeJobNotFound, "nope"},
		{"unknown job checkpoints", "GET", "/v1/jobs/nope/checkpoints", "", nil, 404, api.CodeJobNotFound, "nope"},
		// sessions
		{"session of unknown job", "POST", "/v1/jobs/nope/writers/w/session", "", nil, 404, api.CodeJobNotFound, "nope"},
		{"restore in auto mode", "POST", "/v1/jobs/j/writers/w/session", `{"restore":1}`, js, 400, api.CodeInvalidRequest, "restore"},
		{"negative restore", "POST", "/v1/jobs/x/writers/w/session", `{"restore":-1}`, js, 400, api.CodeInvalidRequest, "restore"},
		{"restore of the wrong type", "POST", "/v1/jobs/x/writers/w/session", `{"restore":"1"}`, js, 400, api.CodeMalformedBody, `field "restore"`},
		// records: query
		{"missing epoch", "POST", "/v1/jobs/j/writers/w/records", values("a"), nd, 400, api.CodeInvalidRequest, "epoch"},
		{"epoch not a number", "POST", "/v1/jobs/j/writers/w/records?epoch=one", values("a"), nd, 400, api.CodeInvalidRequest, `"one"`},
		{"negative seq", "POST", recSeq("-1"), values("a"), nd, 400, api.CodeInvalidRequest, "seq"},
		{"stale epoch", "POST", fmt.Sprintf("/v1/jobs/j/writers/w/records?epoch=%d", stale), values("a"), nd, 409, api.CodeSessionFenced, ""},
		{"epoch never opened", "POST", fmt.Sprintf("/v1/jobs/j/writers/w/records?epoch=%d", ep+5), values("a"), nd, 409, api.CodeNoSession, ""},
		{"writer without session", "POST", "/v1/jobs/j/writers/ghost/records?epoch=1", values("a"), nd, 409, api.CodeNoSession, ""},
		{"unknown job records", "POST", "/v1/jobs/nope/writers/w/records?epoch=1", values("a"), nd, 404, api.CodeJobNotFound, ""},
		{"lower seq", "POST", recSeq("4"), values("a"), nd, 409, api.CodeSeqConflict, "seq 4"},
		{"repeated seq", "POST", recSeq("6"), values("open"), nd, 200, "", ""},
		{"repeated seq with another body", "POST", recSeq("6"), values("a", "b"), nd, 409, api.CodeSeqConflict, "different body"},
		// records: body
		{"malformed line 3", "POST", rec, values("a", "b") + `{"value":"c"` + "\n", nd, 400, api.CodeMalformedBody, "line 3"},
		{"garbage on line 2", "POST", rec, values("a") + "not json\n" + values("b"), nd, 400, api.CodeMalformedBody, "line 2"},
		{"blank lines count", "POST", rec, "\n\n" + values("a") + "\n" + `{"value":1,}` + "\n", nd, 400, api.CodeMalformedBody, "line 5"},
		{"partition as a string", "POST", rec, values("a") + `{"value":"b","partition":"3"}`, nd, 400, api.CodeMalformedBody, `line 2: field "partition": got a JSON string, want an integer`},
		{"sink as a number", "POST", rec, `{"sink":5,"value":"b"}`, nd, 400, api.CodeMalformedBody, `line 1: field "sink"`},
		{"headers not strings", "POST", rec, `{"value":"b","headers":{"h":1}}`, nd, 400, api.CodeMalformedBody, `field "headers`},
		{"bad base64", "POST", rec, `{"value_b64":"@@@"}`, nd, 400, api.CodeMalformedBody, "line 1: invalid base64"},
		{"unknown field", "POST", rec, `{"value":"b","colour":"red"}`, nd, 400, api.CodeMalformedBody, `line 1: unknown field "colour"`},
		{"two records on a line", "POST", rec, `{"value":"a"} {"value":"b"}`, nd, 400, api.CodeMalformedBody, "line 1: unexpected data"},
		{"record not an object", "POST", rec, values("a") + `"b"`, nd, 400, api.CodeMalformedBody, "line 2: a record must be a JSON object"},
		{"record over two lines", "POST", rec, "{\"value\":\n\"a\"}", nd, 400, api.CodeMalformedBody, "a record must be on one line"},
		{"array element 2", "POST", rec, `[{"value":"a"},{"value":"b","x":1}]`, js, 400, api.CodeMalformedBody, `record 2 (line 1): unknown field "x"`},
		{"array not closed", "POST", rec, `[{"value":"a"}`, js, 400, api.CodeMalformedBody, "end of JSON input"},
		{"array of numbers", "POST", rec, `[1]`, js, 400, api.CodeMalformedBody, "record 1"},
		{"unknown sink in record", "POST", rec, `{"sink":"nope","value":"a"}`, nd, 400, api.CodeUnknownSink, "nope"},
		{"sink not of the job", "POST", rec, `{"sink":"other","value":"a"}`, nd, 400, api.CodeUnknownSink, "other"},
		{"unknown topic", "POST", rec, `{"value":"a","topic":"secret"}`, nd, 400, api.CodeInvalidRequest, "secret"},
		{"mysql fields for kafka", "POST", rec, `{"value":"a","stmt":"upsert"}`, nd, 400, api.CodeInvalidRequest, "stmt"},
		{"missing value", "POST", rec, `{"key":"a"}`, nd, 400, api.CodeInvalidRequest, "value"},
		{"body over the limit", "POST", rec, tooBig, nd, 413, api.CodeBodyTooLarge, "65536"},
		{"too many records", "POST", rec, tooMany, nd, 413, api.CodeBodyTooLarge, "more than 1000 records"},
		{"form body", "POST", rec, values("a"), []string{"Content-Type", "application/x-www-form-urlencoded"}, 415, api.CodeUnsupportedMediaType, "application/x-ndjson"},
		// checkpoints
		{"checkpoint zero", "POST", cpPath("0", ep), "", nil, 400, api.CodeInvalidRequest, "positive"},
		{"checkpoint not a number", "POST", cpPath("two", ep), "", nil, 400, api.CodeInvalidRequest, `"two"`},
		{"checkpoint out of order", "POST", cpPath("1", ep), "", nil, 409, api.CodeCheckpointOrder, "greater than 2"},
		{"checkpoint repeated after a write", "POST", cpPath("2", ep), "", nil, 409, api.CodeCheckpointOrder, "records were written since"},
		{"checkpoint of a stale epoch", "POST", cpPath("3", stale), "", nil, 409, api.CodeSessionFenced, ""},
		{"checkpoint without epoch", "POST", "/v1/jobs/j/writers/w/checkpoints/3", "", nil, 400, api.CodeInvalidRequest, "epoch"},
		{"unknown wait", "POST", cpPath("3", ep), `{"wait":"forever"}`, js, 400, api.CodeInvalidRequest, "forever"},
		{"state not base64", "POST", cpPath("3", ep), `{"state":"***"}`, js, 400, api.CodeMalformedBody, "base64"},
		{"state too large", "POST", cpPath("3", ep), bigState, js, 413, api.CodeBodyTooLarge, "state is 1048577 bytes"},
		{"unknown checkpoint field", "POST", cpPath("3", ep), `{"sate":"eA=="}`, js, 400, api.CodeMalformedBody, `unknown field "sate"`},
		// external decisions
		{"commit in auto mode", "POST", "/v1/jobs/j/checkpoints/2/commit", "", nil, 409, api.CodeModeConflict, "auto"},
		{"abort in auto mode", "POST", "/v1/jobs/j/checkpoints/2/abort", "", nil, 409, api.CodeModeConflict, "auto"},
		{"commit of unknown job", "POST", "/v1/jobs/nope/checkpoints/1/commit", "", nil, 404, api.CodeJobNotFound, ""},
		{"commit of checkpoint 0", "POST", "/v1/jobs/x/checkpoints/0/commit", "", nil, 400, api.CodeInvalidRequest, ""},
		// routing
		{"unknown route", "GET", "/v1/nothing", "", nil, 404, api.CodeNotFound, "/v1/nothing"},
		{"unknown root route", "GET", "/favicon.ico", "", nil, 404, api.CodeNotFound, ""},
		{"wrong method", "DELETE", "/v1/jobs/j", "", nil, 405, api.CodeMethodNotAllowed, "GET"},
		{"wrong method on list", "POST", "/v1/jobs", "{}", js, 405, api.CodeMethodNotAllowed, ""},
	}
	before := e.snapshot()
	for _, tr := range e.ts {
		t.Run(tr.name, func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					r := tr.do(t, tc.method, tc.path, tc.body, tc.header...)
					if r.status != tc.status {
						t.Fatalf("got %s, want %d %s", r, tc.status, tc.code)
					}
					if tc.code != "" {
						p := r.problem(t)
						if p.Code != tc.code || p.Status != tc.status || p.Type != api.ProblemTypeBase+tc.code || p.Title == "" {
							t.Errorf("got problem %+v, want code %s status %d", p, tc.code, tc.status)
						}
						if !strings.Contains(p.Detail, tc.detail) {
							t.Errorf("got detail %q, want it to contain %q", p.Detail, tc.detail)
						}
					}
					if tc.status == 405 && r.header.Get("Allow") == "" {
						t.Errorf("405 without an Allow header")
					}
					if after := e.snapshot(); after != before {
						t.Fatalf("the call changed state:\nbefore %s\nafter  %s", before, after)
					}
				})
			}
			// Still serving: the open branch commits with the next checkpoint.
			if err := tr.c.Health(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
	cp := must[twopc.CheckpointResult](t)(c.Checkpoint(ctx, "j", "w", ep, 3, nil, ""))
	if got := committed(e.events); cp.Status != twopc.StatusCommitted || len(got) != 3 || got[2] != "open" {
		t.Fatalf("after the bad calls: checkpoint %+v, committed %v; want committed [cp1 cp2 open]", cp, got)
	}
}

func TestToken(t *testing.T) {
	e := newEnv(t, func(c *api.Config) { c.Token = "s3cret" })
	ctx := context.Background()
	for _, tr := range e.ts {
		t.Run(tr.name, func(t *testing.T) {
			for _, h := range [][]string{nil, {"Authorization", "Bearer wrong"}, {"Authorization", "Basic s3cret"}} {
				r := tr.do(t, "PUT", "/v1/jobs/j", `{"commit":"auto"}`, append(h, "Content-Type", "application/json")...)
				if r.status != 401 || r.problem(t).Code != api.CodeUnauthorized || r.header.Get("WWW-Authenticate") == "" {
					t.Fatalf("with %v: got %s, want 401 unauthorized with WWW-Authenticate", h, r)
				}
			}
			if r := tr.do(t, "GET", "/v1/nothing", ""); r.status != 401 {
				t.Fatalf("unknown /v1 route without token: got %s, want 401", r)
			}
			if jobs := e.coord.Jobs(); len(jobs) > 1 || (tr.name == "tcp" && len(jobs) != 0) {
				t.Fatalf("jobs %v after refused calls, want none new", jobs)
			}
			for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
				if r := tr.do(t, "GET", p, ""); r.status != 200 {
					t.Fatalf("GET %s without token: got %s, want 200", p, r)
				}
			}
			if _, err := tr.c.PutJob(ctx, "j", "", nil); err != nil { // the client sends the token
				t.Fatal(err)
			}
		})
	}
}

func TestBackpressure(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.ts[1].c // over the Unix socket
	must[twopc.JobInfo](t)(c.PutJob(ctx, "x", twopc.ModeExternal, []string{"events"}))
	ep := must[twopc.SessionInfo](t)(c.OpenSession(ctx, "x", "w", nil)).Epoch
	must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, "x", "w", ep, nil, []byte(values("a"))))
	must[twopc.CheckpointResult](t)(c.Checkpoint(ctx, "x", "w", ep, 1, nil, ""))
	before := e.snapshot()
	// events allows one unfinished branch per writer: checkpoint 1 holds it.
	_, err := c.WriteNDJSON(ctx, "x", "w", ep, nil, []byte(values("b")))
	wantCode(t, err, 429, api.CodeBackpressure)
	if after := e.snapshot(); after != before {
		t.Fatalf("backpressure changed state:\nbefore %s\nafter  %s", before, after)
	}
	must[twopc.CommitResult](t)(c.Commit(ctx, "x", 1))
	must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, "x", "w", ep, nil, []byte(values("b"))))
}

func TestSinkFailure(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.ts[0].c
	must[twopc.JobInfo](t)(c.PutJob(ctx, "j", "", []string{"other"}))
	ep := must[twopc.SessionInfo](t)(c.OpenSession(ctx, "j", "w", nil)).Epoch
	must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, "j", "w", ep, nil, []byte(`{"value":"a"}`)))
	e.other.FailPrepare = twopctest.ErrInjected
	_, err := c.Checkpoint(ctx, "j", "w", ep, 1, nil, "")
	wantCode(t, err, 502, api.CodeSinkFailure)
	e.other.FailPrepare = nil
	_, err = c.WriteNDJSON(ctx, "j", "w", ep, nil, []byte(`{"value":"b"}`))
	wantCode(t, err, 502, api.CodeSinkFailure)
	if got := committed(e.other); len(got) != 0 {
		t.Fatalf("committed %v after a failed prepare, want nothing", got)
	}
	ep = must[twopc.SessionInfo](t)(c.OpenSession(ctx, "j", "w", nil)).Epoch
	must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, "j", "w", ep, nil, []byte(`{"value":"c"}`)))

	// A commit that cannot reach the sink is durable but unconfirmed: 202.
	e.other.FailCommit = twopctest.ErrInjected
	e.other.FailResolve = twopctest.ErrInjected
	r := e.ts[0].do(t, "POST", fmt.Sprintf("/v1/jobs/j/writers/w/checkpoints/1?epoch=%d", ep), "")
	var cp twopc.CheckpointResult
	if err := json.Unmarshal(r.body, &cp); err != nil || r.status != 202 || cp.Status != twopc.StatusCommitting {
		t.Fatalf("checkpoint with a failing commit: got %s, want 202 committing", r)
	}
}

func TestExternalCommitting(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.ts[0].c
	must[twopc.JobInfo](t)(c.PutJob(ctx, "x", twopc.ModeExternal, []string{"other"}))
	ep := must[twopc.SessionInfo](t)(c.OpenSession(ctx, "x", "w", nil)).Epoch
	must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, "x", "w", ep, nil, []byte(`{"value":"a"}`)))
	must[twopc.CheckpointResult](t)(c.Checkpoint(ctx, "x", "w", ep, 1, nil, ""))
	e.other.FailCommit = twopctest.ErrInjected
	e.other.FailResolve = twopctest.ErrInjected
	r := e.ts[1].do(t, "POST", "/v1/jobs/x/checkpoints/1/commit", "")
	if r.status != 202 || !strings.Contains(string(r.body), `"committing"`) {
		t.Fatalf("commit with a failing sink: got %s, want 202 committing", r)
	}
	res := must[twopc.CommitResult](t)(c.Commit(ctx, "x", 1)) // the client takes 202 as success
	if res.Status != twopc.StatusCommitting {
		t.Fatalf("client commit: got %+v, want committing", res)
	}
}

func TestSessionLost(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.ts[0].c
	must[twopc.JobInfo](t)(c.PutJob(ctx, "j", "", []string{"events"}))
	ep := must[twopc.SessionInfo](t)(c.OpenSession(ctx, "j", "w", nil)).Epoch
	must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, "j", "w", ep, nil, []byte(values("a"))))
	// A restarted sidecar: same journal entries and sinks, new coordinator.
	j := e.journal.Reopen()
	coord := e.newCoordinator(j)
	if err := coord.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	e.serve(api.Config{}, coord)
	for _, tr := range e.ts {
		_, err := tr.c.WriteNDJSON(ctx, "j", "w", ep, nil, []byte(values("b")))
		wantCode(t, err, 409, api.CodeSessionLost)
		_, err = tr.c.Checkpoint(ctx, "j", "w", ep, 1, nil, "")
		wantCode(t, err, 409, api.CodeSessionLost)
	}
}

func TestUnavailable(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, tr := range e.ts {
		e.journal.down.Store(true)
		r := tr.do(t, "PUT", "/v1/jobs/j", "")
		if r.status != 503 || r.problem(t).Code != api.CodeUnavailable || r.header.Get("Retry-After") == "" {
			t.Fatalf("PUT with no journal leader: got %s, want 503 unavailable with Retry-After", r)
		}
		e.journal.down.Store(false)
		must[twopc.JobInfo](t)(tr.c.PutJob(ctx, "j", "", nil))
	}
}

func TestProbesClusterMetrics(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, tr := range e.ts {
		t.Run(tr.name, func(t *testing.T) {
			if err := tr.c.Health(ctx); err != nil {
				t.Fatal(err)
			}
			if err := tr.c.Ready(ctx); err != nil {
				t.Fatal(err)
			}
			notReady := fmt.Errorf("no journal leader")
			e.ready.Store(&notReady)
			err := tr.c.Ready(ctx)
			wantCode(t, err, 503, api.CodeUnavailable)
			e.ready.Store(nil)
			st := must[api.ClusterStatus](t)(tr.c.Cluster(ctx))
			if st.Node != "n1" || st.Role != "leader" || len(st.Members) != 1 || st.LastIndex != 7 {
				t.Fatalf("cluster: got %+v", st)
			}
			r := tr.do(t, "GET", "/metrics", "")
			if r.status != 200 || !strings.Contains(string(r.body), "txsink_up 1") {
				t.Fatalf("metrics: got %s", r)
			}
			if r := tr.do(t, "HEAD", "/healthz", ""); r.status != 200 {
				t.Fatalf("HEAD /healthz: got %d", r.status)
			}
		})
	}
	// Without cluster status or metrics both are 404 not_found.
	e2 := newEnv(t, func(c *api.Config) { c.Cluster, c.Metrics = nil, nil })
	for _, tr := range e2.ts {
		_, err := tr.c.Cluster(ctx)
		wantCode(t, err, 404, api.CodeNotFound)
		if r := tr.do(t, "GET", "/metrics", ""); r.status != 404 || r.problem(t).Code != api.CodeNotFound {
			t.Fatalf("metrics without a handler: got %s, want 404 not_found", r)
		}
	}
}

func TestConfig(t *testing.T) {
	svc := newEnv(t).coord
	for _, cfg := range []api.Config{{MaxBodyBytes: -1}, {MaxRecordsPerCall: -1}, {Token: "a b"}} {
		if _, err := api.New(svc, cfg); err == nil {
			t.Errorf("New with %+v: got no error", cfg)
		}
	}
	if _, err := api.New(nil, api.Config{}); err == nil {
		t.Error("New(nil): got no error")
	}
	if d := api.DefaultConfig(); d.MaxBodyBytes != 32<<20 || d.MaxRecordsPerCall != 100000 || d.Validate() != nil {
		t.Errorf("DefaultConfig: got %+v", d)
	}
}

// TestCurlDefaultContentType: `curl -d '{...}'` sends a JSON object as
// application/x-www-form-urlencoded; the JSON-object endpoints take it, the
// records endpoint does not (curl -d @file would have merged its lines).
func TestCurlDefaultContentType(t *testing.T) {
	e := newEnv(t)
	form := []string{"Content-Type", "application/x-www-form-urlencoded"}
	for _, tr := range e.ts {
		job := "curl-" + tr.name
		if r := tr.do(t, "PUT", "/v1/jobs/"+job, `{"commit":"auto","sinks":["events"]}`, form...); r.status != 200 {
			t.Fatalf("%s: PUT job with curl's default type: got %s, want 200", tr.name, r)
		}
		r := tr.do(t, "POST", "/v1/jobs/"+job+"/writers/w/session", `{}`, form...)
		if r.status != 200 {
			t.Fatalf("%s: session: got %s, want 200", tr.name, r)
		}
		var s twopc.SessionInfo
		if err := json.Unmarshal(r.body, &s); err != nil {
			t.Fatal(err)
		}
		path := fmt.Sprintf("/v1/jobs/%s/writers/w/records?epoch=%d", job, s.Epoch)
		r = tr.do(t, "POST", path, values("a"), form...)
		if p := r.problem(t); r.status != 415 || !strings.Contains(p.Detail, "--data-binary") {
			t.Fatalf("%s: records with curl's default type: got %s, want 415 with a curl hint", tr.name, r)
		}
		if r := tr.do(t, "POST", path, values("a"), "Content-Type", "application/x-ndjson"); r.status != 200 {
			t.Fatalf("%s: records: got %s", tr.name, r)
		}
		cp := fmt.Sprintf("/v1/jobs/%s/writers/w/checkpoints/1?epoch=%d", job, s.Epoch)
		if r := tr.do(t, "POST", cp, `{"state":"MQ=="}`, form...); r.status != 200 || !strings.Contains(string(r.body), `"committed"`) {
			t.Fatalf("%s: checkpoint with curl's default type: got %s", tr.name, r)
		}
	}
}

func TestDeleteWriter(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for i, tr := range e.ts {
		t.Run(tr.name, func(t *testing.T) {
			c := tr.c
			job := fmt.Sprintf("del-%d", i)
			must[twopc.JobInfo](t)(c.PutJob(ctx, job, twopc.ModeExternal, []string{"other"}))
			s := must[twopc.SessionInfo](t)(c.OpenSession(ctx, job, "w", nil))
			must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, job, "w", s.Epoch, nil, []byte(`{"value":"a"}`)))
			must[twopc.CheckpointResult](t)(c.Checkpoint(ctx, job, "w", s.Epoch, 1, []byte("st"), ""))
			path := fmt.Sprintf("/v1/jobs/%s/writers/w", job)

			before := e.snapshot()
			r := tr.do(t, "DELETE", path, "")
			if r.status != 409 || r.problem(t).Code != api.CodeWriterInDoubt {
				t.Fatalf("delete with checkpoint 1 prepared: got %s, want 409 %s", r, api.CodeWriterInDoubt)
			}
			if after := e.snapshot(); after != before {
				t.Fatalf("refused delete changed state:\nbefore %s\nafter  %s", before, after)
			}
			must[twopc.CommitResult](t)(c.Commit(ctx, job, 1))

			r = tr.do(t, "DELETE", path, "")
			var d api.WriterDeleted
			if err := json.Unmarshal(r.body, &d); err != nil || r.status != 200 || !d.Deleted || d.Job != job || d.Writer != "w" {
				t.Fatalf("delete: got %s, want 200 deleted", r)
			}
			if info := must[twopc.JobInfo](t)(c.Job(ctx, job)); len(info.Writers) != 0 {
				t.Fatalf("writers after delete: got %+v, want none", info.Writers)
			}
			r = tr.do(t, "DELETE", path, "")
			if err := json.Unmarshal(r.body, &d); err != nil || r.status != 200 || d.Deleted {
				t.Fatalf("second delete: got %s, want 200 deleted:false", r)
			}
			if deleted, err := c.DeleteWriter(ctx, job, "w"); err != nil || deleted {
				t.Fatalf("client delete of a deleted writer: got %v, %v, want false, nil", deleted, err)
			}
			_, err := c.WriteNDJSON(ctx, job, "w", s.Epoch, nil, []byte(`{"value":"b"}`))
			wantCode(t, err, 409, api.CodeNoSession)
			// A new session starts from checkpoint 0; the old epoch stays fenced.
			s2 := must[twopc.SessionInfo](t)(c.OpenSession(ctx, job, "w", nil))
			if s2.Checkpoint != 0 || s2.State != nil || s2.Epoch <= s.Epoch {
				t.Fatalf("session after delete: got %+v, want checkpoint 0, no state, epoch > %d", s2, s.Epoch)
			}
			_, err = c.WriteNDJSON(ctx, job, "w", s.Epoch, nil, []byte(`{"value":"b"}`))
			wantCode(t, err, 409, api.CodeSessionFenced)

			r = tr.do(t, "DELETE", "/v1/jobs/nope/writers/w", "")
			if r.status != 404 || r.problem(t).Code != api.CodeJobNotFound {
				t.Fatalf("delete in an unknown job: got %s, want 404 job_not_found", r)
			}
			r = tr.do(t, "DELETE", "/v1/jobs/"+job+"/writers/.bad", "")
			if r.status != 400 {
				t.Fatalf("delete of a bad name: got %s, want 400", r)
			}
		})
	}
}

// TestGuaranteeField: the answers always name the guarantee, "" is
// exactly_once, and a PUT that repeats the job's own guarantee (or names
// none) is idempotent.
func TestGuaranteeField(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.ts[0].c
	eo := must[twopc.JobInfo](t)(c.PutJob(ctx, "eo", "", []string{"events"}))
	if eo.Guarantee != twopc.GuaranteeExactlyOnce {
		t.Fatalf("default guarantee: got %q, want exactly_once", eo.Guarantee)
	}
	for _, g := range []twopc.Guarantee{twopc.GuaranteeAtLeastOnce, twopc.GuaranteeNone} {
		info := must[twopc.JobInfo](t)(c.PutJobSpec(ctx, "g-"+string(g), api.JobRequest{Guarantee: g}))
		if info.Guarantee != g || info.Commit != twopc.ModeAuto {
			t.Fatalf("PUT %s: got %+v", g, info)
		}
		again := must[twopc.JobInfo](t)(c.PutJobSpec(ctx, "g-"+string(g), api.JobRequest{Guarantee: g}))
		if again.Guarantee != g {
			t.Fatalf("repeated PUT %s: got %+v", g, again)
		}
		got := must[twopc.JobInfo](t)(c.Job(ctx, "g-"+string(g)))
		if got.Guarantee != g {
			t.Fatalf("GET %s: got %+v", g, got)
		}
	}
	// Naming no guarantee for an existing at_least_once job means
	// exactly_once, which is a change: refused.
	if _, err := c.PutJob(ctx, "g-at_least_once", "", nil); err == nil || !strings.Contains(err.Error(), "mode_conflict") {
		t.Fatalf("PUT without guarantee of an at_least_once job: got %v, want 409 mode_conflict", err)
	}
	// A direct job's checkpoint says committed and names its guarantee;
	// the records reached the sink at the flush (answers are checked
	// against openapi.yaml).
	for i, g := range []twopc.Guarantee{twopc.GuaranteeAtLeastOnce, twopc.GuaranteeNone} {
		job := "g-" + string(g)
		s := must[twopc.SessionInfo](t)(c.OpenSession(ctx, job, "w", nil))
		before := len(committed(e.events))
		must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, job, "w", s.Epoch, nil, []byte(values(fmt.Sprint("d", i)))))
		cp := must[twopc.CheckpointResult](t)(c.Checkpoint(ctx, job, "w", s.Epoch, 1, []byte("st"), ""))
		if cp.Status != twopc.StatusCommitted || cp.Guarantee != g || len(cp.Branches) != 0 {
			t.Fatalf("%s checkpoint: %+v", g, cp)
		}
		if got := committed(e.events); len(got) != before+1 || got[len(got)-1] != fmt.Sprint("d", i) {
			t.Fatalf("%s: sink holds %v after the checkpoint", g, got)
		}
	}
	eoS := must[twopc.SessionInfo](t)(c.OpenSession(ctx, "eo", "w", nil))
	if r := e.ts[0].do(t, "POST", fmt.Sprintf("/v1/jobs/eo/writers/w/checkpoints/1?epoch=%d", eoS.Epoch), ""); r.status != http.StatusOK || strings.Contains(string(r.body), "guarantee") {
		t.Fatalf("an exactly_once checkpoint's answer names a guarantee: %s", r.body)
	}
	r := e.ts[0].do(t, "GET", "/v1/jobs", "")
	for _, want := range []string{`"guarantee":"exactly_once"`, `"guarantee":"at_least_once"`, `"guarantee":"none"`} {
		if !strings.Contains(string(r.body), want) {
			t.Fatalf("GET /v1/jobs: %s lacks %s", r.body, want)
		}
	}
}
