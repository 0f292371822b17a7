package systemtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/mysqltest"
	"github.com/txsink/txsink/internal/testenv"
)

// readmeBlocks returns the ```sh blocks of README.md's walk-through section.
func readmeBlocks(t *testing.T) []string {
	t.Helper()
	_, self, _, _ := runtime.Caller(0)
	f, err := os.Open(filepath.Join(filepath.Dir(self), "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []string
	var cur []string
	in, section := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			section = strings.HasPrefix(line, "## Walk-through")
		case section && line == "```sh":
			in, cur = true, nil
		case section && in && line == "```":
			in = false
			blocks = append(blocks, strings.Join(cur, "\n"))
		case in:
			cur = append(cur, line)
		}
	}
	if len(blocks) < 2 {
		t.Fatalf("README walk-through: found %d sh blocks, want the Kafka and the MySQL one", len(blocks))
	}
	return blocks
}

// TestReadmeWalkthrough runs the README's walk-through as written against
// `sidecar dev` (ports moved to free ones), and checks what kcat and
// mariadb print.
func TestReadmeWalkthrough(t *testing.T) {
	for _, tool := range []string{"kcat", "curl", "mariadb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the walk-through needs %s: apt-get install %s", tool, map[string]string{"kcat": "kcat", "curl": "curl", "mariadb": "mariadb-client"}[tool])
		}
	}
	dev := startDev(t)
	// The dev db is txsink_dev on the test server; the README's mariadb
	// call uses the local socket, so point it at the test server instead.
	mysqlArgs := mysqltest.ClientArgs(t, dev.dsn)
	blocks := readmeBlocks(t)
	script := "set -euo pipefail\n" + blocks[0] + "\necho '--- db'\n" + blocks[1]
	script = strings.NewReplacer("localhost:8470", dev.httpAddr, "127.0.0.1:9092", dev.kafkaAddr,
		"mariadb txsink_dev", "mariadb "+strings.Join(mysqlArgs, " ")+" txsink_dev").Replace(script)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("walk-through failed: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{`"epoch":1`, `"accepted":2`, `"status":"committed"`, "k1 hello", `k2 {"n":2}`, "--- db", "k1\thello"} {
		if !strings.Contains(text, want) {
			t.Errorf("walk-through output lacks %q:\n%s", want, text)
		}
	}
	// Before the checkpoint kcat printed nothing: "k1 hello" appears once.
	if n := strings.Count(text, "k1 hello"); n != 1 {
		t.Errorf("k1 hello appears %d times, want once:\n%s", n, text)
	}
}

// devSidecar is a `sidecar dev` process of one test: its own data dir and
// free ports, and the db sink on the test MariaDB server (database
// txsink_dev there, shared by the tests of a run and kept between runs).
type devSidecar struct {
	httpAddr  string // HTTP API, host:port
	kafkaAddr string // the dev broker (a process of its own)
	socket    string // the API's Unix socket
	dataDir   string // --data-dir
	dsn       string // the MariaDB server, no database selected
	logs      *testenv.Buffer
	args      []string // the command line, for restarts
	cmd       *exec.Cmd
	done      chan struct{} // closed when cmd has exited
}

// startDev starts `sidecar dev` as `make run` does, with ports moved to free
// ones, and waits until it is ready and has the db sink. The test's cleanup
// stops it (SIGINT, SIGKILL after 20s), then any broker left running
// (`sidecar dev --stop-broker`, checked to be gone), and logs its output if
// the test failed.
func startDev(t *testing.T) *devSidecar {
	t.Helper()
	return startDevOn(t, mysqltest.ServerDSN(t))
}

