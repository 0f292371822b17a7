package mysqltest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Server is a mariadbd process of our own with the binary log on, reached
// through a Unix socket in its directory (no TCP port).
type Server struct {
	dir  string
	bins binaries
	cmd  *exec.Cmd     // running private server; nil when stopped or shared
	done chan struct{} // closed when cmd has exited
}

// PrivateServer starts a mariadbd for this test alone (its own data
// directory and socket), stopped and removed when the test ends. Crash tests
// use it to kill -9 the server. It is independent of TXSINK_TEST_MYSQL_DSN:
// it needs mariadbd installed here.
func PrivateServer(t testing.TB) *Server {
	t.Helper()
	// A short path: a Unix socket path must stay below 108 bytes.
	dir, err := os.MkdirTemp("", "txsink-mdb-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	s, err := Start(dir)
	if err != nil {
		if errors.Is(err, errNoBinaries) {
			noServer(t, err)
		}
		t.Fatalf("mysqltest: %v", err)
	}
	t.Cleanup(s.Kill9)
	return s
}

// Start starts a private mariadbd (binary log on, Unix socket only) as a
// child of this process, with its data directory, socket and log in dir
// (keep the path short: a socket path must stay below 108 bytes). A dir that
// holds an earlier install is reused. It installs the mariadb-server package
// first when mariadbd is missing and we are root. For programs such as the
// chaos driver; tests use PrivateServer.
func Start(dir string) (*Server, error) {
	bins, err := findBinaries(true)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoBinaries, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	s := &Server{dir: dir, bins: bins}
	if err := s.install(); err != nil {
		return nil, err
	}
	if err := s.startChild(); err != nil {
		return nil, err
	}
	return s, nil
}

// errNoBinaries marks a Start that found no mariadbd to run.
var errNoBinaries = errors.New("mysqltest: no mariadbd")

// DSN returns the server's DSN with no database selected.
func (s *Server) DSN() string {
	cfg := mysql.NewConfig()
	cfg.User = "root"
	cfg.Net = "unix"
	cfg.Addr = s.socket()
	return cfg.FormatDSN()
}

// Database creates a fresh database on this server for the test and returns
// its DSN (see CreateDatabase).
func (s *Server) Database(t testing.TB) string {
	t.Helper()
	return CreateDatabase(t, s.DSN())
}

// Kill9 kills the server with SIGKILL and waits until it is gone.
func (s *Server) Kill9() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// Restart starts the server again after Kill9 (crash recovery runs) or stops
// it gracefully first if it is running.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if err := s.Relaunch(); err != nil {
		t.Fatalf("mysqltest: restart: %v", err)
	}
}

// Relaunch is Restart for programs: it stops a running server gracefully,
// starts it again and waits until it answers.
func (s *Server) Relaunch() error {
	s.Stop()
	return s.startChild()
}

// Stop stops a running server gracefully (SIGTERM) and waits until it is
// gone; after a minute it kills it.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(time.Minute):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// Pid is the running server's process id (0 when stopped).
func (s *Server) Pid() int {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// LogPath is the server's error log.
func (s *Server) LogPath() string { return filepath.Join(s.dir, "mysqld.log") }

func (s *Server) socket() string  { return filepath.Join(s.dir, "mysqld.sock") }
func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }

// install creates the data directory unless a previous install finished.
func (s *Server) install() error {
	done := filepath.Join(s.dir, "installed")
	if _, err := os.Stat(done); err == nil {
		return nil
	}
	_ = os.RemoveAll(s.dataDir())
	cmd := exec.Command(s.bins.installDB, "--no-defaults", "--datadir="+s.dataDir(),
		"--auth-root-authentication-method=normal")
	if os.Geteuid() == 0 {
		cmd.Args = append(cmd.Args, "--user=root")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w\n%s", s.bins.installDB, err, tail(out, 2000))
	}
	return os.WriteFile(done, nil, 0o600)
}

func (s *Server) command() *exec.Cmd {
	cmd := exec.Command(s.bins.server, "--no-defaults",
		"--datadir="+s.dataDir(),
		"--socket="+s.socket(),
		"--pid-file="+filepath.Join(s.dir, "mysqld.pid"),
		"--skip-networking",
		"--log-bin="+filepath.Join(s.dataDir(), "binlog"),
		"--sync-binlog=1",
		"--server-id=1",
		"--innodb-buffer-pool-size=64M",
		"--max-connections=1000",
	)
	if os.Geteuid() == 0 {
		cmd.Args = append(cmd.Args, "--user=root")
	}
	return cmd
}

// start launches the shared server detached (own session, so it outlives the
// test process) and waits for its socket.
func (s *Server) start() error {
	cmd := s.command()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := s.launch(cmd); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	return s.waitReady(exited)
}

// launch starts cmd with its output appended to <dir>/mysqld.log.
func (s *Server) launch(cmd *exec.Cmd) error {
	logf, err := os.OpenFile(s.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close() // the child keeps its own descriptor
	cmd.Stdout, cmd.Stderr = logf, logf
	return cmd.Start()
}

// startChild launches a private server as our child.
func (s *Server) startChild() error {
	cmd := s.command()
	if err := s.launch(cmd); err != nil {
		return err
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	exited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		exited <- err
		close(s.done)
	}()
	if err := s.waitReady(exited); err != nil {
		s.Kill9()
		return err
	}
	return nil
}

func (s *Server) waitReady(exited <-chan error) error {
	deadline := time.Now().Add(90 * time.Second)
	for {
		if Ping(context.Background(), s.DSN(), time.Second) == nil {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("mariadbd exited (%v); log %s:\n%s", err, filepath.Join(s.dir, "mysqld.log"), s.logTail())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("mariadbd did not answer on %s; log:\n%s", s.socket(), s.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "mysqld.log"))
	return tail(b, 3000)
}
