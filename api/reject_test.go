package api_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

// A record a sink refuses for good is 422 record_rejected naming its line;
// the call changed nothing and the session goes on without the record.
func TestRecordRejected(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, tr := range e.ts {
		t.Run(tr.name, func(t *testing.T) {
			c := tr.c
			job := "rej-" + tr.name
			must[twopc.JobInfo](t)(c.PutJob(ctx, job, "", []string{"other"}))
			ep := must[twopc.SessionInfo](t)(c.OpenSession(ctx, job, "w", nil)).Epoch
			v := func(x string) string { return x + "-" + tr.name }
			rec := func(xs ...string) []byte {
				var b []byte
				for _, x := range xs {
					b = fmt.Appendf(b, "{\"value\":%q}\n", v(x))
				}
				return b
			}
			must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, job, "w", ep, nil, rec("a")))
			e.other.RejectValue(fmt.Sprintf("%q", v("poison")))
			defer e.other.RejectValue("")
			before := e.snapshot()
			r := tr.do(t, "POST", fmt.Sprintf("/v1/jobs/%s/writers/w/records?epoch=%d", job, ep),
				string(rec("b", "poison", "c")), "Content-Type", "application/x-ndjson")
			p := r.problem(t)
			if r.status != 422 || p.Code != api.CodeRecordRejected || p.Record != 2 {
				t.Fatalf("got %s, want 422 record_rejected with record 2", r)
			}
			if after := e.snapshot(); after != before {
				t.Fatalf("a rejected call changed state:\nbefore %s\nafter  %s", before, after)
			}
			// The Go client exposes the line too.
			_, err := c.WriteNDJSON(ctx, job, "w", ep, nil, rec("poison"))
			if ce, ok := errors.AsType[*client.Error](err); !ok || ce.Status != 422 || ce.Code != api.CodeRecordRejected || ce.Record != 1 {
				t.Fatalf("client: got %v, want 422 record_rejected record 1", err)
			}
			// The app skips the record; the same session goes on.
			must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, job, "w", ep, nil, rec("b", "c")))
			if res := must[twopc.CheckpointResult](t)(c.Checkpoint(ctx, job, "w", ep, 1, nil, "")); res.Status != twopc.StatusCommitted {
				t.Fatalf("checkpoint: got %s, want committed", res.Status)
			}
			got := committed(e.other)
			for _, x := range []string{"a", "b", "c"} {
				if n := countOf(got, v(x)); n != 1 {
					t.Fatalf("committed %v: %q %d times, want once", got, v(x), n)
				}
			}
			if slices.Contains(got, v("poison")) {
				t.Fatalf("committed %v, want no poison", got)
			}
		})
	}
}

// An invalid record's 400 names its line in the problem's record field.
func TestInvalidRecordLine(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.ts[0].c
	must[twopc.JobInfo](t)(c.PutJob(ctx, "j", "", []string{"events"}))
	ep := must[twopc.SessionInfo](t)(c.OpenSession(ctx, "j", "w", nil)).Epoch
	r := e.ts[0].do(t, "POST", fmt.Sprintf("/v1/jobs/j/writers/w/records?epoch=%d", ep),
		"{\"value\":\"a\"}\n{\"value\":\"b\",\"topic\":\"nope\"}\n", "Content-Type", "application/x-ndjson")
	if p := r.problem(t); r.status != 400 || p.Code != api.CodeInvalidRequest || p.Record != 2 {
		t.Fatalf("got %s, want 400 invalid_request with record 2", r)
	}
}

func countOf(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

// A rejection found only at prepare answers the checkpoint with 422, as the
// spec lists it for the checkpoint call.
func TestRecordRejectedAtCheckpoint(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.ts[0].c
	must[twopc.JobInfo](t)(c.PutJob(ctx, "j", "", []string{"other"}))
	ep := must[twopc.SessionInfo](t)(c.OpenSession(ctx, "j", "w", nil)).Epoch
	must[twopc.WriteResult](t)(c.WriteNDJSON(ctx, "j", "w", ep, nil, []byte(`{"value":"a"}`)))
	e.other.FailPrepare = fmt.Errorf("%w: %w: fake: the broker refused a record", twopc.ErrRecordRejected, twopc.ErrSinkFailure)
	_, err := c.Checkpoint(ctx, "j", "w", ep, 1, nil, "")
	e.other.FailPrepare = nil
	wantCode(t, err, 422, api.CodeRecordRejected)
	if got := committed(e.other); len(got) != 0 {
		t.Fatalf("committed %v, want nothing", got)
	}
	_, err = c.WriteNDJSON(ctx, "j", "w", ep, nil, []byte(`{"value":"b"}`))
	wantCode(t, err, 502, api.CodeSinkFailure)
}
