package api_test

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/txsink/txsink/api"
)

// observed is one Config.Observe call.
type observed struct {
	route string
	code  int
}

func TestObserveRoutePatternAndCode(t *testing.T) {
	var mu sync.Mutex
	var got []observed
	e := newEnv(t, func(c *api.Config) {
		c.Token = "tok"
		c.Observe = func(route string, code int, d time.Duration) {
			if d < 0 {
				t.Errorf("Observe(%s, %d): negative duration %v", route, code, d)
			}
			mu.Lock()
			got = append(got, observed{route, code})
			mu.Unlock()
		}
	})
	tr := e.ts[0]
	auth := []string{"Authorization", "Bearer tok"}
	for _, tc := range []struct {
		method, path string
		header       []string
		want         observed
	}{
		{"GET", "/v1/jobs", auth, observed{"GET /v1/jobs", 200}},
		{"PUT", "/v1/jobs/j1", auth, observed{"PUT /v1/jobs/{job}", 200}},
		{"GET", "/v1/jobs/nope", auth, observed{"GET /v1/jobs/{job}", 404}},
		{"GET", "/v1/jobs/j1", nil, observed{"GET /v1/jobs/{job}", 401}},
		{"POST", "/v1/jobs/j1/checkpoints/x/commit", auth, observed{"POST /v1/jobs/{job}/checkpoints/{n}/commit", 400}},
		{"GET", "/healthz", nil, observed{"GET /healthz", 200}},
		{"GET", "/no/such/thing", nil, observed{api.UnmatchedRoute, 404}},
		{"DELETE", "/v1/jobs", auth, observed{api.UnmatchedRoute, 405}},
	} {
		mu.Lock()
		got = got[:0]
		mu.Unlock()
		r := tr.do(t, tc.method, tc.path, "", tc.header...)
		// Observe runs after the answer is written: poll for it.
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			n := len(got)
			mu.Unlock()
			if n > 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		mu.Lock()
		if r.status != tc.want.code || !slices.Equal(got, []observed{tc.want}) {
			t.Errorf("%s %s: answered %d, observed %v; want %v", tc.method, tc.path, r.status, got, tc.want)
		}
		mu.Unlock()
	}
}
