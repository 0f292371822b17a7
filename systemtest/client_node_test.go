package systemtest

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/internal/mysqltest"
)

// TestClientNode runs the Node client's own tests (clients/node/test, `node
// --test`) with the sidecar built by TestMain and the MariaDB server of the
// other tests. They start their own `sidecar dev`, kill it with SIGKILL
// between a write and a checkpoint, and read the result back with kcat and
// the mariadb CLI, so all three must be installed: a missing one fails the
// test, never skips it. Consumer groups' committed offsets are read with
// internal/cmd/groupoffsets, built here.
func TestClientNode(t *testing.T) {
	needTool(t, "node", "install Node.js ≥ 20 (e.g. apt-get install -y nodejs)")
	needTool(t, "kcat", "apt-get install -y kcat")
	needTool(t, "mariadb", "apt-get install -y mariadb-client")
	out, err := exec.Command("node", "--version").Output()
	if err != nil {
		t.Fatalf("node --version: %v", err)
	}
	m := regexp.MustCompile(`^v(\d+)\.`).FindStringSubmatch(strings.TrimSpace(string(out)))
	if m == nil {
		t.Fatalf("node --version said %q, want vN.…", out)
	}
	if major, _ := strconv.Atoi(m[1]); major < 20 {
		t.Fatalf("clients/node needs Node.js ≥ 20, found %s", strings.TrimSpace(string(out)))
	}

	dsn := mysqltest.ServerDSN(t) // fails, or skips only on the explicit opt-out
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "--test", "clients/node/test/")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "TXSINK_SIDECAR_BIN="+sidecarBin, "TXSINK_GROUPOFFSETS_BIN="+groupOffsetsBin(t), mysqltest.EnvDSN+"="+dsn)
	res, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("node --test clients/node/test/: still running after 5 minutes\n%s", res)
	}
	if err != nil {
		t.Fatalf("node --test clients/node/test/: %v\n%s", err, res)
	}
	// Every test's name and the summary, so a run shows what it covered.
	summary := map[string]int{}
	for _, l := range strings.Split(string(res), "\n") {
		if strings.HasPrefix(l, "ok ") {
			t.Log(l)
		}
		if m := regexp.MustCompile(`^# (tests|pass|fail|skipped|todo|cancelled) (\d+)$`).FindStringSubmatch(l); m != nil {
			summary[m[1]], _ = strconv.Atoi(m[2])
		}
	}
	t.Logf("node --test: %v", summary)
	// A run that found no tests, or skipped some, must not pass silently.
	if summary["tests"] == 0 || summary["pass"] != summary["tests"] || summary["skipped"]+summary["todo"]+summary["cancelled"] != 0 {
		t.Fatalf("node --test exited 0 but its summary is %v, want every test passed and none skipped:\n%s", summary, res)
	}
}
