package client

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/twopc"
)

// TestUseJobSpecSendsGuarantee: UseJobSpec and PutJobSpec send the
// guarantee, PutJob/UseJob send none (the sidecar's default), and the
// answer's guarantee reaches Job.Info.
func TestUseJobSpecSendsGuarantee(t *testing.T) {
	var bodies []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		bodies = append(bodies, string(b))
		g := "exactly_once"
		if strings.Contains(string(b), `"guarantee":"at_least_once"`) {
			g = "at_least_once"
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"name":"j","commit":"auto","sinks":["a"],"guarantee":"`+g+`","writers":[]}`)
	}))
	t.Cleanup(srv.Close)
	c := New(srv.URL)
	ctx := context.Background()
	job, err := c.UseJobSpec(ctx, "j", api.JobRequest{Guarantee: twopc.GuaranteeAtLeastOnce})
	if err != nil {
		t.Fatal(err)
	}
	if job.Info().Guarantee != twopc.GuaranteeAtLeastOnce {
		t.Fatalf("Info: %+v", job.Info())
	}
	if _, err := c.UseJob(ctx, "j", twopc.ModeAuto, nil); err != nil {
		t.Fatal(err)
	}
	info, err := c.PutJobSpec(ctx, "j", api.JobRequest{Commit: twopc.ModeAuto, Guarantee: twopc.GuaranteeNone})
	if err != nil {
		t.Fatal(err)
	}
	if info.Guarantee != twopc.GuaranteeExactlyOnce {
		t.Fatalf("PutJobSpec answer: %+v", info)
	}
	want := []string{`{"guarantee":"at_least_once"}`, `{"commit":"auto"}`, `{"commit":"auto","guarantee":"none"}`}
	if len(bodies) != len(want) {
		t.Fatalf("bodies %q", bodies)
	}
	for i := range want {
		if strings.TrimSpace(bodies[i]) != want[i] {
			t.Errorf("call %d sent %s, want %s", i+1, bodies[i], want[i])
		}
	}
}
