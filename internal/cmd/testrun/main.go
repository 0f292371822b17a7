// Command testrun runs `go test` with the given arguments so that the test
// MariaDB it starts is stopped again, even when tests fail: `make test`
// calls it.
//
// internal/mysqltest starts one shared private mariadbd per cache directory
// ($TXSINK_TEST_CACHE) and leaves it running for the next run. Other runs on
// the same machine may be using the default cache directory's server, so
// testrun never stops that one: it gives its own `go test` a fresh cache
// directory, stops the server there when `go test` ends and removes the
// directory. A fresh server costs about 1.5 s (mariadb-install-db and start)
// on a 2-core machine.
//
// A caller that sets TXSINK_TEST_CACHE or TXSINK_TEST_MYSQL_DSN owns that
// server: testrun then only runs `go test`. The exit status is go test's.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/txsink/txsink/internal/mysqltest"
)

func main() {
	code, err := run(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "testrun:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func run(args []string) (int, error) {
	owned := os.Getenv(mysqltest.EnvCache) == "" && os.Getenv(mysqltest.EnvDSN) == ""
	var dir string
	if owned {
		// Short and in /tmp: the server's socket lives in it, and socket
		// paths are limited to about 100 bytes.
		d, err := os.MkdirTemp("", "txsink-test-")
		if err != nil {
			return 1, err
		}
		dir = d
		os.Setenv(mysqltest.EnvCache, dir) // for the child and for StopShared below
	}
	code, err := goTest(args)
	if owned {
		if serr := mysqltest.StopShared(); serr != nil {
			err = errors.Join(err, fmt.Errorf("stopping the test MariaDB of %s: %w (kill $(cat %s/mysqld.pid))", dir, serr, dir))
			return max(code, 1), err
		}
		if rerr := os.RemoveAll(dir); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	return code, err
}

// goTest runs go test with args and returns its exit code. SIGINT and
// SIGTERM are passed on to it and do not stop testrun, so the clean-up
// still runs after go test has stopped.
func goTest(args []string) (int, error) {
	goBin := os.Getenv("GO")
	if goBin == "" {
		goBin = "go"
	}
	cmd := exec.Command(goBin, append([]string{"test"}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	if err := cmd.Start(); err != nil {
		return 1, err
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case s := <-sig:
				_ = cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err := cmd.Wait()
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		if ee.ExitCode() < 0 { // killed by a signal
			return 1, err
		}
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 1, err
	}
	return 0, nil
}
