// Package mysqltest gives tests a real MariaDB server, never a mock.
//
// Where the server comes from, in order:
//
//  1. TXSINK_TEST_MYSQL_DSN, if set, names a server to use (any database part is
//     replaced: every test gets its own database). It should run with the binary
//     log on (log_bin=ON, sync_binlog=1): without it MariaDB can answer OK to an
//     XA COMMIT from another session while the branch stays prepared.
//  2. Otherwise a shared private mariadbd with the binary log on, its data
//     directory and socket in the cache directory ($TXSINK_TEST_CACHE, default
//     <os.TempDir()>/txsink-mariadb-<uid>). The first test process of a
//     `go test ./...` run starts it (a flock on <cache>/lock keeps parallel
//     package test binaries from racing); later processes reuse it while its
//     socket answers. It keeps running after the tests so the next run starts
//     fast; StopShared stops it, or `kill $(cat <cache>/mysqld.pid)`. `make
//     test` runs the tests through internal/cmd/testrun, which gives them a
//     fresh cache directory and stops its server at the end.
//  3. If mariadbd is not installed and the process runs as root, it installs
//     the Debian package mariadb-server with apt-get first.
//
// If no server can be had the test fails with a message saying how to get
// one, unless TXSINK_TEST_SKIP_MYSQL=1 is set: then it is skipped.
//
// The system MariaDB of a developer machine (/run/mysqld/mysqld.sock) is never
// used implicitly: it usually runs with the binary log off.
package mysqltest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Environment variables read by this package.
const (
	EnvDSN   = "TXSINK_TEST_MYSQL_DSN"  // use this server instead of a private one
	EnvCache = "TXSINK_TEST_CACHE"      // directory of the shared private server
	EnvSkip  = "TXSINK_TEST_SKIP_MYSQL" // "1": skip (instead of fail) tests without a server
)

const howTo = "no MariaDB server for tests: install one (`apt-get install -y mariadb-server`; mariadbd and " +
	"mariadb-install-db must be on PATH or in /usr/sbin, /usr/bin), or set " + EnvDSN +
	"=user:pass@tcp(host:3306)/ to a server with log_bin=ON; set " + EnvSkip + "=1 to skip these tests instead"

// CacheDir is the directory of the shared private server.
func CacheDir() string {
	if d := os.Getenv(EnvCache); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("txsink-mariadb-%d", os.Getuid()))
}

var shared struct {
	once sync.Once
	dsn  string
	err  error
}

// ServerDSN returns the DSN (no database selected) of the test server: the
// one named by TXSINK_TEST_MYSQL_DSN or the shared private one, started if
// needed. Most tests want DSN, which also creates a database.
func ServerDSN(t testing.TB) string {
	t.Helper()
	shared.once.Do(func() { shared.dsn, shared.err = sharedServer() })
	if shared.err != nil {
		noServer(t, shared.err)
	}
	return shared.dsn
}

// DSN returns the DSN of a new, empty database on the test server, dropped
// when the test ends. Tests of different packages never share a database.
func DSN(t testing.TB) string {
	t.Helper()
	return CreateDatabase(t, ServerDSN(t))
}

// CreateDatabase creates a database named txsink_test_<random> on the server
// of serverDSN, drops it when the test ends and returns serverDSN with the
// database selected.
func CreateDatabase(t testing.TB, serverDSN string) string {
	t.Helper()
	cfg, err := mysql.ParseDSN(serverDSN)
	if err != nil {
		t.Fatalf("mysqltest: bad DSN: %v", err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "txsink_test_" + hex.EncodeToString(b[:])
	cfg.DBName = ""
	db, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatalf("mysqltest: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		db.Close()
		t.Fatalf("mysqltest: create database: %v", err)
	}
	t.Cleanup(func() {
		defer db.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Logf("mysqltest: drop database %s: %v", name, err)
			return
		}
		defer conn.Close()
		// A prepared XA branch left behind holds its locks; do not hang on it.
		_, _ = conn.ExecContext(ctx, "SET SESSION lock_wait_timeout = 10")
		if _, err := conn.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name); err != nil {
			t.Logf("mysqltest: drop database %s: %v", name, err)
		}
	})
	cfg.DBName = name
	return cfg.FormatDSN()
}

func noServer(t testing.TB, err error) {
	t.Helper()
	if os.Getenv(EnvSkip) == "1" {
		t.Skipf("%s=1: skipping test that needs MariaDB (%v)", EnvSkip, err)
	}
	t.Fatalf("mysqltest: %v\n%s", err, howTo)
}

