package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// obsDir is the observability kit: deploy/observability.
var obsDir = filepath.Join("..", "..", "deploy", "observability")

// TestObservabilityKit checks deploy/observability against this binary:
//   - promtool accepts the alert rules and the example config, and the
//     rules' unit tests (alerts_test.yml) pass: each alert fires on a
//     history that should fire it and stays quiet otherwise;
//   - every dashboard query parses as PromQL (promtool checks them as
//     recording rules) and the dashboard is well formed;
//   - every txsink_ metric the dashboard and the rules name is one the
//     sidecar exports, so a renamed metric cannot leave a blank panel or a
//     silent alert behind.
//
// promtool comes with Debian's prometheus package (.ci/run installs it).
// TXSINK_TEST_SKIP_PROMTOOL=1 skips only the promtool parts, loudly.
func TestObservabilityKit(t *testing.T) {
	dash := readDashboard(t)
	rules, err := os.ReadFile(filepath.Join(obsDir, "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("metrics exist", func(t *testing.T) {
		exported := exportedMetrics(t)
		used := map[string]bool{}
		for _, q := range dash.queries() {
			for _, m := range metricNames(q.expr) {
				used[m] = true
			}
		}
		for _, m := range metricNames(string(rules)) {
			used[m] = true
		}
		if len(used) < 10 {
			t.Fatalf("the kit names only %d txsink metrics; the parse is broken", len(used))
		}
		for m := range used {
			if !exported[m] {
				t.Errorf("deploy/observability uses %s, which the sidecar does not export", m)
			}
		}
		// What the kit must show (issue: throughput, checkpoint latency,
		// branches by state, oldest prepared against the timeout, data
		// loss, raft leader and apply latency).
		for _, m := range []string{"txsink_records_total", "txsink_checkpoint_phase_seconds", "txsink_branches",
			"txsink_oldest_prepared_branch_seconds", "txsink_kafka_transaction_timeout_seconds",
			"txsink_data_loss_total", "txsink_raft_leader", "txsink_journal_apply_seconds", "txsink_records_failed_total"} {
			if !used[m] {
				t.Errorf("the dashboard and rules never show %s", m)
			}
		}
	})

	t.Run("dashboard", func(t *testing.T) {
		if dash.Title == "" || dash.UID == "" {
			t.Errorf("dashboard title %q uid %q: both are needed for import", dash.Title, dash.UID)
		}
		ids := map[int]bool{}
		for _, p := range dash.Panels {
			if ids[p.ID] {
				t.Errorf("panel id %d used twice", p.ID)
			}
			ids[p.ID] = true
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			if p.Type != "row" && p.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q datasource %q, want the ${datasource} variable", p.Title, p.Datasource.UID)
			}
			if g := p.GridPos; g.X < 0 || g.W <= 0 || g.X+g.W > 24 || g.H <= 0 {
				t.Errorf("panel %q grid position %+v outside the 24-column grid", p.Title, g)
			}
		}
	})

	if os.Getenv("TXSINK_TEST_SKIP_PROMTOOL") == "1" {
		t.Log("TXSINK_TEST_SKIP_PROMTOOL=1: promtool checks NOT run")
		return
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: apt-get install -y prometheus (or set TXSINK_TEST_SKIP_PROMTOOL=1 to skip these checks)")
	}
	run := func(t *testing.T, dir string, args ...string) {
		t.Helper()
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	t.Run("promtool rules", func(t *testing.T) {
		run(t, obsDir, "check", "rules", "alerts.yml")
		run(t, obsDir, "test", "rules", "alerts_test.yml")
		run(t, obsDir, "check", "config", "prometheus.yml")
	})
	t.Run("promtool dashboard queries", func(t *testing.T) {
		// Grafana's $instance becomes a regexp PromQL accepts.
		var b strings.Builder
		b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
		for i, q := range dash.queries() {
			expr := strings.ReplaceAll(q.expr, "$instance", ".*")
			fmt.Fprintf(&b, "      - record: dashboard:query_%d\n        expr: %q\n", i, expr)
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "dashboard_rules.yml"), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		run(t, dir, "check", "rules", "dashboard_rules.yml")
	})
}

type dashboard struct {
	Title  string `json:"title"`
	UID    string `json:"uid"`
	Panels []struct {
		ID         int    `json:"id"`
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		GridPos struct{ X, Y, W, H int } `json:"gridPos"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

type query struct{ panel, expr string }

func (d *dashboard) queries() []query {
	var qs []query
	for _, p := range d.Panels {
		for _, t := range p.Targets {
			qs = append(qs, query{p.Title, t.Expr})
		}
	}
	return qs
}

func readDashboard(t *testing.T) *dashboard {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(obsDir, "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	for _, q := range d.queries() {
		if strings.TrimSpace(q.expr) == "" {
			t.Fatalf("panel %q has an empty query", q.panel)
		}
	}
	return &d
}

var metricRe = regexp.MustCompile(`\btxsink_[a-z_]+`)

// metricNames lists the txsink_ metric families an expression names, with
// the histogram suffixes taken off.
func metricNames(expr string) []string {
	var out []string
	for _, m := range metricRe.FindAllString(expr, -1) {
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if strings.HasSuffix(m, suf) && !strings.HasSuffix(m, "_total"+suf) {
				m = strings.TrimSuffix(m, suf)
				break
			}
		}
		out = append(out, m)
	}
	return out
}

// kafkaLike is a fake sink with the optional methods the resource gauges
// ask a Kafka sink for.
type kafkaLike struct{ *twopctest.Sink }

func (kafkaLike) TransactionTimeout() time.Duration { return 15 * time.Minute }
func (kafkaLike) CachedClients() int                { return 1 }

// exportedMetrics wires the sidecar's metrics as server.go does (a real
// single-node journal, the resource gauges), records one of everything,
// and returns the families /metrics then serves.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	m := twopc.NewMachine()
	x := newMetrics(m, singleNode(t, m))
	sinks := map[string]twopc.Sink{"events": kafkaLike{twopctest.NewSink("events", 2)}}
	c, err := twopc.NewCoordinator(twopc.Config{Node: "n1", Journal: twopctest.NewJournal(m), Machine: m,
		Sinks: x.wrapSinks(sinks)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	x.registerResourceGauges(c, sinks)

	x.Records("j", "events", 1, 10)
	x.CheckpointDone("j", "prepare", time.Millisecond)
	x.CommitRetry("events")
	x.DataLoss("j", "events")
	x.RecordsFailed("j", "events", twopc.GuaranteeNone, 1)
	x.observeRequest("GET /v1/jobs", 200, time.Millisecond)
	x.observeProxy("GET /v1/jobs", api.ProxyAnswered)
	x.SessionDropped("moved")
	x.Takeover()
	x.HandoverWaited(time.Second, true)
	x.applyTime.Observe(0.001)

	fams, err := x.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	var names []string
	for _, f := range fams {
		out[f.GetName()] = true
		names = append(names, f.GetName())
	}
	sort.Strings(names)
	if !out["txsink_raft_leader"] || !out["txsink_kafka_transaction_timeout_seconds"] {
		t.Fatalf("exported families lack the raft or Kafka gauges: %s", strings.Join(names, " "))
	}
	return out
}
