package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/internal/testenv"
	"github.com/txsink/txsink/twopc"
)

const binVersion = "v0.0.0-bintest"

var bin struct {
	once sync.Once
	path string
	err  error
}

// sidecarBinary builds this command once per test binary, stamped with
// binVersion the way the Makefile stamps it; with TXSINK_TEST_BINARY_RACE=1
// it is built with the race detector.
func sidecarBinary(t *testing.T) string {
	t.Helper()
	bin.once.Do(func() {
		dir, err := os.MkdirTemp("", "txsink-bin-")
		if err != nil {
			bin.err = err
			return
		}
		bin.path = filepath.Join(dir, "sidecar")
		args := []string{"build", "-ldflags", "-X main.version=" + binVersion, "-o", bin.path}
		if os.Getenv("TXSINK_TEST_BINARY_RACE") == "1" {
			// The processes' own data races (e.g. in the cluster tests) are
			// then reported on their stderr and fail them.
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			bin.err = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if bin.err != nil {
		t.Fatal(bin.err)
	}
	return bin.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bin.path != "" {
		os.RemoveAll(filepath.Dir(bin.path))
	}
	os.Exit(code)
}

func TestBinaryVersion(t *testing.T) {
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.Command(sidecarBinary(t), arg).CombinedOutput()
		if err != nil || string(out) != "txsink "+binVersion+"\n" {
			t.Errorf("sidecar %s: %v, got %q, want %q", arg, err, out, "txsink "+binVersion+"\n")
		}
	}
}

// runningSidecar is a "sidecar run" process with a Kafka sink on an
// in-process kfake broker and a token.
type runningSidecar struct {
	sock, tokenFile string
	c               *client.Client
	hc              *http.Client // plain HTTP over the socket, no token
}

func startBinary(t *testing.T) *runningSidecar {
	t.Helper()
	broker := kafkatest.NewCluster(t)
	// Unix socket paths are limited to ~100 bytes; t.TempDir can be longer.
	dir, err := os.MkdirTemp("", "txsink-cli-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	rs := &runningSidecar{sock: filepath.Join(dir, "s.sock"), tokenFile: filepath.Join(dir, "token")}
	if err := os.WriteFile(rs.tokenFile, []byte("op-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "txsink.yaml")
	yaml := fmt.Sprintf(`data_dir: %s
http_addr: 127.0.0.1:0
raft_addr: 127.0.0.1:0
socket: %s
token_file: %s
sink_wait: 10s
sinks:
  events:
    kind: kafka
    brokers: [%q]
    default_topic: events
    transaction_timeout: 30s
`, filepath.Join(dir, "data"), rs.sock, rs.tokenFile, kafkatest.Addr(broker))
	if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr testenv.Buffer
	cmd := exec.Command(sidecarBinary(t), "run", "--config", conf)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("sidecar did not stop within 30s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("sidecar stderr:\n%s", stderr.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(stdout.String(), "txsink listening") {
		select {
		case err := <-done:
			t.Fatalf("sidecar exited: %v\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar not listening within 60s:\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	rs.c = client.NewUnix(rs.sock, client.WithToken("op-token"))
	rs.hc = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", rs.sock)
	}}}
	return rs
}

// cli runs the binary's operator command against the sidecar.
func (rs *runningSidecar) cli(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(sidecarBinary(t), args...)
	cmd.Env = append(os.Environ(), "TXSINK_ADDR="+rs.sock, "TXSINK_TOKEN_FILE="+rs.tokenFile, "TXSINK_TOKEN=")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func (rs *runningSidecar) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := rs.hc.Get("http://unix/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// value is the value of the series of family name whose labels include
// want (name=value pairs); ok is false when there is none.
func value(fams map[string]*dto.MetricFamily, name string, want ...string) (v float64, ok bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(want); i += 2 {
			if have[want[i]] != want[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// TestBinaryOperatorCommandsAndMetrics runs the built sidecar with a token
// and drives it over its Unix socket: the operator commands of the same
// binary, then /metrics after the traffic.
func TestBinaryOperatorCommandsAndMetrics(t *testing.T) {
	rs := startBinary(t)
	ctx := t.Context()

	// Without the token the CLI gets 401 and says so.
	cmd := exec.Command(sidecarBinary(t), "jobs", "--addr", rs.sock)
	cmd.Env = append(os.Environ(), "TXSINK_TOKEN_FILE=", "TXSINK_TOKEN=")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitProblem || !strings.Contains(string(out), "401 unauthorized") {
		t.Errorf("jobs without token: %v, %q; want exit 1 and 401 unauthorized", err, out)
	}

	if _, err := rs.c.PutJob(ctx, "ext", twopc.ModeExternal, nil); err != nil {
		t.Fatal(err)
	}
	s, err := rs.c.OpenSession(ctx, "ext", "w1", nil)
	if err != nil {
		t.Fatal(err)
	}
	recs := []*twopc.Record{{Value: []byte(`"a"`)}, {Value: []byte(`"bb"`)}, {Value: []byte(`"ccc"`)}}
	if _, err := rs.c.Write(ctx, "ext", "w1", s.Epoch, nil, recs); err != nil {
		t.Fatal(err)
	}
	if res, err := rs.c.Checkpoint(ctx, "ext", "w1", s.Epoch, 1, []byte("offset=3"), ""); err != nil || res.Status != twopc.StatusPrepared {
		t.Fatalf("checkpoint 1: %+v, %v; want prepared", res, err)
	}
	if resp, err := rs.hc.Get("http://unix/no/such/route"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}

	stdout, stderr, code := rs.cli(t, "status")
	if code != 0 {
		t.Fatalf("status: exit %d, stderr %s", code, stderr)
	}
	got := strings.Join(lines(stdout), "\n")
	for _, want := range []string{"role: | leader", "ready: | yes", "jobs: | 1", "in doubt: | 1 checkpoint(s)",
		"sinks: | events (kafka, transaction timeout 30s)"} {
		if !strings.Contains(got, want) {
			t.Errorf("status: got\n%s\nwant a line %q", stdout, want)
		}
	}
	stdout, stderr, code = rs.cli(t, "checkpoints", "ext")
	row := regexp.MustCompile(`(?m)^w1 +1 +1 +prepared +\d+(ms|s) +\d+% of 30s +events:prepared$`)
	if code != 0 || !row.MatchString(stdout) {
		t.Errorf("checkpoints ext: exit %d, got\n%s%s\nwant a row matching %s", code, stdout, stderr, row)
	}

	// Before the commit: one in-doubt branch, one open session.
	fams := rs.scrape(t)
	if v, ok := value(fams, "txsink_branches", "sink", "events", "state", "in_doubt"); !ok || v != 1 {
		t.Errorf("txsink_branches{events,in_doubt}: got %v (present %v), want 1", v, ok)
	}
	if v, ok := value(fams, "txsink_oldest_prepared_branch_seconds"); !ok || v <= 0 || v > 600 {
		t.Errorf("txsink_oldest_prepared_branch_seconds: got %v (present %v), want a few seconds", v, ok)
	}

	stdout, stderr, code = rs.cli(t, "commit", "ext", "1")
	if code != 0 || !strings.HasPrefix(stdout, "commit ext 1: committed\n") {
		t.Errorf("commit ext 1: exit %d, stdout %q, stderr %q; want committed", code, stdout, stderr)
	}

	fams = rs.scrape(t)
	for _, c := range []struct {
		name   string
		labels []string
		ok     func(float64) bool
		want   string
	}{
		{"txsink_http_requests_total", []string{"route", "POST /v1/jobs/{job}/writers/{writer}/records", "code", "200"}, eq(1), "1"},
		{"txsink_http_requests_total", []string{"route", "POST /v1/jobs/{job}/checkpoints/{n}/commit", "code", "200"}, eq(1), "1"},
		{"txsink_http_requests_total", []string{"route", "GET /v1/jobs", "code", "401"}, eq(1), "1 (the call without token)"},
		{"txsink_http_requests_total", []string{"route", "unmatched", "code", "404"}, eq(1), "1"},
		{"txsink_http_request_duration_seconds", []string{"route", "POST /v1/jobs/{job}/writers/{writer}/session"}, eq(1), "1 observation"},
		{"txsink_records_total", []string{"job", "ext", "sink", "events"}, eq(3), "3"},
		{"txsink_record_bytes_total", []string{"job", "ext", "sink", "events"}, eq(6), "6 (a, bb, ccc)"},
		{"txsink_sessions", nil, eq(1), "1"},
		{"txsink_data_loss_total", []string{"job", "ext", "sink", "events"}, eq(0), "0 (present from the first write)"},
		{"txsink_commit_retries_total", []string{"sink", "events"}, eq(0), "0"},
		{"txsink_sink_errors_total", []string{"sink", "events", "op", "prepare"}, eq(0), "0"},
		{"txsink_sink_errors_total", []string{"sink", "events", "op", "fence"}, eq(0), "0"},
		{"txsink_journal_apply_seconds", nil, atLeast(4), ">= 4 (job, session, checkpoint, decision)"},
		{"txsink_checkpoint_phase_seconds", []string{"job", "ext", "phase", "prepare"}, eq(1), "1"},
		{"txsink_checkpoint_phase_seconds", []string{"job", "ext", "phase", "commit"}, eq(1), "1 (the sinks' commits)"},
		{"txsink_checkpoint_phase_seconds", []string{"job", "ext", "phase", "resolve"}, eq(1), "1 (the RESOLVED entry)"},
		{"txsink_raft_leader", nil, eq(1), "1"},
		{"txsink_raft_leader_changes_total", nil, atLeast(1), ">= 1"},
		{"txsink_raft_last_index", nil, atLeast(4), ">= 4"},
		{"txsink_raft_refused_peers_total", nil, eq(0), "0"},
		{"txsink_journal_store_batches_total", nil, atLeast(1), ">= 1"},
		{"txsink_journal_store_entries_total", nil, atLeast(4), ">= 4 (every journaled command is an entry)"},
	} {
		v, ok := value(fams, c.name, c.labels...)
		if !ok || !c.ok(v) {
			t.Errorf("%s%v: got %v (present %v), want %s", c.name, c.labels, v, ok, c.want)
		}
	}
	// Every sink reports each branch state, at 0 once everything committed.
	for _, st := range []string{"in_doubt", "committing", "aborting"} {
		if v, ok := value(fams, "txsink_branches", "sink", "events", "state", st); !ok || v != 0 {
			t.Errorf("txsink_branches{sink=events,state=%s}: got %v (present %v), want 0", st, v, ok)
		}
	}
	for _, m := range fams["txsink_branches"].GetMetric() {
		if v := m.GetGauge().GetValue(); v != 0 {
			t.Errorf("txsink_branches%v = %v after everything was committed, want 0", m.GetLabel(), v)
		}
	}
	promtoolCheck(t, rs)
}

func eq(want float64) func(float64) bool     { return func(v float64) bool { return v == want } }
func atLeast(min float64) func(float64) bool { return func(v float64) bool { return v >= min } }

// promtoolCheck lints the exposition with promtool when it is installed
// (Debian: apt-get install prometheus); the suite does not require it.
func promtoolCheck(t *testing.T, rs *runningSidecar) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Log("promtool not installed: the exposition was only parsed, not linted")
		return
	}
	resp, err := rs.hc.Get("http://unix/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = resp.Body
	out, err := cmd.CombinedOutput()
	// promtool also prints lint hints about the Go and process collectors
	// we do not own; only txsink_ findings count.
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "txsink_") {
			t.Errorf("promtool check metrics: %s", l)
		}
	}
	if err != nil && !strings.Contains(string(out), "txsink_") {
		t.Logf("promtool check metrics: %v (only findings outside txsink_):\n%s", err, out)
	}
}
