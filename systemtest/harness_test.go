// Package systemtest runs the built sidecar binary as a process against a
// Kafka-protocol broker process (kfake) and a real MariaDB, and kills it
// with SIGKILL at every step of the protocol. Everything runs on loopback.
package systemtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/testenv"
)

var sidecarBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "txsink-systemtest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sidecarBin = filepath.Join(dir, "sidecar")
	_, self, _, _ := runtime.Caller(0)
	build := exec.Command("go", "build", "-o", sidecarBin, "./cmd/sidecar")
	build.Dir = filepath.Join(filepath.Dir(self), "..")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build sidecar: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// handedOut remembers every port freeAddr returned in this test process:
// the kernel may hand a just-released port out again (a run once got the
// same port for a sidecar's Raft and HTTP addresses), so freeAddr never
// returns one twice.
var handedOut struct {
	sync.Mutex
	ports map[string]bool
}

// freeAddr reserves a loopback port that no earlier call returned. The port
// is released before use; another process could take it in between, which
// is rare enough for a test.
func freeAddr(t *testing.T) string {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = map[string]bool{}
	}
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if !handedOut.ports[addr] {
			handedOut.ports[addr] = true
			return addr
		}
	}
	t.Fatal("freeAddr: 100 tries returned ports handed out before")
	return ""
}

// node is one sidecar installation: a config, a data dir and fixed ports,
// so that it can be killed and started again as the same node.
type node struct {
	t        *testing.T
	dir      string
	cfgPath  string
	httpAddr string
	raftAddr string
	cmd      *exec.Cmd
	done     chan struct{}
	logs     *testenv.Buffer
}

// newNode writes a config with the given sinks YAML (indented under sinks:).
func newNode(t *testing.T, sinksYAML string) *node {
	t.Helper()
	n := &node{t: t, dir: t.TempDir(), httpAddr: freeAddr(t), raftAddr: freeAddr(t)}
	n.cfgPath = filepath.Join(n.dir, "txsink.yaml")
	cfg := fmt.Sprintf("data_dir: %s\nhttp_addr: %s\nraft_addr: %s\nlog: {level: debug}\nsinks:\n%s",
		filepath.Join(n.dir, "data"), n.httpAddr, n.raftAddr, sinksYAML)
	if err := os.WriteFile(n.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.kill()
		if t.Failed() {
			t.Logf("sidecar logs (tail):\n%s", tail(n.logs, 60))
		}
	})
	return n
}

func tail(b *testenv.Buffer, lines int) string {
	if b == nil {
		return ""
	}
	ls := strings.Split(b.String(), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// start runs the sidecar with extra environment (e.g. TXSINK_FAILPOINT) and
// waits until it is ready.
func (n *node) start(env ...string) *client.Client {
	n.t.Helper()
	n.logs = &testenv.Buffer{}
	n.cmd = exec.Command(sidecarBin, "run", "--config", n.cfgPath)
	n.cmd.Env = append(os.Environ(), env...)
	n.cmd.Stdout, n.cmd.Stderr = n.logs, n.logs
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.done = make(chan struct{})
	go func() { n.cmd.Wait(); close(n.done) }()
	c := client.New("http://" + n.httpAddr)
	waitReady(n.t, c, n.cmd, n.done, n.logs)
	return c
}

// waitReady polls the sidecar's readiness until it answers, the process
// exits (done is closed) or 30 s pass; the last two fail the test with the
// tail of its logs.
func waitReady(t *testing.T, c *client.Client, cmd *exec.Cmd, done <-chan struct{}, logs *testenv.Buffer) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ready(ctx)
		cancel()
		if err == nil {
			return
		}
		select {
		case <-done:
			t.Fatalf("sidecar exited during start: %v\n%s", cmd.ProcessState, tail(logs, 40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar not ready after 30s: %v\n%s", err, tail(logs, 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (n *node) kill() {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	n.waitExit()
}

// waitExit waits (bounded) for the process to exit, e.g. after a failpoint.
func (n *node) waitExit() {
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		n.t.Fatal("sidecar did not exit within 30s")
	}
	n.cmd = nil
}

// killedBySignal reports whether the last process died of SIGKILL.
func (n *node) exitedBySIGKILL(cmd *exec.Cmd) bool {
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}
