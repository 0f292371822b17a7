package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/internal/testenv"
	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// cliEnv is a real coordinator over twopctest fakes behind a real
// api.Server on 127.0.0.1:0, with a clock the test moves.
type cliEnv struct {
	t      *testing.T
	coord  *twopc.Coordinator
	events *twopctest.Sink // reported as kafka with a 15m transaction timeout
	db     *twopctest.Sink // reported as mysql
	url    string
	now    atomic.Int64 // unix nanoseconds
	notOK  atomic.Pointer[error]
}

// svcWrap lets a test replace Commit (to answer what a colleague's sidecar
// answers on data loss).
type svcWrap struct {
	*twopc.Coordinator
	commit func(ctx context.Context, job string, n int64) (twopc.CommitResult, error)
}

func (s *svcWrap) Commit(ctx context.Context, job string, n int64) (twopc.CommitResult, error) {
	if s.commit != nil {
		return s.commit(ctx, job, n)
	}
	return s.Coordinator.Commit(ctx, job, n)
}

func newCLIEnv(t *testing.T, token string, wrap func(*svcWrap)) *cliEnv {
	t.Helper()
	e := &cliEnv{t: t, events: twopctest.NewSink("events", 4), db: twopctest.NewSink("db", 4)}
	e.now.Store(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	m := twopc.NewMachine()
	c, err := twopc.NewCoordinator(twopc.Config{Node: "n1", Journal: twopctest.NewJournal(m), Machine: m,
		Sinks: map[string]twopc.Sink{"events": e.events, "db": e.db},
		Now:   func() time.Time { return time.Unix(0, e.now.Load()) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	e.coord = c
	svc := &svcWrap{Coordinator: c}
	if wrap != nil {
		wrap(svc)
	}
	srv, err := api.New(svc, api.Config{
		Token: token,
		Cluster: func(context.Context) (api.ClusterStatus, error) {
			return api.ClusterStatus{Node: "n1", Role: "leader", Leader: "n1", LeaderAddr: "127.0.0.1:8471",
				Members:   []api.Member{{ID: "n1", Address: "127.0.0.1:8471", Voter: true}},
				LastIndex: 42,
				Sinks: []api.SinkStatus{{Name: "db", Kind: "mysql"},
					{Name: "events", Kind: "kafka", TransactionTimeoutSeconds: 900}}}, nil
		},
		Ready: func(context.Context) error {
			if p := e.notOK.Load(); p != nil {
				return *p
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, srv, ln)
	e.url = "http://" + ln.Addr().String()
	return e
}

func (e *cliEnv) advance(d time.Duration) { e.now.Add(int64(d)) }

// prepare writes one record per sink for writer w and prepares checkpoint
// n (external mode: it stays in doubt).
func (e *cliEnv) prepare(job, w string, epoch uint64, n int64) {
	e.t.Helper()
	ctx := context.Background()
	recs := []*twopc.Record{{Sink: "events", Value: json.RawMessage(`"v"`)}, {Sink: "db", Value: json.RawMessage(`"v"`)}}
	if _, err := e.coord.Write(ctx, job, w, epoch, nil, recs); err != nil {
		e.t.Fatal(err)
	}
	res, err := e.coord.Checkpoint(ctx, job, w, epoch, n, nil, twopc.WaitCommitted)
	if err != nil {
		e.t.Fatal(err)
	}
	if res.Status != twopc.StatusPrepared {
		e.t.Fatalf("checkpoint %d: got status %s, want prepared", n, res.Status)
	}
}

func (e *cliEnv) session(job, w string) uint64 {
	e.t.Helper()
	s, err := e.coord.OpenSession(context.Background(), job, w, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return s.Epoch
}

// cliRun runs one command line against e and returns stdout, stderr and
// the exit code main would use.
func cliRun(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(t.Context(), args, &out, &errOut)
	if err != nil {
		code = exitCode(err)
		errOut.WriteString("sidecar: " + err.Error() + "\n")
	}
	return out.String(), errOut.String(), code
}

// lines splits a table into lines with runs of blanks squeezed, so the
// checks do not depend on column widths.
func lines(s string) []string {
	sp := regexp.MustCompile(` {2,}`)
	var out []string
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		out = append(out, sp.ReplaceAllString(strings.TrimRight(l, " "), " | "))
	}
	return out
}

func wantLines(t *testing.T, got string, want ...string) {
	t.Helper()
	g := lines(got)
	if strings.Join(g, "\n") != strings.Join(want, "\n") {
		t.Errorf("got table:\n%s\nwant:\n%s\n(raw:\n%s)", strings.Join(g, "\n"), strings.Join(want, "\n"), got)
	}
}

func TestCLIStatusAndJobs(t *testing.T) {
	e := newCLIEnv(t, "", nil)
	ctx := context.Background()
	if _, err := e.coord.PutJob(ctx, twopc.JobSpec{Name: "ext", Commit: twopc.ModeExternal}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.coord.PutJob(ctx, twopc.JobSpec{Name: "auto", Commit: twopc.ModeAuto, Sinks: []string{"db"}}); err != nil {
		t.Fatal(err)
	}
	ep := e.session("ext", "w1")
	e.prepare("ext", "w1", ep, 1)
	e.prepare("ext", "w1", ep, 2)
	e.session("ext", "w0")

	out, errOut, code := cliRun(t, "status", "--addr", e.url)
	if code != 0 {
		t.Fatalf("status: exit %d, stderr %s", code, errOut)
	}
	wantLines(t, out,
		"node: | n1",
		"role: | leader",
		"leader: | n1 (127.0.0.1:8471)",
		"members: | n1 127.0.0.1:8471 voter",
		"last index: | 42",
		"ready: | yes",
		"jobs: | 2",
		"in doubt: | 2 checkpoint(s)",
		"sinks: | db (mysql)",
		" | events (kafka, transaction timeout 15m0s)",
	)

	notReady := errors.New("sink db: connection refused")
	e.notOK.Store(&notReady)
	out, _, code = cliRun(t, "status", "--addr", e.url, "-o", "json")
	if code != 0 {
		t.Fatalf("status -o json: exit %d", code)
	}
	var rep StatusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	if rep.Ready || !strings.Contains(rep.ReadyDetail, "connection refused") || rep.Jobs != 2 || rep.InDoubt != 2 ||
		rep.Cluster.LastIndex != 42 || len(rep.Cluster.Sinks) != 2 {
		t.Errorf("status -o json: got %+v, want not ready (connection refused), 2 jobs, 2 in doubt, index 42, 2 sinks", rep)
	}

	out, errOut, code = cliRun(t, "jobs", "--addr", e.url)
	if code != 0 {
		t.Fatalf("jobs: exit %d, stderr %s", code, errOut)
	}
	wantLines(t, out,
		"JOB | MODE | GUARANTEE | SINKS | WRITER | EPOCH | OWNER | LAST COMMITTED | IN DOUBT",
		"auto | auto | exactly_once | db | - | - | - | - | -",
		"ext | external | exactly_once | db,events | w0 | 1 | n1 | 0 | -",
		"ext | external | exactly_once | db,events | w1 | 1 | n1 | 0 | 1,2",
	)
	out, _, code = cliRun(t, "jobs", "-o", "json", "--addr", e.url)
	var jl api.JobList
	if code != 0 || json.Unmarshal([]byte(out), &jl) != nil || len(jl.Jobs) != 2 || jl.Jobs[0].Name != "auto" {
		t.Errorf("jobs -o json: exit %d, got %s, want the two jobs sorted", code, out)
	}
}

func TestCLICheckpointsAgeAgainstTimeout(t *testing.T) {
	e := newCLIEnv(t, "", nil)
	ctx := context.Background()
	if _, err := e.coord.PutJob(ctx, twopc.JobSpec{Name: "ext", Commit: twopc.ModeExternal}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.coord.PutJob(ctx, twopc.JobSpec{Name: "dbonly", Commit: twopc.ModeExternal, Sinks: []string{"db"}}); err != nil {
		t.Fatal(err)
	}
	ep := e.session("ext", "w1")
	e.prepare("ext", "w1", ep, 1)
	e.advance(10 * time.Minute)
	e.prepare("ext", "w1", ep, 2)
	e.advance(3 * time.Minute) // checkpoint 1: 13m of 15m (86%), checkpoint 2: 3m (20%)
	if _, err := e.coord.Commit(ctx, "ext", 1); err != nil {
		t.Fatal(err)
	}
	e.advance(2 * time.Minute)    // 1 is committed now; 2 is 5m old
	e.prepare("ext", "w1", ep, 3) // 0s old
	e.advance(7 * time.Minute)    // 2: 12m (80%), 3: 7m (46%)

	out, errOut, code := cliRun(t, "checkpoints", "ext", "--addr", e.url)
	if code != 0 {
		t.Fatalf("checkpoints: exit %d, stderr %s", code, errOut)
	}
	wantLines(t, out,
		"WRITER | CHECKPOINT | EPOCH | STATUS | AGE | KAFKA TIMEOUT | BRANCHES",
		"w1 | 2 | 1 | prepared | 12m0s | 80% of 15m0s ! | db:prepared events:prepared",
		"w1 | 3 | 1 | prepared | 7m0s | 46% of 15m0s | db:prepared events:prepared",
		"w1 | 1 | 1 | committed | 22m0s | - | db:committed events:committed",
	)
	if !strings.Contains(errOut, "warning: w1 checkpoint 2 is 12m0s old, 80% of the transaction timeout of sink events (15m0s)") ||
		strings.Contains(errOut, "checkpoint 3") {
		t.Errorf("checkpoints: stderr %q, want one warning about checkpoint 2", errOut)
	}

	// MySQL-only branches have no timeout to age against.
	ep = e.session("dbonly", "w")
	if _, err := e.coord.Write(ctx, "dbonly", "w", ep, nil, []*twopc.Record{{Sink: "db", Value: json.RawMessage(`"v"`)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.coord.Checkpoint(ctx, "dbonly", "w", ep, 1, nil, twopc.WaitCommitted); err != nil {
		t.Fatal(err)
	}
	e.advance(time.Hour)
	out, _, code = cliRun(t, "checkpoints", "dbonly", "--addr", e.url)
	wantLines(t, out,
		"WRITER | CHECKPOINT | EPOCH | STATUS | AGE | KAFKA TIMEOUT | BRANCHES",
		"w | 1 | 1 | prepared | 1h0m0s | - | db:prepared",
	)
	if code != 0 {
		t.Errorf("checkpoints dbonly: exit %d", code)
	}

	out, _, code = cliRun(t, "checkpoints", "ext", "-o", "json", "--addr", e.url)
	var cl api.CheckpointList
	if code != 0 || json.Unmarshal([]byte(out), &cl) != nil || len(cl.Checkpoints) != 3 || cl.Checkpoints[0].Checkpoint != 2 {
		t.Errorf("checkpoints -o json: exit %d, got %s, want 3 checkpoints, 2 first", code, out)
	}
}

func TestCLICommitAbort(t *testing.T) {
	e := newCLIEnv(t, "", nil)
	ctx := context.Background()
	if _, err := e.coord.PutJob(ctx, twopc.JobSpec{Name: "ext", Commit: twopc.ModeExternal}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.coord.PutJob(ctx, twopc.JobSpec{Name: "auto"}); err != nil {
		t.Fatal(err)
	}
	ep := e.session("ext", "w1")
	e.prepare("ext", "w1", ep, 1)
	e.prepare("ext", "w1", ep, 2)
	e.prepare("ext", "w1", ep, 3)

	out, errOut, code := cliRun(t, "commit", "ext", "1", "--addr", e.url)
	if code != 0 {
		t.Fatalf("commit: exit %d, stderr %s", code, errOut)
	}
	wantLines(t, out, "commit ext 1: committed", "WRITER | DECIDED", "w1 | 1")
	if got := e.events.Committed(); len(got) != 1 {
		t.Errorf("events sink: got %d committed records, want 1", len(got))
	}

	out, errOut, code = cliRun(t, "abort", "--addr", e.url, "ext", "3")
	if code != 0 {
		t.Fatalf("abort: exit %d, stderr %s", code, errOut)
	}
	wantLines(t, out, "abort ext 3: aborted", "WRITER | DECIDED", "w1 | 3")

	// A sink that does not confirm: 202 committing, said in words.
	e.events.FailCommit = errors.New("broker away")
	e.events.FailResolve = errors.New("broker away")
	out, errOut, code = cliRun(t, "commit", "ext", "2", "--addr", e.url)
	if code != 0 {
		t.Fatalf("commit (committing): exit %d, stderr %s", code, errOut)
	}
	if !strings.HasPrefix(out, "commit ext 2: committing: the decision is durable; a sink has not confirmed yet") {
		t.Errorf("commit (committing): got %q, want it to say committing", out)
	}
	out, _, code = cliRun(t, "commit", "ext", "2", "--addr", e.url, "-o", "json")
	var res twopc.CommitResult
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || res.Status != twopc.StatusCommitting {
		t.Errorf("commit -o json: exit %d, got %s, want status committing", code, out)
	}

	// Problems: code and detail, non-zero exit, nothing on stdout.
	for _, tc := range []struct {
		args []string
		want string
		code int
	}{
		{[]string{"commit", "nope", "1"}, "commit nope 1: 404 job_not_found: ", exitProblem},
		{[]string{"abort", "auto", "1"}, "abort auto 1: 409 mode_conflict: ", exitProblem},
		{[]string{"checkpoints", "bad/name"}, "400 invalid_name", exitProblem},
		{[]string{"commit", "ext", "zero"}, `checkpoint "zero" must be a positive integer`, exitUsage},
		{[]string{"commit", "ext"}, "commit takes 2 argument(s)", exitUsage},
		{[]string{"jobs", "-o", "yaml"}, `-o "yaml": want table or json`, exitUsage},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, errOut, code := cliRun(t, append(tc.args, "--addr", e.url)...)
			if code != tc.code || !strings.Contains(errOut, tc.want) || out != "" {
				t.Errorf("got exit %d, stdout %q, stderr %q; want exit %d, no stdout, stderr containing %q", code, out, errOut, tc.code, tc.want)
			}
		})
	}
}

func TestCLIDataLoss(t *testing.T) {
	var calls atomic.Int32
	e := newCLIEnv(t, "", func(s *svcWrap) {
		s.commit = func(ctx context.Context, job string, n int64) (twopc.CommitResult, error) {
			calls.Add(1)
			return twopc.CommitResult{}, fmt.Errorf("%w: sink events: checkpoint 1 of ext/w1 had been aborted by the broker", twopc.ErrDataLoss)
		}
	})
	out, errOut, code := cliRun(t, "commit", "ext", "1", "--addr", e.url)
	if code != exitDataLoss || calls.Load() != 1 {
		t.Fatalf("got exit %d after %d calls, want %d after 1", code, calls.Load(), exitDataLoss)
	}
	for _, want := range []string{"DATA LOSS: commit ext 1", "had been aborted by the broker", "NOT in the sink", strings.Repeat("!", 72)} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr %q does not contain %q", errOut, want)
		}
	}
	if strings.Contains(out, "committed") {
		t.Errorf("stdout %q must not call anything committed", out)
	}
}

func TestCLIToken(t *testing.T) {
	e := newCLIEnv(t, "s3cret", nil)
	_, errOut, code := cliRun(t, "jobs", "--addr", e.url)
	if code != exitProblem || !strings.Contains(errOut, "401 unauthorized") || !strings.Contains(errOut, "--token-file") {
		t.Errorf("no token: exit %d, stderr %q; want 1 and 401 unauthorized with a hint", code, errOut)
	}
	f := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(f, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := cliRun(t, "jobs", "--addr", e.url, "--token-file", f); code != 0 {
		t.Errorf("--token-file: exit %d, stderr %q", code, errOut)
	}
	t.Setenv("TXSINK_TOKEN_FILE", f)
	t.Setenv("TXSINK_ADDR", e.url)
	if _, errOut, code := cliRun(t, "jobs"); code != 0 {
		t.Errorf("TXSINK_TOKEN_FILE and TXSINK_ADDR: exit %d, stderr %q", code, errOut)
	}
	t.Setenv("TXSINK_TOKEN_FILE", "")
	t.Setenv("TXSINK_TOKEN", "s3cret")
	if _, errOut, code := cliRun(t, "jobs"); code != 0 {
		t.Errorf("TXSINK_TOKEN: exit %d, stderr %q", code, errOut)
	}
	t.Setenv("TXSINK_TOKEN", "wrong")
	if _, _, code := cliRun(t, "jobs"); code != exitProblem {
		t.Errorf("wrong TXSINK_TOKEN: exit %d, want %d", code, exitProblem)
	}
}

func TestCLIAddr(t *testing.T) {
	t.Setenv("TXSINK_ADDR", "")
	notSocket := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notSocket, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr, want string
		code       int
	}{
		{"tcp://127.0.0.1:1", "want an http:// or https:// URL or a Unix socket path", exitUsage},
		{filepath.Join(t.TempDir(), "nosock"), "cannot reach the sidecar at", exitProblem},
		{notSocket, "is not a Unix socket", exitUsage},
		{"http://127.0.0.1:1", "cannot reach the sidecar at http://127.0.0.1:1", exitProblem},
	} {
		_, errOut, code := cliRun(t, "status", "--addr", tc.addr)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("--addr %s: exit %d, stderr %q; want %d and %q", tc.addr, code, errOut, tc.code, tc.want)
		}
	}
	// The default address is the sidecar's default TCP address.
	c, where, err := dial("", "")
	if err != nil || where != defaultAddr || c == nil {
		t.Errorf("dial(\"\"): got %q, %v; want %s", where, err, defaultAddr)
	}
}

// A commit whose Kafka branch the broker had already aborted answers a
// data_loss problem carrying the result; the CLI names each lost writer and
// checkpoint, exits 3 and never calls it committed.
func TestCLICommitReportsDataLoss(t *testing.T) {
	e := newCLIEnv(t, "", nil)
	ctx := context.Background()
	if _, err := e.coord.PutJob(ctx, twopc.JobSpec{Name: "ext", Commit: twopc.ModeExternal}); err != nil {
		t.Fatal(err)
	}
	ep := e.session("ext", "w1")
	e.prepare("ext", "w1", ep, 1)
	e.prepare("ext", "w1", ep, 2)
	expired := e.events.Branches(twopctest.Prepared)
	if len(expired) != 2 {
		t.Fatalf("events sink: %d prepared branches, want 2", len(expired))
	}
	for _, id := range expired {
		if id.After == 0 { // the branch of checkpoint 1
			e.events.Expire(id)
		}
	}
	out, errOut, code := cliRun(t, "commit", "ext", "1", "--addr", e.url)
	if code != exitDataLoss || !strings.Contains(errOut, "DATA LOSS: commit ext 1") ||
		!strings.Contains(errOut, "data_loss: w1 checkpoint 1") || strings.Contains(out, "committed") {
		t.Errorf("commit ext 1: exit %d, stdout %q, stderr %q; want exit 3, a banner naming w1 checkpoint 1, nothing called committed",
			code, out, errOut)
	}
	// Checkpoint 2's branches are intact: committing it is fine, although
	// the list still holds checkpoint 1's data loss.
	out, errOut, code = cliRun(t, "commit", "ext", "2", "--addr", e.url)
	if code != 0 || !strings.HasPrefix(out, "commit ext 2: committed") {
		t.Errorf("commit ext 2: exit %d, stdout %q, stderr %q; want committed", code, out, errOut)
	}
	out, errOut, code = cliRun(t, "checkpoints", "ext", "--addr", e.url)
	if code != exitDataLoss || !strings.Contains(errOut, "data_loss: w1 checkpoint 1") {
		t.Errorf("checkpoints: exit %d, stderr %q; want exit 3 naming w1 checkpoint 1", code, errOut)
	}
	if !regexp.MustCompile(`(?m)^w1 +1 +1 +DATA_LOSS +\S+ +- +db:committed events:data_loss$`).MatchString(out) {
		t.Errorf("checkpoints: got\n%s\nwant a DATA_LOSS row for checkpoint 1 without a timeout", out)
	}
}
