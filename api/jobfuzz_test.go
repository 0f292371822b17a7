package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// FuzzJobBody sends arbitrary bodies to PUT /v1/jobs/{job} (each a new
// job) and checks the invariants of the guarantee field: never a 5xx; a
// refused body creates nothing and answers problem+json with a code; an
// accepted one answers a known guarantee, the one the body named ("":
// exactly_once), and only with commit auto unless exactly_once. Run
// longer with: go test ./api -run '^$' -fuzz FuzzJobBody -fuzztime 30s
func FuzzJobBody(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"guarantee":"exactly_once"}`, `{"guarantee":"at_least_once"}`, `{"guarantee":"none"}`,
		`{"guarantee":""}`, `{"guarantee":null}`, `{"guarantee":"NONE"}`, `{"guarantee":"at_least_once "}`,
		`{"guarantee":1}`, `{"guarantee":["none"]}`, `{"guarantee":"none","commit":"external"}`,
		`{"guarantee":"at_least_once","commit":"auto","sinks":["events"]}`, `{"guarantee":"none","guarantee":"x"}`,
		`{"guarantee":"\u006eone"}`, `{"guarantee":"none\u0000"}`, `{"Guarantee":"none"}`, `{"guarantee":"none"} {}`,
		`{"guarantee":"exactly_once","commit":"external","sinks":["other"]}`, `{"sinks":["nope"],"guarantee":"none"}`,
	} {
		f.Add([]byte(s))
	}
	ev := twopctest.NewSink("events", 1)
	ot := twopctest.NewSink("other", 2)
	j := twopctest.NewJournal(twopc.NewMachine())
	coord, err := twopc.NewCoordinator(twopc.Config{Node: "n1", Journal: j, Machine: j.Machine(),
		Sinks: map[string]twopc.Sink{"events": ev, "other": ot}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(coord.Close)
	srv, err := api.New(coord, api.Config{MaxBodyBytes: 64 << 10, MaxRecordsPerCall: 1000})
	if err != nil {
		f.Fatal(err)
	}
	h := srv.Handler()
	var n atomic.Int64
	f.Fuzz(func(t *testing.T, body []byte) {
		job := fmt.Sprintf("fz%d", n.Add(1))
		req := httptest.NewRequest(http.MethodPut, "/v1/jobs/"+job, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		res := rec.Result()
		if res.StatusCode >= 500 {
			t.Fatalf("%q: status %d: %s", body, res.StatusCode, rec.Body)
		}
		if res.StatusCode != http.StatusOK {
			var p api.Problem
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || p.Code == "" || p.Status != res.StatusCode {
				t.Fatalf("%q: status %d with body %s: want problem+json with a code", body, res.StatusCode, rec.Body)
			}
			if _, err := coord.Job(job); err == nil {
				t.Fatalf("%q: refused with %d, yet job %s exists", body, res.StatusCode, job)
			}
			return
		}
		var info twopc.JobInfo
		if err := json.Unmarshal(rec.Body.Bytes(), &info); err != nil {
			t.Fatalf("%q: 200 with body %s: %v", body, rec.Body, err)
		}
		if !info.Guarantee.Valid() {
			t.Fatalf("%q: answered guarantee %q", body, info.Guarantee)
		}
		if info.Guarantee != twopc.GuaranteeExactlyOnce && info.Commit != twopc.ModeAuto {
			t.Fatalf("%q: accepted guarantee %s with commit %s", body, info.Guarantee, info.Commit)
		}
		// What encoding/json reads from the accepted body is what was stored.
		var asked struct {
			Guarantee *string `json:"guarantee"`
		}
		if len(bytes.TrimSpace(body)) > 0 { // no body: every default
			if err := json.Unmarshal(body, &asked); err != nil {
				t.Fatalf("%q: accepted, but encoding/json cannot read it: %v", body, err)
			}
		}
		want := twopc.GuaranteeExactlyOnce
		if asked.Guarantee != nil && *asked.Guarantee != "" {
			want = twopc.Guarantee(*asked.Guarantee)
		}
		if info.Guarantee != want {
			t.Fatalf("%q: stored guarantee %q, the body asked for %q", body, info.Guarantee, want)
		}
		if got, err := coord.Job(job); err != nil || got.Guarantee != want {
			t.Fatalf("%q: GET after PUT: %+v %v", body, got, err)
		}
	})
}
