package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txsink/txsink/twopc"
)

// A stub sidecar that answers the records call with the given problems
// first, then 200; it records each call's seq. The real sidecar's side of
// these calls is tested in api/ and systemtest/; this is the retry loop.
func stub(t *testing.T, problems ...string) (*Client, *[]string) {
	t.Helper()
	var calls atomic.Int64
	var seqs []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPut:
			fmt.Fprint(w, `{"name":"j","commit":"auto","sinks":["a"],"writers":[]}`)
		case strings.HasSuffix(r.URL.Path, "/session"):
			fmt.Fprint(w, `{"epoch":3,"checkpoint":0,"state":null,"status":"none","data_loss":[]}`)
		default:
			seqs = append(seqs, r.URL.Query().Get("seq"))
			i := int(calls.Add(1)) - 1
			if i < len(problems) {
				p := problems[i]
				var status int
				var code, extra string
				fmt.Sscanf(p, "%d %s", &status, &code)
				if code == "unavailable_owner" {
					code, extra = "unavailable", `,"owner":"n2"`
				}
				w.Header().Set("Content-Type", "application/problem+json")
				w.Header().Set("Retry-After", "0")
				w.WriteHeader(status)
				fmt.Fprintf(w, `{"status":%d,"code":%q%s}`, status, code, extra)
				return
			}
			fmt.Fprint(w, `{"accepted":1,"seq":1}`)
		}
	}))
	t.Cleanup(srv.Close)
	return New(srv.URL), &seqs
}

func TestWriterRetries(t *testing.T) {
	fast := Retry{Attempts: 3, Min: time.Millisecond, Max: 4 * time.Millisecond}
	for _, tc := range []struct {
		name     string
		problems []string
		wantErr  string // "" for success
		calls    int
	}{
		{"429 then ok", []string{"429 backpressure"}, "", 2},
		{"503 no leader twice then ok", []string{"503 unavailable", "503 unavailable"}, "", 3},
		{"503 naming an owner is not retried", []string{"503 unavailable_owner"}, "reopen", 1},
		{"409 fenced is not retried", []string{"409 session_fenced"}, "reopen", 1},
		{"400 is not retried", []string{"400 invalid_request"}, "invalid_request", 1},
		{"gives up after the attempts", []string{"429 backpressure", "429 backpressure", "429 backpressure", "429 backpressure"}, "gave up after 3 attempts", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, seqs := stub(t, tc.problems...)
			ctx := context.Background()
			job, err := c.UseJob(ctx, "j", twopc.ModeAuto, nil)
			if err != nil {
				t.Fatal(err)
			}
			w, err := job.WithRetry(fast).OpenWriter(ctx, "w", nil)
			if err != nil {
				t.Fatal(err)
			}
			_, err = w.Write(ctx, &twopc.Record{Sink: "a", Value: []byte(`"x"`)})
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("got %v, want success", err)
			case tc.wantErr == "reopen" && !errors.Is(err, ErrReopen):
				t.Fatalf("got %v, want an error matching ErrReopen", err)
			case tc.wantErr != "" && tc.wantErr != "reopen" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("got %v, want an error with %q", err, tc.wantErr)
			}
			if len(*seqs) != tc.calls {
				t.Fatalf("got %d records calls, want %d", len(*seqs), tc.calls)
			}
			for i, s := range *seqs {
				if s != "1" {
					t.Fatalf("call %d had seq %q, want every retry to repeat seq 1", i+1, s)
				}
			}
		})
	}
}

// A retry waits at least what Retry-After asks and stops when the context
// ends.
func TestWriterRetryStopsWithContext(t *testing.T) {
	r := Retry{Attempts: 10, Min: time.Hour, Max: time.Hour}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	calls := 0
	err := r.do(ctx, func() error {
		calls++
		return &Error{Status: http.StatusTooManyRequests, Code: "backpressure"}
	})
	if calls != 1 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %d calls and %v, want 1 call and the context's deadline", calls, err)
	}
}
