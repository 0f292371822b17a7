package systemtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/internal/testenv"
	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// anySink is a fake sink that also takes MySQL-style records (stmt, args),
// as the examples write them to their "db" sink.
type anySink struct{ *twopctest.Sink }

func (anySink) Validate(*twopc.Record) error { return nil }

// TestExamplesStopOnDataLoss runs the page-view examples against the real
// API and coordinator over fake sinks whose "events" transaction of the
// second checkpoint is aborted between the journal's decision and the
// commit (as Kafka's transaction timeout would): the checkpoint answers 502
// data_loss, a later session reports the lost checkpoint, and both examples
// stop with exit status 3 instead of counting on.
func TestExamplesStopOnDataLoss(t *testing.T) {
	needTool(t, "python3", "apt-get install python3 (≥ 3.9)")
	events := twopctest.NewSink("events", 2)
	db := anySink{twopctest.NewSink("db", 2)}
	j := twopctest.NewJournal(twopc.NewMachine())
	var checkpoints atomic.Int64
	coord, err := twopc.NewCoordinator(twopc.Config{Node: "n1", Journal: j, Machine: j.Machine(),
		Sinks: map[string]twopc.Sink{"events": events, "db": db},
		Failpoint: func(p string) {
			if p == "after-journal" && checkpoints.Add(1) == 2 {
				for _, id := range events.Branches(twopctest.Prepared) {
					events.Expire(id)
				}
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(coord.Close)
	srv, err := api.New(coord, api.Config{})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "txsink-loss") // short: Unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	ln, err := api.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, srv, ln)

	input := filepath.Join(t.TempDir(), "clicks.ndjson")
	py := []string{"examples/pageviews-python/pageviews.py", "--socket", sock, "--input", input, "--events", "1000", "--every", "250"}
	out, code := runExample(t, 2*time.Minute, nil, "python3", py...)
	if code != 3 || !strings.Contains(out, "checkpoint 1: lines 1-250 committed") || !strings.Contains(out, "DATA LOSS") ||
		!strings.Contains(out, `"code": "data_loss"`) {
		t.Fatalf("pageviews.py: exit status %d, want 3 after checkpoint 1 committed and 2 reported as data loss\n%s", code, out)
	}
	// A rerun restores checkpoint 2, which lost data: the session says so.
	out, code = runExample(t, 2*time.Minute, nil, "python3", py...)
	if code != 3 || !strings.Contains(out, "checkpoints [2] lost data") || strings.Contains(out, "resuming at line") {
		t.Fatalf("pageviews.py rerun: exit status %d, want 3 at the session open reporting checkpoint 2\n%s", code, out)
	}
	// The Go example, as the same writer of the same job, stops at its
	// session too (before it needs Kafka).
	// Built, not `go run`: go run answers 1 for any failing exit status.
	bin := filepath.Join(t.TempDir(), "pageviews")
	if out, code := runExample(t, 3*time.Minute, nil, "go", "build", "-o", bin, "./examples/pageviews-go"); code != 0 {
		t.Fatalf("go build ./examples/pageviews-go: exit status %d\n%s", code, out)
	}
	out, code = runExample(t, time.Minute, nil, bin, "count",
		"--sidecar", "unix://"+sock, "--job", "pageviews-py", "--writer", "0", "--brokers", "127.0.0.1:1")
	if code != 3 || !strings.Contains(out, "DATA LOSS reported by the sidecar") {
		t.Fatalf("pageviews-go count: exit status %d, want 3 reporting data loss\n%s", code, out)
	}
	if got := fmt.Sprint(checkpoints.Load()); got != "2" {
		t.Fatalf("journaled %s checkpoints, want 2 (nothing after the loss)", got)
	}
}
