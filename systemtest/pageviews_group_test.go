package systemtest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/internal/testenv"
)

// TestExamplesPageviewsGoGroup runs examples/pageviews-go --offsets group
// against a dev sidecar while its generator appends clicks: the app keeps
// its input position in a consumer group (the sidecar commits the offsets
// in each checkpoint's Kafka transaction) and resumes from the group's
// committed offsets. The app is killed with SIGKILL, restarted, then the
// sidecar is killed with SIGKILL and restarted. Once the app caught up:
// the group's committed offsets (read with require_stable) equal the
// events the output counted, which is the whole input; the increments
// appear once each and sum to the true counts; pv grew by exactly those.
func TestExamplesPageviewsGoGroup(t *testing.T) {
	d := startDev(t)
	db := devDB(t, d.dsn)
	apps := []string{"app1", "app2", "app3", "app4", "app5"}
	before := pvViews(t, db, apps)
	bin := buildExample(t, "pageviews-go", "./examples/pageviews-go")
	const events, group = 6000, "pv-group"

	gen := startProcess(t, "generator", bin, "generate", "--brokers", d.kafkaAddr, "--events", strconv.Itoa(events), "--rate", "1000")
	count := []string{"count", "--sidecar", "http://" + d.httpAddr, "--brokers", d.kafkaAddr, "--job", "pageviews-group",
		"--offsets", "group", "--group", group, "--every", "100", "--interval", "0", "--exit-idle", "3s", "--give-up", "2m"}

	app := startProcess(t, "app", bin, count...)
	app.waitFor(t, regexp.MustCompile(`checkpoint 5 committed`), time.Minute)
	app.kill9()
	app = startProcess(t, "app (restarted)", bin, count...)
	m := app.waitFor(t, regexp.MustCompile(`resuming after checkpoint (\d+) at group "pv-group"'s committed offsets`), time.Minute)
	resumed, _ := strconv.Atoi(m[1])
	if resumed < 5 {
		t.Fatalf("the restarted app resumed after checkpoint %d, want >= 5 (the killed one had committed 5)", resumed)
	}
	app.waitFor(t, regexp.MustCompile(fmt.Sprintf(`checkpoint %d committed`, resumed+3)), time.Minute)
	d.kill9()
	time.Sleep(300 * time.Millisecond)
	d.start(t)
	if code := gen.wait(t, 2*time.Minute); code != 0 {
		t.Fatalf("generator: exit %d\n%s", code, gen.out.String())
	}
	if code := app.wait(t, 3*time.Minute); code != 0 {
		t.Fatalf("app: exit %d\n%s", code, app.out.String())
	}
	wantLines(t, "restarted app", app.out.String(), "reopening the session", `at group "pv-group"'s committed offsets`)
	for _, l := range strings.Split(app.out.String(), "\n") {
		if strings.Contains(l, "resuming after") || strings.Contains(l, "reopening") || strings.Contains(l, "group \"pv-group\":") {
			t.Logf("restarted app: %s", l)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The truth, from the input topic.
	truth, inputEnd := map[string]int{}, map[int32]int64{}
	for _, a := range apps {
		truth[a] = 0
	}
	for _, r := range kafkatest.ReadCommitted(ctx, t, d.kafkaAddr, "clicks", events) {
		var c struct {
			App string `json:"app"`
		}
		if err := json.Unmarshal(r.Value, &c); err != nil {
			t.Fatalf("clicks: %v", err)
		}
		truth[c.App]++
		inputEnd[r.Partition] = max(inputEnd[r.Partition], r.Offset+1)
	}
	// The output: each (writer, checkpoint, app) once, views summing to
	// the truth; counted is the end of the furthest input range per
	// partition.
	sums, seen, counted := map[string]int{}, map[string]bool{}, map[int32]int64{}
	for _, a := range apps {
		sums[a] = 0
	}
	for _, r := range kafkatest.ReadCommittedWith(ctx, t, d.kafkaAddr, "pageviews", 1, kafkatest.ReadOptions{Linger: 2 * time.Second}) {
		var inc struct {
			App        string           `json:"app"`
			Views      int              `json:"views"`
			Writer     string           `json:"writer"`
			Checkpoint int64            `json:"checkpoint"`
			To         map[string]int64 `json:"to"`
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
		for p, to := range inc.To {
			n, err := strconv.Atoi(p)
			if err != nil {
				t.Fatalf("pageviews: partition %q", p)
			}
			counted[int32(n)] = max(counted[int32(n)], to)
		}
	}
	if !mapsEqual(sums, truth) {
		t.Errorf("pageviews increments sum to %v, want the true counts %v", sums, truth)
	}
	if got := diffViews(pvViews(t, db, apps), before); !mapsEqual(got, truth) {
		t.Errorf("pv grew by %v, want the true counts %v", got, truth)
	}
	committed, err := kafkatest.GroupOffsets(ctx, d.kafkaAddr, group, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(committed) != 1 || len(committed["clicks"]) != len(inputEnd) {
		t.Fatalf("group %q committed %v, want offsets of the %d partitions of clicks", group, committed, len(inputEnd))
	}
	for p, end := range inputEnd {
		if c := committed["clicks"][p]; c != counted[p] || c != end {
			t.Errorf("partition %d: group offset %d, the output counted [0,%d), the input ends at %d; want all equal", p, c, counted[p], end)
		}
	}
	t.Logf("group %q: %v; output counted %v; truth %v", group, committed["clicks"], counted, truth)
}

// buildExample builds a Go program of the repository (pkg) into the test's
// temp dir.
func buildExample(t *testing.T, name, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

var groupOffsetsOnce struct {
	sync.Once
	bin string
	err error
}

// groupOffsetsBin is internal/cmd/groupoffsets, built once per test run,
// for the clients' suites (TXSINK_GROUPOFFSETS_BIN): their independent
// reader of a consumer group's committed offsets.
func groupOffsetsBin(t *testing.T) string {
	t.Helper()
	groupOffsetsOnce.Do(func() {
		bin := filepath.Join(filepath.Dir(sidecarBin), "groupoffsets")
		cmd := exec.Command("go", "build", "-o", bin, "./internal/cmd/groupoffsets")
		cmd.Dir = repoRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			groupOffsetsOnce.err = fmt.Errorf("go build ./internal/cmd/groupoffsets: %v\n%s", err, out)
			return
		}
		groupOffsetsOnce.bin = bin
	})
	if groupOffsetsOnce.err != nil {
		t.Fatal(groupOffsetsOnce.err)
	}
	return groupOffsetsOnce.bin
}

// process is a program the test runs in the background, its output kept.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *testenv.Buffer
	done chan struct{}
}

func startProcess(t *testing.T, name, bin string, args ...string) *process {
	t.Helper()
	p := &process{name: name, cmd: exec.Command(bin, args...), out: &testenv.Buffer{}, done: make(chan struct{})}
	p.cmd.Dir = repoRoot(t)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill9()
		if t.Failed() {
			t.Logf("%s output:\n%s", p.name, tail(p.out, 40))
		}
	})
	return p
}

// waitFor waits until the output matches re and returns the match.
func (p *process) waitFor(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if m := re.FindStringSubmatch(p.out.String()); m != nil {
			return m
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited (%v) before printing %q:\n%s", p.name, p.cmd.ProcessState, re, tail(p.out, 40))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q within %s:\n%s", p.name, re, timeout, tail(p.out, 40))
		}
	}
}

func (p *process) kill9() {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(os.Kill)
		<-p.done
	}
}

// wait waits for the process to exit and returns its exit status.
func (p *process) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("%s still running after %s:\n%s", p.name, timeout, tail(p.out, 40))
	}
	return p.cmd.ProcessState.ExitCode()
}