// startDevOn is startDev with the db sink on the MariaDB server of dsn (no
// database selected).
func startDevOn(t *testing.T, dsn string) *devSidecar {
	t.Helper()
	// A short data dir: the socket path in it must stay below 108 bytes.
	dir, err := os.MkdirTemp("", "txsink-dev-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &devSidecar{httpAddr: freeAddr(t), kafkaAddr: freeAddr(t), socket: filepath.Join(dir, "sidecar.sock"),
		dataDir: dir, dsn: dsn, logs: &testenv.Buffer{}}
	d.args = []string{"dev", "--data-dir", dir, "--http-addr", d.httpAddr, "--kafka-addr", d.kafkaAddr,
		"--raft-addr", freeAddr(t), "--mysql-dsn", d.dsn}
	t.Cleanup(func() {
		d.stop()
		d.stopBroker(t)
		if t.Failed() {
			t.Logf("sidecar dev output:\n%s", tail(d.logs, 40))
		}
	})
	d.start(t)
	return d
}

// start runs the sidecar (again, with the same data dir and ports) and waits
// until it is ready and has the db sink.
func (d *devSidecar) start(t *testing.T) {
	t.Helper()
	d.cmd = exec.Command(sidecarBin, d.args...)
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	d.done = done
	cmd := d.cmd
	go func() { cmd.Wait(); close(done) }()
	waitReady(t, client.New("http://"+d.httpAddr), cmd, done, d.logs)
	if !strings.Contains(d.logs.String(), `sink "db"`) {
		t.Fatalf("banner does not show the db sink:\n%s", tail(d.logs, 30))
	}
}

// kill9 kills the sidecar with SIGKILL; its broker keeps running.
func (d *devSidecar) kill9() {
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Kill()
	<-d.done
	d.cmd = nil
}

// stop stops the sidecar gracefully (SIGINT; SIGKILL after 20s).
func (d *devSidecar) stop() {
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Signal(os.Interrupt)
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		d.kill9()
	}
	d.cmd = nil
}

// brokerPID is the pid in the data dir's broker.json (0 if there is none).
func (d *devSidecar) brokerPID(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.dataDir, "kafka", "broker.json"))
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		PID  int    `json:"pid"`
		Addr string `json:"addr"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("broker.json %s: %v", b, err)
	}
	return st.PID
}

// stopBroker runs `sidecar dev --stop-broker` for the data dir and fails
// the test if the broker it named is still alive afterwards.
func (d *devSidecar) stopBroker(t *testing.T) string {
	t.Helper()
	pid := d.brokerPID(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, sidecarBin, "dev", "--data-dir", d.dataDir, "--stop-broker").CombinedOutput()
	if err != nil {
		t.Errorf("sidecar dev --stop-broker: %v\n%s", err, out)
	}
	if pid != 0 && pidAlive(pid) {
		t.Errorf("after --stop-broker the broker (pid %d) still runs", pid)
	}
	return string(out)
}

// pidAlive reports whether a process with this pid exists and is not a
// zombie (a broker whose sidecar died is reaped by init, which in some
// containers never happens).
func pidAlive(pid int) bool {
	if pid <= 0 {
		return false // kill(0, 0) would signal our own process group
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// "pid (comm) S ...": the state follows the last ')'.
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'Z' {
			return false
		}
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// waitGone polls until process pid is gone, at most within.
func waitGone(t *testing.T, pid int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for pidAlive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs after %v", pid, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The README's first-screen Python and Node examples are the ones the
// clients' READMEs carry, which the clients' own suites run as printed
// (clients/python/tests, clients/node/test): they cannot drift apart.
func TestReadmeClientSnippets(t *testing.T) {
	_, self, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(self), "..")
	first := func(path, lang string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(root, path))
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		i := strings.Index(s, "```"+lang+"\n")
		if i < 0 {
			t.Fatalf("%s: no ```%s block", path, lang)
		}
		j := strings.Index(s[i+1:], "\n```")
		if j < 0 {
			t.Fatalf("%s: unterminated ```%s block", path, lang)
		}
		return s[i : i+1+j+4]
	}
	for _, c := range []struct{ client, lang string }{{"clients/python/README.md", "python"}, {"clients/node/README.md", "js"}} {
		if got, want := first("README.md", c.lang), first(c.client, c.lang); got != want {
			t.Errorf("README.md's first ```%s block differs from %s's, which its tests run:\n got:\n%s\nwant:\n%s", c.lang, c.client, got, want)
		}
	}
}
