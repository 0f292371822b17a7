package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

// Offsets in a checkpoint body commit with the checkpoint in the Kafka-like
// sink they name (events takes offsets; other, standing in for MySQL, does
// not); invalid ones are 400 and change nothing.
func TestCheckpointOffsets(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	tr := e.ts[0]
	c := tr.c
	must[twopc.JobInfo](t)(c.PutJob(ctx, "j", "", []string{"events", "other"}))
	must[twopc.JobInfo](t)(c.PutJob(ctx, "j2", "", []string{"other"}))
	ep := must[twopc.SessionInfo](t)(c.OpenSession(ctx, "j", "w", nil)).Epoch
	ep2 := must[twopc.SessionInfo](t)(c.OpenSession(ctx, "j2", "w", nil)).Epoch
	must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, "j", "w", ep, nil, []byte(`{"sink":"other","value":"o1"}`)))

	path := fmt.Sprintf("/v1/jobs/j/writers/w/checkpoints/1?epoch=%d", ep)
	many := make([]string, twopc.MaxOffsetPartitions+1)
	for i := range many {
		many[i] = fmt.Sprintf(`"%d":1`, i)
	}
	for _, tc := range []struct {
		name, path, body, code string
	}{
		{"not kafka", path, `{"offsets":{"sink":"other","group":"g","topics":{"in":{"0":1}}}}`, api.CodeInvalidRequest},
		{"unknown sink", path, `{"offsets":{"sink":"nope","group":"g","topics":{"in":{"0":1}}}}`, api.CodeUnknownSink},
		{"sink not in job", fmt.Sprintf("/v1/jobs/j2/writers/w/checkpoints/1?epoch=%d", ep2),
			`{"offsets":{"sink":"events","group":"g","topics":{"in":{"0":1}}}}`, api.CodeUnknownSink},
		{"bad sink name", path, `{"offsets":{"sink":"-x","group":"g","topics":{"in":{"0":1}}}}`, api.CodeInvalidRequest},
		{"no group", path, `{"offsets":{"sink":"events","topics":{"in":{"0":1}}}}`, api.CodeInvalidRequest},
		{"no topics", path, `{"offsets":{"sink":"events","group":"g","topics":{}}}`, api.CodeInvalidRequest},
		{"no partitions", path, `{"offsets":{"sink":"events","group":"g","topics":{"in":{}}}}`, api.CodeInvalidRequest},
		{"negative partition", path, `{"offsets":{"sink":"events","group":"g","topics":{"in":{"-1":1}}}}`, api.CodeInvalidRequest},
		{"negative offset", path, `{"offsets":{"sink":"events","group":"g","topics":{"in":{"0":-4}}}}`, api.CodeInvalidRequest},
		{"bad generation", path, `{"offsets":{"sink":"events","group":"g","generation":-7,"topics":{"in":{"0":1}}}}`, api.CodeInvalidRequest},
		{"too many partitions", path, `{"offsets":{"sink":"events","group":"g","topics":{"in":{` + strings.Join(many, ",") + `}}}}`, api.CodeInvalidRequest},
		{"partition not a number", path, `{"offsets":{"sink":"events","group":"g","topics":{"in":{"x":1}}}}`, api.CodeMalformedBody},
		{"partition overflow", path, `{"offsets":{"sink":"events","group":"g","topics":{"in":{"2147483648":1}}}}`, api.CodeMalformedBody},
		{"fractional offset", path, `{"offsets":{"sink":"events","group":"g","topics":{"in":{"0":1.5}}}}`, api.CodeMalformedBody},
		{"unknown field", path, `{"offsets":{"sink":"events","group":"g","topics":{"in":{"0":1}},"extra":1}}`, api.CodeMalformedBody},
		{"offsets not an object", path, `{"offsets":[1]}`, api.CodeMalformedBody},
	} {
		before := e.snapshot()
		r := tr.do(t, "POST", tc.path, tc.body, "Content-Type", "application/json")
		if p := r.problem(t); r.status != 400 || p.Code != tc.code {
			t.Errorf("%s: got %s, want 400 %s", tc.name, r, tc.code)
		}
		if after := e.snapshot(); after != before {
			t.Fatalf("%s: a refused checkpoint changed state:\nbefore %s\nafter  %s", tc.name, before, after)
		}
	}

	// Valid: the offsets get an events branch of their own and commit
	// with the record in other.
	gen := int32(4)
	o := &twopc.Offsets{Sink: "events", Group: "g", Topics: map[string]map[int32]int64{"in": {0: 10, 3: 2}},
		Generation: &gen, MemberID: "m-1", GroupInstanceID: "i-1"}
	res, err := c.CheckpointWith(ctx, "j", "w", ep, 1, api.CheckpointRequest{State: []byte("s1"), Offsets: o})
	if err != nil || res.Status != twopc.StatusCommitted || len(res.Branches) != 2 {
		t.Fatalf("checkpoint with offsets: %+v %v, want committed with 2 branches", res, err)
	}
	if got := e.kev.GroupOffsets("g"); !maps.Equal(got["in"], o.Topics["in"]) || len(got) != 1 {
		t.Fatalf("group offsets %v, want %v", got, o.Topics)
	}
	if got := committed(e.other); !contains(got, "o1") {
		t.Fatalf("other committed %v, want o1", got)
	}
	// The retry repeats them; other offsets are 409 checkpoint_order.
	if _, err := c.CheckpointWith(ctx, "j", "w", ep, 1, api.CheckpointRequest{State: []byte("s1"), Offsets: o}); err != nil {
		t.Fatalf("retry: %v", err)
	}
	o2 := *o
	o2.Topics = map[string]map[int32]int64{"in": {0: 11}}
	_, err = c.CheckpointWith(ctx, "j", "w", ep, 1, api.CheckpointRequest{State: []byte("s1"), Offsets: &o2})
	wantCode(t, err, 409, api.CodeCheckpointOrder)

	// The Writer: PrepareWith in external mode commits them with the
	// coordinator's commit only.
	job := must[*client.Job](t)(c.UseJob(ctx, "x", twopc.ModeExternal, []string{"events"}))
	w := must[*client.Writer](t)(job.OpenWriter(ctx, "w", nil))
	px := &twopc.Offsets{Sink: "events", Group: "gx", Topics: map[string]map[int32]int64{"in": {1: 5}}}
	if r, err := w.PrepareWith(ctx, 1, nil, px); err != nil || r.Status != twopc.StatusPrepared {
		t.Fatalf("PrepareWith: %+v %v", r, err)
	}
	if got := e.kev.GroupOffsets("gx"); len(got) != 0 {
		t.Fatalf("prepared: group offsets %v, want none yet", got)
	}
	if r, err := c.Commit(ctx, "x", 1); err != nil || r.Status != twopc.StatusCommitted {
		t.Fatalf("commit: %+v %v", r, err)
	}
	if got := e.kev.GroupOffsets("gx"); !maps.Equal(got["in"], px.Topics["in"]) {
		t.Fatalf("committed: group offsets %v, want %v", got, px.Topics)
	}
	if r, err := w.CheckpointWith(ctx, 2, nil, nil); err != nil || r.Status != twopc.StatusPrepared {
		t.Fatalf("CheckpointWith without offsets: %+v %v", r, err)
	}
}

