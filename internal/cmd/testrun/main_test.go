package main

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txsink/txsink/internal/mysqltest"
)

// processesMentioning lists the pids whose command line contains s.
func processesMentioning(t *testing.T, s string) []string {
	t.Helper()
	cmdlines, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, p := range cmdlines {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the process ended meanwhile
		}
		if bytes.Contains(b, []byte(s)) {
			pids = append(pids, filepath.Base(filepath.Dir(p)))
		}
	}
	return pids
}

// TestRunStopsTheServerItStarted runs a MariaDB test through run, with a
// package that does not exist next to it so that go test fails, and checks
// the failure is passed on and the private server is gone afterwards.
func TestRunStopsTheServerItStarted(t *testing.T) {
	t.Setenv(mysqltest.EnvCache, "")
	t.Setenv(mysqltest.EnvDSN, "")
	t.Chdir("../../..") // the module root: the package paths below are relative to it

	code, err := run([]string{"-count=1", "-run", "^TestDSN$", "./internal/mysqltest/", "./internal/cmd/testrun/no-such-package"})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if code == 0 {
		t.Errorf("run: exit code 0 with a missing package, want go test's failure")
	}
	dir := os.Getenv(mysqltest.EnvCache)
	if dir == "" || !strings.HasPrefix(filepath.Base(dir), "txsink-test-") {
		t.Fatalf("run used cache dir %q, want a fresh txsink-test-* dir", dir)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("cache dir %s: stat %v, want it removed", dir, err)
	}
	if pids := processesMentioning(t, dir); len(pids) > 0 {
		t.Errorf("processes %v still run from %s, want the test MariaDB stopped", pids, dir)
	}
}

// A caller's own cache dir (or DSN) is its server: run leaves it alone.
func TestRunLeavesCallersServer(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(mysqltest.EnvCache, dir)
	t.Setenv(mysqltest.EnvDSN, "")
	t.Chdir("../../..")
	code, err := run([]string{"-count=1", "-run", "^$", "./internal/cmd/kafkabroker/"})
	if err != nil || code != 0 {
		t.Fatalf("run: code %d, %v; want 0", code, err)
	}
	if got := os.Getenv(mysqltest.EnvCache); got != dir {
		t.Errorf("TXSINK_TEST_CACHE: got %q, want the caller's %q", got, dir)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("caller's cache dir: %v, want it kept", err)
	}
}
