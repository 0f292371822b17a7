package systemtest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/internal/kafkatest"
)

// TestExamplesPageviewsGo runs examples/pageviews-go as its README says
// (`go run ./examples/pageviews-go`, pointed at the test's dev sidecar): a
// run that crashes with a checkpoint's records sent and not checkpointed,
// then a run to the end. pv must grow by exactly the true counts of the
// clicks topic, and the pageviews topic's increments must sum to them.
func TestExamplesPageviewsGo(t *testing.T) {
	d := startDev(t)
	db := devDB(t, d.dsn)
	apps := []string{"app1", "app2", "app3", "app4", "app5"}
	before := pvViews(t, db, apps)
	flags := []string{"--sidecar", "http://" + d.httpAddr, "--brokers", d.kafkaAddr, "--events", "3000"}

	// Checkpoints every 500 events (--interval 0: no timer cuts one
	// short): the crash comes with the records of the third checkpoint
	// sent, so exactly 1000 events are committed.
	out, code := runExample(t, 3*time.Minute, nil, "go", append([]string{"run", "./examples/pageviews-go", "--crash-after", "1100", "--interval", "0"}, flags...)...)
	if code == 0 || !strings.Contains(out, "simulating a crash") {
		t.Fatalf("crash run: got exit %d, want a crash:\n%s", code, out)
	}
	sum := 0
	for _, v := range diffViews(pvViews(t, db, apps), before) {
		sum += v
	}
	if sum != 1000 {
		t.Fatalf("after the crash: pv grew by %d views, want 1000 (two checkpoints of 500)", sum)
	}

	out, code = runExample(t, 3*time.Minute, nil, "go", append([]string{"run", "./examples/pageviews-go"}, flags...)...)
	if code != 0 {
		t.Fatalf("second run: exit %d:\n%s", code, out)
	}
	wantLines(t, "second run", out, "resuming after checkpoint 2", `expected totals from all 3000 events in "clicks"`)

	// The truth, read independently from the input topic.
	ctx := context.Background()
	truth := map[string]int{}
	for _, a := range apps {
		truth[a] = 0
	}
	for _, r := range kafkatest.ReadCommitted(ctx, t, d.kafkaAddr, "clicks", 3000) {
		var c struct {
			App string `json:"app"`
		}
		if err := json.Unmarshal(r.Value, &c); err != nil {
			t.Fatalf("clicks: %v", err)
		}
		truth[c.App]++
	}
	if got := diffViews(pvViews(t, db, apps), before); !mapsEqual(got, truth) {
		t.Errorf("pv grew by %v, want the true counts %v", got, truth)
	}
	for _, a := range apps {
		wantLines(t, "second run", out, fmt.Sprintf("  %-6s %d\n", a, truth[a]))
	}

	// Kafka: each (writer, checkpoint, app) once; views sum to the truth.
	sums := map[string]int{}
	for _, a := range apps {
		sums[a] = 0
	}
	seen := map[string]bool{}
	// The number of increments is not known in advance: read until 2 s pass
	// without a new one (everything was committed before the run ended).
	for _, r := range kafkatest.ReadCommittedWith(ctx, t, d.kafkaAddr, "pageviews", 1, kafkatest.ReadOptions{Linger: 2 * time.Second}) {
		var inc struct {
			App        string `json:"app"`
			Views      int    `json:"views"`
			Writer     string `json:"writer"`
			Checkpoint int64  `json:"checkpoint"`
		}
		if err := json.Unmarshal(r.Value, &inc); err != nil {
			t.Fatalf("pageviews: %v", err)
		}
		k := fmt.Sprintf("%s/%d/%s", inc.Writer, inc.Checkpoint, inc.App)
		if seen[k] {
			t.Errorf("pageviews: increment %s appears twice", k)
		}
		seen[k] = true
		sums[inc.App] += inc.Views
	}
	if !mapsEqual(sums, truth) {
		t.Errorf("pageviews increments sum to %v, want %v", sums, truth)
	}
}