// sharedServer returns the DSN of the server named by the environment or of
// the shared private server, starting it if its socket does not answer.
func sharedServer() (string, error) {
	if dsn := os.Getenv(EnvDSN); dsn != "" {
		cfg, err := mysql.ParseDSN(dsn)
		if err != nil {
			return "", fmt.Errorf("%s: %w", EnvDSN, err)
		}
		cfg.DBName = ""
		dsn = cfg.FormatDSN()
		if err := Ping(context.Background(), dsn, 10*time.Second); err != nil {
			return "", fmt.Errorf("%s: %w", EnvDSN, err)
		}
		return dsn, nil
	}
	dir := CacheDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	unlock, err := lockFile(filepath.Join(dir, "lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	s := &Server{dir: dir}
	if Ping(context.Background(), s.DSN(), time.Second) == nil {
		return s.DSN(), nil
	}
	bins, err := findBinaries(true)
	if err != nil {
		return "", err
	}
	s.bins = bins
	if err := s.install(); err != nil {
		return "", err
	}
	if err := s.start(); err != nil {
		return "", err
	}
	return s.DSN(), nil
}

// StopShared stops the shared private server of CacheDir, if one runs, and
// waits until it is gone. Its data directory is kept.
func StopShared() error {
	dir := CacheDir()
	unlock, err := lockFile(filepath.Join(dir, "lock"))
	if err != nil {
		return err
	}
	defer unlock()
	pid, err := readPid(filepath.Join(dir, "mysqld.pid"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	return stopPid(pid, syscall.SIGTERM, 60*time.Second)
}

func lockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// Ping reports whether the server of dsn answers within timeout.
func Ping(ctx context.Context, dsn string, timeout time.Duration) error {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return err
	}
	cfg.Timeout = timeout
	db, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return db.PingContext(ctx)
}

func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// stopPid signals pid and waits until it is gone.
func stopPid(pid int, sig syscall.Signal, timeout time.Duration) error {
	if err := syscall.Kill(pid, sig); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		var ws syscall.WaitStatus
		// Reap it if it is our child; harmless otherwise.
		_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("mariadbd (pid %d) still running %v after %v", pid, timeout, sig)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type binaries struct{ server, installDB string }

var aptOnce struct {
	once sync.Once
	err  error
}

// findBinaries finds mariadbd and mariadb-install-db, installing the
// mariadb-server package first when they are missing, install is set and we
// are root.
func findBinaries(install bool) (binaries, error) {
	b, err := lookBinaries()
	if err == nil || !install || os.Geteuid() != 0 {
		return b, err
	}
	if _, lerr := exec.LookPath("apt-get"); lerr != nil {
		return b, err
	}
	aptOnce.once.Do(func() { aptOnce.err = aptInstall() })
	if aptOnce.err != nil {
		return b, fmt.Errorf("%v; apt-get install mariadb-server: %w", err, aptOnce.err)
	}
	return lookBinaries()
}

func aptInstall() error {
	run := func(args ...string) error {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", strings.Join(args, " "), err, tail(out, 2000))
		}
		return nil
	}
	if run("install", "-y", "mariadb-server") == nil {
		return nil
	}
	if err := run("update"); err != nil {
		return err
	}
	return run("install", "-y", "mariadb-server")
}

func lookBinaries() (binaries, error) {
	find := func(names ...string) string {
		for _, n := range names {
			if p, err := exec.LookPath(n); err == nil {
				return p
			}
			for _, d := range []string{"/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/usr/local/mysql/bin"} {
				p := filepath.Join(d, n)
				if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
					return p
				}
			}
		}
		return ""
	}
	b := binaries{server: find("mariadbd", "mysqld"), installDB: find("mariadb-install-db", "mysql_install_db")}
	if b.server == "" || b.installDB == "" {
		return b, errors.New("mariadbd or mariadb-install-db not found")
	}
	return b, nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// ClientArgs returns the arguments that point the mariadb command-line client
// at the server of dsn (user, password, socket or host and port).
func ClientArgs(t testing.TB, dsn string) []string {
	t.Helper()
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatalf("mysqltest: parse DSN: %v", err)
	}
	args := []string{"-u" + cfg.User}
	if cfg.Passwd != "" {
		args = append(args, "-p"+cfg.Passwd)
	}
	switch cfg.Net {
	case "unix":
		args = append(args, "--socket="+cfg.Addr)
	default:
		host, port, err := net.SplitHostPort(cfg.Addr)
		if err != nil {
			t.Fatalf("mysqltest: address %q: %v", cfg.Addr, err)
		}
		args = append(args, "--protocol=tcp", "-h"+host, "-P"+port)
	}
	return args
}
