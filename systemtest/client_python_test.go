package systemtest

import (
	"testing"
	"time"

	"github.com/txsink/txsink/internal/mysqltest"
)

// TestClientPython runs the Python client's unittest suite
// (clients/python/tests) with the sidecar binary TestMain built and the
// test MariaDB server, so that `make test` covers the client. The suite
// starts its own `sidecar dev` instances (and stops them and their
// brokers), kills one with SIGKILL between a write and a checkpoint, and
// checks the sinks with kcat and the mariadb CLI, and consumer groups'
// committed offsets with internal/cmd/groupoffsets (built here).
func TestClientPython(t *testing.T) {
	needTool(t, "python3", "apt-get install python3 (≥ 3.9)")
	needTool(t, "kcat", "apt-get install kcat")
	needTool(t, "mariadb", "apt-get install mariadb-client")
	dsn := mysqltest.ServerDSN(t)
	out, code := runExample(t, 10*time.Minute,
		[]string{"TXSINK_SIDECAR_BIN=" + sidecarBin, "TXSINK_GROUPOFFSETS_BIN=" + groupOffsetsBin(t), mysqltest.EnvDSN + "=" + dsn,
			"TXSINK_TOKEN=", "TXSINK_ADDR="},
		"python3", "-m", "unittest", "discover", "-s", "clients/python/tests", "-v")
	if code != 0 {
		t.Fatalf("python3 -m unittest discover -s clients/python/tests: exit status %d, want 0\n%s", code, out)
	}
	t.Logf("python3 -m unittest discover -s clients/python/tests:\n%s", out)
}
