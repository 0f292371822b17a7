package systemtest

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/mysqltest"
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
	dsn := mysqltest.ServerDSN(t)
	httpAddr, kafkaAddr, raftAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	dir := t.TempDir()
	logs := &syncBuf{}
	cmd := exec.Command(sidecarBin, "dev", "--data-dir", dir, "--http-addr", httpAddr, "--kafka-addr", kafkaAddr,
		"--raft-addr", raftAddr, "--mysql-dsn", dsn)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("sidecar dev output:\n%s", tail(logs, 40))
		}
	})
	c := client.New("http://" + httpAddr)
	deadline := time.Now().Add(30 * time.Second)
	for c.Ready(context.Background()) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("dev sidecar not ready:\n%s", tail(logs, 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), `sink "db"`) {
		t.Fatalf("banner does not show the db sink:\n%s", tail(logs, 30))
	}
	// The dev db is txsink_dev on the test server; the README's mariadb
	// call uses the local socket, so point it at the test server instead.
	mysqlArgs := mysqltest.ClientArgs(t, dsn)
	blocks := readmeBlocks(t)
	script := "set -euo pipefail\n" + blocks[0] + "\necho '--- db'\n" + blocks[1]
	script = strings.NewReplacer("localhost:8470", httpAddr, "127.0.0.1:9092", kafkaAddr,
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
