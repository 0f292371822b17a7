package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one supervised child process (the sidecar, an app, the broker,
// the generator): started with its output appended to a log file, killed
// with SIGKILL, restarted with the same arguments.
type proc struct {
	name    string
	argv    []string
	logPath string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when cmd has exited
	exitErr error         // cmd.Wait's result once done is closed
	starts  int
	killed  bool // stopped by us and not started since: not to be revived
}

func newProc(name, logPath string, argv ...string) *proc {
	return &proc{name: name, argv: argv, logPath: logPath}
}

// start launches the process (it must not be running).
func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !isClosed(p.done) {
		return fmt.Errorf("%s: already running", p.name)
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	fmt.Fprintf(logf, "\n=== chaos: start %d of %s at %s: %s\n", p.starts+1, p.name, time.Now().Format(time.RFC3339Nano), strings.Join(p.argv, " "))
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C of the driver reaches the driver only,
	// which then stops the children in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	p.starts++
	p.killed = false
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.exitErr = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

// running reports whether the process is alive.
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && !isClosed(p.done)
}

// exited reports whether the process was started and has exited, and how,
// unless we stopped it ourselves.
func (p *proc) exited() (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.killed || !isClosed(p.done) {
		return false, nil
	}
	return true, p.exitErr
}

// pid is the running process's id (0 if not running).
func (p *proc) pid() int {
	if !p.running() {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// kill9 kills the process with SIGKILL and waits until it is gone. It reports
// whether the process was running.
func (p *proc) kill9() bool {
	return p.signalAndWait(syscall.SIGKILL, 10*time.Second)
}

// stop asks the process to stop (SIGTERM) and kills it after timeout.
func (p *proc) stop(timeout time.Duration) {
	if !p.signalAndWait(syscall.SIGTERM, timeout) {
		return
	}
	if p.running() {
		p.kill9()
	}
}

func (p *proc) signalAndWait(sig syscall.Signal, timeout time.Duration) bool {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	running := cmd != nil && !isClosed(done)
	if running {
		p.killed = true
	}
	p.mu.Unlock()
	if !running {
		return false
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(timeout):
	}
	return true
}

func isClosed(ch chan struct{}) bool {
	if ch == nil {
		return true
	}
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// readFile returns a file's content ("" if unreadable).
func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// tailFile returns the last n lines of a log file.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
