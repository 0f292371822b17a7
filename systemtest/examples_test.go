package systemtest

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/internal/mysqltest"
)

// The examples under examples/ run here as their READMEs say, against a
// `sidecar dev` of the test's own (startDev), and their output is checked
// in Kafka (franz-go, read_committed) and MariaDB.

// pvApps are the apps of examples/pageviews-python (examples/pageviews-go
// uses app1…app5 in the same table).
var pvApps = []string{"android", "ios", "tv", "web"}

func repoRoot(t *testing.T) string {
	t.Helper()
	_, self, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(self), "..")
}

func needTool(t *testing.T, tool, install string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Fatalf("this test needs %s: %s", tool, install)
	}
}

// runExample runs a command in the repository root, bounded by timeout, and
// returns its combined output and exit status.
func runExample(t *testing.T, timeout time.Duration, env []string, name string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %s: still running after %v\n%s", name, strings.Join(args, " "), timeout, out)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	default:
		t.Fatalf("%s: %v", name, err)
		return "", -1
	}
}

// devDB opens database txsink_dev of the dev sidecar's server.
func devDB(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	cfg, err := gomysql.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DBName = "txsink_dev"
	db, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// pvViews reads table pv's views of apps (0 for a missing row).
func pvViews(t *testing.T, db *sql.DB, apps []string) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	args := make([]any, len(apps))
	for i, a := range apps {
		args[i] = a
	}
	q := "SELECT app, views FROM pv WHERE app IN (?" + strings.Repeat(",?", len(apps)-1) + ")"
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		t.Fatalf("read pv: %v", err)
	}
	defer rows.Close()
	got := map[string]int{}
	for _, a := range apps {
		got[a] = 0
	}
	for rows.Next() {
		var app string
		var views int
		if err := rows.Scan(&app, &views); err != nil {
			t.Fatal(err)
		}
		got[app] = views
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

// readClicks reads the example's input: the app of line n is apps[n-1]. It
// checks the numbering and the format the README gives.
func readClicks(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("the example did not generate its input: %v", err)
	}
	defer f.Close()
	var apps []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ev struct {
			N    int    `json:"n"`
			App  string `json:"app"`
			User string `json:"user"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("%s line %d: %v", path, len(apps)+1, err)
		}
		if ev.N != len(apps)+1 || !slices.Contains(pvApps, ev.App) || !strings.HasPrefix(ev.User, "u") {
			t.Fatalf("%s line %d: got %s, want {\"n\":%d,\"app\":<one of %v>,\"user\":\"u<k>\"}", path, len(apps)+1, sc.Text(), len(apps)+1, pvApps)
		}
		apps = append(apps, ev.App)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return apps
}

// wantLines checks that out contains every one of want.
func wantLines(t *testing.T, what, out string, want ...string) {
	t.Helper()
	var missing []string
	for _, w := range want {
		if !strings.Contains(out, w) {
			missing = append(missing, w)
		}
	}
	if len(missing) > 0 {
		t.Errorf("%s lacks %q:\n%s", what, missing, out)
	}
}

func countApps(apps []string) map[string]int {
	c := map[string]int{}
	for _, a := range pvApps {
		c[a] = 0
	}
	for _, a := range apps {
		c[a]++
	}
	return c
}

func diffViews(after, before map[string]int) map[string]int {
	d := map[string]int{}
	for a := range after {
		d[a] = after[a] - before[a]
	}
	return d
}

// TestExamplesPageviewsPython runs examples/pageviews-python as its README
// says: a run that crashes after writing and before its checkpoint (exit
// 137), then a run to the end. MariaDB's pv and the pageviews topic must
// hold each input line's view exactly once.
func TestExamplesPageviewsPython(t *testing.T) {
	needTool(t, "python3", "apt-get install python3 (≥ 3.9)")
	dev := startDev(t)
	db := devDB(t, dev.dsn)
	// pv only adds and txsink_dev outlives the test: compare differences.
	before := pvViews(t, db, pvApps)

	const events, every, crashAfter = 3000, 250, 1100
	input := filepath.Join(t.TempDir(), "clicks.ndjson")
	args := []string{"examples/pageviews-python/pageviews.py", "--socket", dev.socket, "--input", input,
		"--events", fmt.Sprint(events), "--every", fmt.Sprint(every), "--kafka", dev.kafkaAddr}

	// 1. Crash after writing lines 1001-1250, with checkpoint 4 (line 1000) committed.
	out, code := runExample(t, 2*time.Minute, nil, "python3", append(args, "--crash-after", fmt.Sprint(crashAfter))...)
	if code != 137 {
		t.Fatalf("run with --crash-after %d: exit status %d, want 137\n%s", crashAfter, code, out)
	}
	wantLines(t, "the crashed run's output", out, fmt.Sprintf("generated %s (%d events)", input, events),
		"checkpoint 4: lines 751-1000 committed", "crashing after writing lines 1001-1250 (checkpoint 5 not taken)")
	apps := readClicks(t, input)
	if len(apps) != events {
		t.Fatalf("input has %d lines, want %d", len(apps), events)
	}
	if got, want := diffViews(pvViews(t, db, pvApps), before), countApps(apps[:1000]); !mapsEqual(got, want) {
		t.Fatalf("after the crash pv grew by %v, want %v (lines 1-1000; lines 1001-1250 are not committed)", got, want)
	}

	// 2. Run again: it resumes after line 1000 and finishes.
	out, code = runExample(t, 2*time.Minute, nil, "python3", args...)
	if code != 0 {
		t.Fatalf("second run: exit status %d, want 0\n%s", code, out)
	}
	total := countApps(apps)
	wantOut := []string{"restored checkpoint 4, 1000 lines already counted and committed; resuming at line 1001",
		"checkpoint 5: lines 1001-1250 committed", fmt.Sprintf("done: lines 1001-%d in checkpoints 5-%d", events, events/every),
		`mariadb txsink_dev -e "SELECT app, views FROM pv WHERE app IN ('web','ios','android','tv')"`}
	for _, a := range pvApps {
		wantOut = append(wantOut, fmt.Sprintf("  %-8s %d\n", a, total[a]))
	}
	wantLines(t, "the second run's output", out, wantOut...)
	if got := diffViews(pvViews(t, db, pvApps), before); !mapsEqual(got, total) {
		t.Errorf("pv grew by %v, want %v (the counts of %s)", got, total, input)
	}

	// 3. Kafka: one record per app and checkpoint, views = that app's lines in
	// the checkpoint's range; the ranges tile 1..events once.
	checkPageviewsKafka(t, dev.kafkaAddr, "pageviews-py", apps, every)

	// 4. The kcat line the example prints (its README's check) sums the same.
	if _, err := exec.LookPath("kcat"); err != nil {
		t.Logf("kcat is not installed: not running the printed kcat command")
		return
	}
	var kcatLine string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "kcat ") {
			kcatLine = strings.TrimSpace(l)
		}
	}
	if kcatLine == "" {
		t.Fatalf("the output prints no kcat command:\n%s", out)
	}
	kout, code := runExample(t, time.Minute, nil, "bash", "-o", "pipefail", "-c", kcatLine)
	want := fmt.Sprintf("[('android', %d), ('ios', %d), ('tv', %d), ('web', %d)]", total["android"], total["ios"], total["tv"], total["web"])
	if code != 0 || strings.TrimSpace(kout) != want {
		t.Errorf("%s\n: exit status %d, output %q; want 0, %q", kcatLine, code, kout, want)
	}
}

// checkPageviewsKafka checks topic pageviews for job's records of
// examples/pageviews-python over apps (the input's lines, checkpoints of
// every lines): one record per app and checkpoint, views = that app's lines
// in the checkpoint's range, the ranges tile 1..len(apps) once, and the sums
// equal the input's counts.
func checkPageviewsKafka(t *testing.T, kafkaAddr, job string, apps []string, every int) {
	t.Helper()
	events := len(apps)
	total := countApps(apps)
	wantRecs := 0
	for from := 0; from < events; from += every {
		for _, c := range countApps(apps[from:min(from+every, events)]) {
			if c > 0 {
				wantRecs++
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	recs := kafkatest.ReadCommittedWith(ctx, t, kafkaAddr, "pageviews", wantRecs, kafkatest.ReadOptions{Timeout: 30 * time.Second})
	type pvValue struct {
		App        string `json:"app"`
		Views      int    `json:"views"`
		Job        string `json:"job"`
		Checkpoint int64  `json:"checkpoint"`
		FromLine   int    `json:"from_line"`
		ToLine     int    `json:"to_line"`
	}
	sums := countApps(nil)
	ranges := map[int64][2]int{}
	seen := map[string]bool{}
	n := 0
	for _, r := range recs {
		var v pvValue
		if err := json.Unmarshal(r.Value, &v); err != nil {
			t.Errorf("pageviews record %s: %v", r.Value, err)
			continue
		}
		if v.Job != job {
			continue
		}
		n++
		id := fmt.Sprintf("checkpoint %d app %s", v.Checkpoint, v.App)
		if seen[id] {
			t.Errorf("%s: got it twice, want once", id)
		}
		seen[id] = true
		if string(r.Key) != v.App {
			t.Errorf("%s: key %q, want %q", id, r.Key, v.App)
		}
		if v.FromLine < 1 || v.ToLine > events || v.FromLine > v.ToLine {
			t.Errorf("%s: range %d-%d, want within 1-%d", id, v.FromLine, v.ToLine, events)
			continue
		}
		if rg, ok := ranges[v.Checkpoint]; ok && rg != [2]int{v.FromLine, v.ToLine} {
			t.Errorf("%s: range %d-%d, but another app's record of it says %d-%d", id, v.FromLine, v.ToLine, rg[0], rg[1])
		}
		ranges[v.Checkpoint] = [2]int{v.FromLine, v.ToLine}
		if want := countApps(apps[v.FromLine-1 : v.ToLine])[v.App]; v.Views != want {
			t.Errorf("%s: views %d, want %d (lines %d-%d of the input)", id, v.Views, want, v.FromLine, v.ToLine)
		}
		sums[v.App] += v.Views
	}
	if n != wantRecs {
		t.Errorf("pageviews has %d records of job %s, want %d", n, job, wantRecs)
	}
	if !mapsEqual(sums, total) {
		t.Errorf("Kafka's views per app sum to %v, want %v", sums, total)
	}
	cks := make([]int64, 0, len(ranges))
	for ck := range ranges {
		cks = append(cks, ck)
	}
	slices.Sort(cks)
	next := 1
	for i, ck := range cks {
		rg := ranges[ck]
		if ck != int64(i+1) || rg[0] != next {
			t.Errorf("checkpoint %d covers lines %d-%d; want checkpoint %d to start at line %d (ranges: %v)", ck, rg[0], rg[1], i+1, next, ranges)
			next = -1
			break
		}
		next = rg[1] + 1
	}
	if next > 0 && next != events+1 {
		t.Errorf("the checkpoints' ranges end at line %d, want %d", next-1, events)
	}

}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestExamplesCurlWalkthrough runs examples/curl/walkthrough.sh as its
// README says (environment pointing at the test's sidecar, broker and
// server) and checks its output, then reads the topic and table it wrote
// on its own.
func TestExamplesCurlWalkthrough(t *testing.T) {
	needTool(t, "curl", "apt-get install curl")
	needTool(t, "kcat", "apt-get install kcat")
	needTool(t, "mariadb", "apt-get install mariadb-client")
	dev := startDev(t)
	env := []string{"TXSINK_URL=http://" + dev.httpAddr, "KAFKA=" + dev.kafkaAddr,
		"MYSQL=mariadb " + strings.Join(mysqltest.ClientArgs(t, dev.dsn), " ") + " txsink_dev"}

	out, code := runExample(t, 3*time.Minute, env, "examples/curl/walkthrough.sh")
	if code != 0 {
		t.Fatalf("walkthrough.sh: exit status %d, want 0\n%s", code, out)
	}
	wantLines(t, "walkthrough.sh's output", out, `{"epoch":1,"checkpoint":0,"state":null,"status":"none","data_loss":[]}`, `{"accepted":4,"seq":1}`,
		`{"accepted":4,"seq":1,"duplicate":true}`, `{"epoch":2,"checkpoint":1,"state":"bGluZT0y","status":"committed","data_loss":[]}`,
		`"code":"session_fenced"`, `"status":"prepared"`, `"in_doubt":[1]`, "k4 after the restart", "x1 external",
		"=== Done: every answer was the documented one")
	if strings.Contains(out, "k3 never committed") {
		t.Errorf("kcat showed k3, which was written after the last checkpoint:\n%s", out)
	}
	// kcat ran four times after checkpoint 1; k1 was in every answer, x1
	// only in the last one.
	for word, want := range map[string]int{"k1 hello": 4, "x1 external": 1} {
		if got := strings.Count(out, word); got != want {
			t.Errorf("%q appears %d times in the output, want %d:\n%s", word, got, want, out)
		}
	}

	m := regexp.MustCompile(`topic (curl-[0-9-]+)\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no topic name in the last line:\n%s", out)
	}
	topic, job := m[1], m[1]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var got []string
	for _, r := range kafkatest.ReadCommitted(ctx, t, dev.kafkaAddr, topic, 4) {
		got = append(got, string(r.Key)+" "+string(r.Value))
	}
	sort.Strings(got)
	if want := []string{"k1 hello", `k2 {"n":2}`, "k4 after the restart", "x1 external"}; !slices.Equal(got, want) {
		t.Errorf("topic %s read_committed: got %q, want %q", topic, got, want)
	}
	rows, err := devDB(t, dev.dsn).QueryContext(ctx, "SELECT k, v FROM events WHERE k LIKE ? ORDER BY k", job+"/%")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var dbRows []string
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			t.Fatal(err)
		}
		dbRows = append(dbRows, strings.TrimPrefix(k, job+"/")+" "+v)
	}
	if want := []string{"k1 hello", "k2 {n:2}", "k4 after the restart"}; !slices.Equal(dbRows, want) {
		t.Errorf("txsink_dev.events rows of job %s: got %q, want %q", job, dbRows, want)
	}
}

// TestExamplesCurlWalkthroughFails: the script's exit status is the test:
// an answer other than the documented one must fail it.
func TestExamplesCurlWalkthroughFails(t *testing.T) {
	needTool(t, "curl", "apt-get install curl")
	// Nothing listens there: the first step's answer is missing.
	out, code := runExample(t, time.Minute, []string{"TXSINK_URL=http://" + freeAddr(t)}, "examples/curl/walkthrough.sh")
	if code == 0 || !strings.Contains(out, "FAILED: curl could not reach") {
		t.Errorf("walkthrough.sh without a sidecar: exit status %d, want non-zero and FAILED:\n%s", code, out)
	}
}
