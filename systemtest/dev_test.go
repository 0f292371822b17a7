package systemtest

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/internal/mysqltest"
	"github.com/txsink/txsink/internal/testenv"
	"github.com/txsink/txsink/twopc"
)

// TestDevKill9KeepsCommittedRecords: records committed to a topic the sink
// created on first use (not one of the dev mode's seeded topics) survive a
// kill -9 of `sidecar dev`. The broker runs in a process of its own and
// survives the kill; the sink also creates topics with CreateTopics
// (kafka.Config.CreateTopics), which kfake persists at once.
func TestDevKill9KeepsCommittedRecords(t *testing.T) {
	d := startDev(t)
	c := client.New("http://" + d.httpAddr)
	ctx := context.Background()
	s := openJob(t, c, "devkill", twopc.ModeAuto, "0")
	recs := records([]string{"a", "b", "c"})
	for _, r := range recs {
		r.Topic = "fresh-topic"
	}
	if _, err := c.Write(ctx, "devkill", "0", s.Epoch, nil, recs); err != nil {
		t.Fatal(err)
	}
	if res, err := c.Checkpoint(ctx, "devkill", "0", s.Epoch, 1, []byte("pos=3"), twopc.WaitCommitted); err != nil || res.Status != "committed" {
		t.Fatalf("checkpoint 1: got %+v, %v; want committed", res, err)
	}
	if got := kafkatest.ReadCommitted(ctx, t, d.kafkaAddr, "fresh-topic", 3); len(got) != 3 {
		t.Fatalf("before the kill: got %d records, want 3", len(got))
	}
	d.kill9()
	d.start(t)
	if got := kafkatest.ReadCommitted(ctx, t, d.kafkaAddr, "fresh-topic", 3); len(got) != 3 {
		t.Fatalf("after kill -9 and restart: got %d committed records, want 3", len(got))
	}
	s2, err := c.OpenSession(ctx, "devkill", "0", nil)
	if err != nil || s2.Checkpoint != 1 || string(s2.State) != "pos=3" {
		t.Fatalf("reopen: got %+v, %v; want checkpoint 1 with state pos=3", s2, err)
	}
}

