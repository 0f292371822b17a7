package api_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

// TestOpenSessionLimits: over max_writers_per_job or max_sessions a session
// open answers 429 backpressure whose detail names the limit; a writer
// reopening its own session is never refused.
func TestOpenSessionLimits(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	coord, err := twopc.NewCoordinator(twopc.Config{Node: "n1", Journal: e.journal, Machine: e.journal.Machine(),
		Sinks: map[string]twopc.Sink{"events": e.events, "other": e.other}, MaxSessions: 2, MaxWritersPerJob: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(coord.Close)
	e.serve(api.Config{}, coord)
	tcp, unix := e.ts[0].c, e.ts[1].c
	for _, j := range []string{"j1", "j2", "j3"} {
		must[twopc.JobInfo](t)(tcp.PutJob(ctx, j, "", []string{"events"}))
	}
	must[twopc.SessionInfo](t)(tcp.OpenSession(ctx, "j1", "a", nil))
	_, err = tcp.OpenSession(ctx, "j1", "b", nil)
	wantLimit(t, err, "max_writers_per_job")
	must[twopc.SessionInfo](t)(unix.OpenSession(ctx, "j2", "a", nil))
	_, err = unix.OpenSession(ctx, "j3", "a", nil)
	wantLimit(t, err, "max_sessions")
	must[twopc.SessionInfo](t)(unix.OpenSession(ctx, "j1", "a", nil))
	if info := must[twopc.JobInfo](t)(tcp.Job(ctx, "j3")); len(info.Writers) != 0 {
		t.Fatalf("a refused open created writers %+v", info.Writers)
	}
}

func wantLimit(t *testing.T, err error, limit string) {
	t.Helper()
	wantCode(t, err, 429, api.CodeBackpressure)
	var ce *client.Error
	if errors.As(err, &ce) && !strings.Contains(ce.Detail, limit) {
		t.Fatalf("backpressure detail %q does not name %s", ce.Detail, limit)
	}
}