// FuzzCheckpointOffsets sends arbitrary checkpoint bodies: the answer is a
// success whose offsets (decoded by encoding/json, the reference) are valid
// and now the group's, or a 4xx that changed nothing; never a 5xx.
func FuzzCheckpointOffsets(f *testing.F) {
	for _, s := range []string{
		`{"offsets":{"sink":"events","group":"g","topics":{"in":{"0":1}}}}`,
		`{"state":"c3Q=","offsets":{"sink":"events","group":"g","topics":{"in":{"0":1,"7":99},"b":{"2":0}},"generation":3,"member_id":"m","group_instance_id":"i"}}`,
		`{"offsets":{"sink":"other","group":"g","topics":{"in":{"0":1}}}}`,
		`{"offsets":{"sink":"events","group":"","topics":{"in":{"0":1}}}}`,
		`{"offsets":{"sink":"events","group":"g","topics":{"in":{"-1":1}}}}`,
		`{"offsets":{"sink":"events","group":"g","topics":{"in":{"0":-1}}}}`,
		`{"offsets":{"sink":"events","group":"g","topics":{"in":{"0":1e3}}}}`,
		`{"offsets":{"sink":"events","group":"g","topics":{"in":{" 1":1}}}}`,
		`{"offsets":{"sink":"events","group":"g","topics":{"in":{"01":1}}}}`,
		`{"offsets":{"sink":"events","group":"g\u0000","topics":{"in":{"0":1}}}}`,
		`{"offsets":null}`,
		`{"offsets":{"sink":"events","group":"g","topics":null}}`,
		`{"offsets":{"sink":"events","group":"g","topics":{"in":{"0":1}}},"offsets":{}}`,
		`{"wait":"prepared","offsets":{"sink":"events","group":"g","topics":{"in":{"0":1}}}}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		// A sidecar per input: the env's cleanups belong to its test.
		e := newEnv(t)
		ctx := context.Background()
		c := e.ts[0].c
		must[twopc.JobInfo](t)(c.PutJob(ctx, "j", "", []string{"events", "other"}))
		ep := must[twopc.SessionInfo](t)(c.OpenSession(ctx, "j", "w", nil)).Epoch
		before := e.snapshot()
		r := e.ts[0].do(t, "POST", fmt.Sprintf("/v1/jobs/j/writers/w/checkpoints/1?epoch=%d", ep), body, "Content-Type", "application/json")
		switch {
		case r.status >= 500:
			t.Fatalf("body %q: got %s", body, r)
		case r.status >= 400:
			if after := e.snapshot(); after != before {
				t.Fatalf("body %q: %d changed state:\nbefore %s\nafter  %s", body, r.status, before, after)
			}
			return
		}
		var req api.CheckpointRequest
		if strings.Trim(body, " \t\r\n") == "" {
			return // the body is optional
		}
		dec := json.NewDecoder(strings.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			t.Fatalf("body %q: accepted (%s) but encoding/json says %v", body, r, err)
		}
		if req.Offsets == nil {
			return
		}
		if err := twopc.CheckOffsets(req.Offsets); err != nil || req.Offsets.Sink != "events" {
			t.Fatalf("body %q: accepted (%s) offsets that are invalid: %v", body, r, err)
		}
		// wait=prepared in auto mode commits in the background.
		deadline := time.Now().Add(5 * time.Second)
		for {
			got := e.kev.GroupOffsets(req.Offsets.Group)
			ok := len(got) == len(req.Offsets.Topics)
			for topic, ps := range req.Offsets.Topics {
				ok = ok && maps.Equal(got[topic], ps)
			}
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("body %q: accepted (%s), group offsets %v, want %v", body, r, got, req.Offsets.Topics)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}