// TestDevKill9ExternalPrepared is the reported dev-mode loss: an external
// checkpoint is prepared (a Kafka record and a MySQL row), `sidecar dev` is
// killed with SIGKILL and restarted, and the checkpoint is committed. Three
// rounds, because with a broker that died with the sidecar the second crash
// also resurrected aborted records. Every record must be in Kafka once
// (read_committed, franz-go and kcat), every row in MySQL once, the broker
// the same process throughout, and no DATA LOSS in the log.
func TestDevKill9ExternalPrepared(t *testing.T) {
	const job, kafkaTopic, rounds = "devext", "devext", 3
	d := startDev(t)
	c := client.New("http://" + d.httpAddr)
	db := devDB(t, d.dsn)
	brokerPID := d.brokerPID(t)
	if brokerPID == 0 || !pidAlive(brokerPID) {
		t.Fatalf("no running broker in broker.json (pid %d)", brokerPID)
	}
	if _, err := c.PutJob(tctx(t), job, twopc.ModeExternal, nil); err != nil {
		t.Fatal(err)
	}
	// txsink_dev.events outlives the test: keys of this run only.
	runKey := fmt.Sprintf("devext-%d", time.Now().UnixNano())
	var want []string
	for n := int64(1); n <= rounds; n++ {
		s := mustSession(t, c, job, "0", nil)
		v := fmt.Sprintf("x%d", n)
		want = append(want, v)
		recs := []*twopc.Record{
			{Sink: "events", Topic: kafkaTopic, Key: []byte(`"k"`), Value: jsonArg(v)},
			{Sink: "db", Stmt: "insert_event", Args: []json.RawMessage{jsonArg(runKey), jsonArg(v)}},
		}
		mustWriteRecs(t, c, job, "0", s.Epoch, recs)
		mustCheckpoint(t, c, job, "0", s.Epoch, n, twopc.StatusPrepared)

		d.kill9()
		if !pidAlive(brokerPID) {
			t.Fatalf("round %d: the broker (pid %d) died with the sidecar", n, brokerPID)
		}
		d.start(t)
		if got := d.brokerPID(t); got != brokerPID {
			t.Fatalf("round %d: broker pid %d after the restart, want %d (reused)", n, got, brokerPID)
		}
		r, err := c.Commit(tctx(t), job, n)
		if err != nil || r.Status != twopc.StatusCommitted {
			t.Fatalf("round %d: commit %d: got %+v, %v; want committed", n, n, r, err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var got []string
	for _, r := range kafkatest.ReadCommittedWith(ctx, t, d.kafkaAddr, kafkaTopic, rounds, kafkatest.ReadOptions{Linger: time.Second}) {
		got = append(got, string(r.Value)) // a JSON string value is stored as its text
	}
	if !slices.Equal(got, want) {
		t.Errorf("Kafka read_committed (franz-go): got %q, want %q, each once", got, want)
	}
	needTool(t, "kcat", "apt-get install -y kcat")
	out, err := exec.CommandContext(ctx, "kcat", "-C", "-b", d.kafkaAddr, "-t", kafkaTopic, "-X", "isolation.level=read_committed",
		"-e", "-q", "-f", "%s\n").Output()
	if err != nil {
		t.Fatalf("kcat: %v", err)
	}
	if got := strings.Fields(string(out)); !slices.Equal(got, want) {
		t.Errorf("Kafka read_committed (kcat): got %q, want %q", got, want)
	}
	if rows := eventRows(t, db, runKey); !slices.Equal(rows, want) {
		t.Errorf("MySQL txsink_dev.events: got %q, want %q, each once", rows, want)
	}
	if strings.Contains(d.logs.String(), "DATA LOSS") {
		t.Errorf("the sidecar logged DATA LOSS:\n%s", grepLines(d.logs.String(), "DATA LOSS"))
	}
}

// TestDevKill9PageviewsPython runs examples/pageviews-python against
// `sidecar dev` and kills the sidecar with SIGKILL three times at random
// points (seeded; the seed is logged) while the app runs; the app retries
// and resumes on its own. The totals in MySQL (a private server) and Kafka
// must be exact and the log must hold no DATA LOSS.
func TestDevKill9PageviewsPython(t *testing.T) {
	needTool(t, "python3", "apt-get install -y python3")
	const job, events, every, kills = "pageviews-py-kill", 20000, 100, 3
	seed := time.Now().UnixNano()
	t.Logf("kill points seeded with %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))

	// A MariaDB of this test's own: txsink_dev.pv of the shared test server
	// also counts the page views of other runs of the examples' tests.
	mdir, err := os.MkdirTemp("", "txsink-pvdb-")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := mysqltest.Start(mdir)
	if err != nil {
		if os.Getenv(mysqltest.EnvSkip) == "1" {
			t.Skipf("%s=1: skipping, no private MariaDB (%v)", mysqltest.EnvSkip, err) // explicit opt-out only
		}
		t.Fatalf("private MariaDB: %v", err)
	}
	t.Cleanup(func() {
		srv.Stop()
		os.RemoveAll(mdir)
	})
	d := startDevOn(t, srv.DSN())
	db := devDB(t, d.dsn)
	before := pvViews(t, db, pvApps)
	brokerPID := d.brokerPID(t)
	if brokerPID == 0 || !pidAlive(brokerPID) {
		t.Fatalf("no running broker in broker.json (pid %d)", brokerPID)
	}
	input := filepath.Join(t.TempDir(), "clicks.ndjson")
	app := exec.Command("python3", "examples/pageviews-python/pageviews.py", "--socket", d.socket, "--input", input,
		"--events", fmt.Sprint(events), "--every", fmt.Sprint(every), "--job", job, "--kafka", d.kafkaAddr)
	app.Dir = repoRoot(t)
	appOut := &testenv.Buffer{}
	app.Stdout, app.Stderr = appOut, appOut
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	appDone := make(chan struct{})
	go func() { app.Wait(); close(appDone) }()
	t.Cleanup(func() {
		_ = app.Process.Kill()
		<-appDone
		if t.Failed() {
			t.Logf("pageviews.py output (tail):\n%s", tail(appOut, 30))
		}
	})

	// Kill after a random number of newly committed checkpoints, plus a
	// random fraction of a checkpoint's time, so kills land anywhere in
	// the protocol (writes, prepare, journal, commit).
	ckLine := regexp.MustCompile(`(?m)^checkpoint \d+: lines`)
	deadline := time.Now().Add(3 * time.Minute)
	for k := 1; k <= kills; k++ {
		target := len(ckLine.FindAllString(appOut.String(), -1)) + 3 + rng.IntN(25)
		for len(ckLine.FindAllString(appOut.String(), -1)) < target {
			select {
			case <-appDone:
				t.Fatalf("the app finished before kill %d (%v)", k, app.ProcessState)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("kill %d: no checkpoint %d within the deadline", k, target)
			}
			time.Sleep(5 * time.Millisecond)
		}
		select {
		case <-time.After(time.Duration(rng.IntN(40)) * time.Millisecond):
		case <-appDone:
		}
		d.kill9()
		t.Logf("kill %d after %d checkpoint lines of the app", k, target)
		if !pidAlive(brokerPID) {
			t.Fatalf("kill %d: the broker (pid %d) died with the sidecar", k, brokerPID)
		}
		d.start(t)
		if got := d.brokerPID(t); got != brokerPID {
			t.Fatalf("kill %d: broker pid %d after the restart, want %d (reused)", k, got, brokerPID)
		}
	}
	select {
	case <-appDone:
	case <-time.After(3 * time.Minute):
		t.Fatal("the app did not finish within 3 minutes after the last kill")
	}
	if code := app.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("pageviews.py: exit status %d, want 0", code)
	}
	apps := readClicks(t, input)
	if len(apps) != events {
		t.Fatalf("input has %d lines, want %d", len(apps), events)
	}
	total := countApps(apps)
	if got := diffViews(pvViews(t, db, pvApps), before); !mapsEqual(got, total) {
		t.Errorf("pv grew by %v, want %v (the counts of %s)", got, total, input)
	}
	checkPageviewsKafka(t, d.kafkaAddr, job, apps, every)
	if strings.Contains(d.logs.String(), "DATA LOSS") {
		t.Errorf("the sidecar logged DATA LOSS:\n%s", grepLines(d.logs.String(), "DATA LOSS"))
	}
	if !t.Failed() {
		t.Logf("%d events, %d kills of the dev sidecar: pv and pageviews exact, broker pid %d throughout", events, kills, brokerPID)
	}
}

// TestDevBrokerLifecycle: a restarted dev sidecar reuses its broker; a
// broker on another address than --kafka-addr is a clear error; Ctrl-C
// (SIGINT) stops the sidecar and the broker; --stop-broker stops a leftover
// broker and never a process that is no broker; a stale broker.json is
// replaced.
func TestDevBrokerLifecycle(t *testing.T) {
	d := startDev(t)
	pid := d.brokerPID(t)
	if pid == 0 || !pidAlive(pid) {
		t.Fatalf("no running broker in broker.json (pid %d)", pid)
	}
	if !strings.Contains(d.logs.String(), fmt.Sprintf("runs as pid %d", pid)) {
		t.Errorf("the banner does not name the broker's pid %d:\n%s", pid, tail(d.logs, 30))
	}

	// Another --kafka-addr on the same data dir.
	other := freeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, sidecarBin, "dev", "--data-dir", d.dataDir, "--kafka-addr", other,
		"--http-addr", freeAddr(t), "--raft-addr", freeAddr(t), "--mysql-dsn", "off").CombinedOutput()
	wantErr := fmt.Sprintf("runs as pid %d on %s, but --kafka-addr is %s", pid, d.kafkaAddr, other)
	if err == nil || !strings.Contains(string(out), wantErr) {
		t.Fatalf("dev with another --kafka-addr: got %v\n%s\nwant an error saying %q", err, out, wantErr)
	}
	if !pidAlive(pid) {
		t.Fatal("the refused start stopped the broker")
	}

	// kill -9, restart: reused.
	d.kill9()
	if !pidAlive(pid) {
		t.Fatalf("the broker (pid %d) died with the sidecar", pid)
	}
	d.start(t)
	if got := d.brokerPID(t); got != pid {
		t.Fatalf("after the restart: broker pid %d, want %d", got, pid)
	}
	if !strings.Contains(d.logs.String(), "reusing the running Kafka broker") {
		t.Errorf("the restarted sidecar does not say it reuses the broker:\n%s", tail(d.logs, 20))
	}

	// Ctrl-C stops both, the broker after the sidecar.
	d.stop()
	waitGone(t, pid, 30*time.Second)
	if got := d.brokerPID(t); got != 0 {
		t.Errorf("after the clean stop broker.json still names pid %d", got)
	}
	logs := d.logs.String()
	if i, j := strings.LastIndex(logs, `msg="raft stopped"`), strings.LastIndex(logs, "stopping the Kafka broker"); i < 0 || j < i {
		t.Errorf("want the journal closed before the broker is stopped:\n%s", tail(d.logs, 15))
	}

	// A new broker; kill -9 of the sidecar leaves it; --stop-broker stops it.
	d.start(t)
	pid2 := d.brokerPID(t)
	if pid2 == 0 || pid2 == pid {
		t.Fatalf("after the clean stop and a start: broker pid %d, want a new one (old %d)", pid2, pid)
	}
	// While the sidecar runs, --stop-broker refuses: the sidecar would lose
	// its broker.
	out, err = exec.CommandContext(ctx, sidecarBin, "dev", "--data-dir", d.dataDir, "--socket", d.socket, "--stop-broker").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "still running") || !pidAlive(pid2) {
		t.Errorf("--stop-broker with the sidecar running: got %v, %q, broker alive %v; want a refusal and the broker alive",
			err, out, pidAlive(pid2))
	}
	d.kill9()
	if out := d.stopBroker(t); !strings.Contains(out, fmt.Sprintf("stopped the Kafka broker (pid %d", pid2)) {
		t.Errorf("--stop-broker said %q", out)
	}
	waitGone(t, pid2, 30*time.Second)
	if out := d.stopBroker(t); !strings.Contains(out, "no Kafka broker") {
		t.Errorf("--stop-broker without a broker said %q", out)
	}

	// A broker.json naming a live process that is no broker (this test)
	// is stale: --stop-broker leaves that process alone.
	stateFile := filepath.Join(d.dataDir, "kafka", "broker.json")
	if err := os.WriteFile(stateFile, []byte(fmt.Sprintf(`{"pid":%d,"addr":%q}`, os.Getpid(), d.kafkaAddr)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = exec.CommandContext(ctx, sidecarBin, "dev", "--data-dir", d.dataDir, "--stop-broker").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "no Kafka broker") {
		t.Errorf("--stop-broker with broker.json naming a non-broker pid: got %v, %q; want no broker", err, out)
	}

	// A stale broker.json (dead pid) is replaced.
	stale := fmt.Sprintf(`{"pid":%d,"addr":%q}`, pid2, d.kafkaAddr)
	if err := os.WriteFile(stateFile, []byte(stale), 0o600); err != nil {
		t.Fatal(err)
	}
	d.start(t)
	if pid3 := d.brokerPID(t); pid3 == 0 || pid3 == pid2 || !pidAlive(pid3) {
		t.Fatalf("with a stale broker.json: broker pid %d, want a new running one", pid3)
	}
}

// eventRows are the values of txsink_dev.events rows with key k, in id order.
func eventRows(t *testing.T, db *sql.DB, k string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := db.QueryContext(ctx, "SELECT v FROM events WHERE k = ? ORDER BY id", k)
	if err != nil {
		t.Fatalf("read events: %v", err)
	}
	defer rows.Close()
	var vs []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return vs
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
