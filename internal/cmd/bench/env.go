package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/api/client"
)

// env is what the cases run against: one broker process, one sidecar
// process and (maybe) one MariaDB database.
type env struct {
	dir string

	brokerAddr string
	broker     *exec.Cmd
	adm        *kadm.Client
	admCl      *kgo.Client

	sidecar     *exec.Cmd
	sidecarLog  string
	sidecarDone chan struct{}
	httpAddr    string
	tcp         *client.Client
	unix        *client.Client

	mysqlEnv

	closers []func()
}

func (e *env) close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
	e.closers = nil
}

func setup(ctx context.Context, o options) (*env, error) {
	e := &env{}
	dir, err := os.MkdirTemp("", "txsink-bench-")
	if err != nil {
		return e, err
	}
	e.dir = dir
	e.closers = append(e.closers, func() { os.RemoveAll(dir) })

	root, err := moduleRoot()
	if err != nil {
		return e, err
	}
	logf("building cmd/sidecar and internal/cmd/kafkabroker into %s", dir)
	for _, pkg := range []string{"./cmd/sidecar", "./internal/cmd/kafkabroker"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, "bin", filepath.Base(pkg)), pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return e, fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	}

	if err := e.startBroker(ctx); err != nil {
		return e, err
	}
	if o.needs("mysql") {
		e.setupMySQL(ctx)
	} else {
		e.mysqlWhy = "not selected"
	}
	if err := e.startSidecar(ctx, o.sidecarDir); err != nil {
		return e, err
	}
	return e, nil
}

// needs reports whether any selected case is of kind.
func (o options) needs(kind string) bool {
	for _, c := range plan(o) {
		if (c.kind == kind || kind == "mysql" && c.needsMySQL()) && o.cases.MatchString(c.name) {
			return true
		}
	}
	return false
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("run bench inside the txsink module (go run ./internal/cmd/bench)")
	}
	return filepath.Dir(mod), nil
}

// startBroker runs kafkabroker with a data dir of its own and waits for its
// "listening <addr>" line.
func (e *env) startBroker(ctx context.Context) error {
	logPath := filepath.Join(e.dir, "kafkabroker.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(e.dir, "bin", "kafkabroker"), "--addr", "127.0.0.1:0",
		"--data-dir", filepath.Join(e.dir, "kafka"))
	cmd.Stderr = logFile
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	logFile.Close()
	e.broker = cmd
	e.closers = append(e.closers, func() { stopProcess(cmd, nil, "kafkabroker") })
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	select {
	case l := <-lines:
		addr, ok := strings.CutPrefix(l, "listening ")
		if !ok {
			return fmt.Errorf("kafkabroker said %q", l)
		}
		e.brokerAddr = addr
	case <-time.After(30 * time.Second):
		return fmt.Errorf("kafkabroker did not start in 30s; log:\n%s", tailFile(logPath))
	case <-ctx.Done():
		return ctx.Err()
	}
	logf("kafkabroker (pid %d) listening on %s", cmd.Process.Pid, e.brokerAddr)
	e.admCl, err = kgo.NewClient(kgo.SeedBrokers(e.brokerAddr))
	if err != nil {
		return err
	}
	e.adm = kadm.NewClient(e.admCl)
	e.closers = append(e.closers, e.admCl.Close)
	return nil
}

// createTopic creates a 1-partition topic.
func (e *env) createTopic(ctx context.Context, topic string) error {
	resp, err := e.adm.CreateTopic(ctx, 1, 1, nil, topic)
	if err != nil {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	if resp.Err != nil {
		return fmt.Errorf("create topic %s: %w", topic, resp.Err)
	}
	return nil
}

// startSidecar writes a config and runs `sidecar run --config`, then waits
// for /readyz.
func (e *env) startSidecar(ctx context.Context, parent string) error {
	dataDir := filepath.Join(e.dir, "sidecar")
	if parent != "" {
		d, err := os.MkdirTemp(parent, "txsink-bench-sidecar-")
		if err != nil {
			return fmt.Errorf("-sidecar-dir: %w", err)
		}
		e.closers = append(e.closers, func() { os.RemoveAll(d) })
		dataDir = d
	}
	httpAddr, err := freeAddr()
	if err != nil {
		return err
	}
	raftAddr, err := freeAddr()
	if err != nil {
		return err
	}
	sock := filepath.Join(e.dir, "sidecar.sock")
	cfg := fmt.Sprintf(`data_dir: %s
http_addr: %s
raft_addr: %s
socket: %s
log: {level: warn}
sinks:
  events:
    kind: kafka
    brokers: [%q]
    default_topic: bench
    topics: ["*"]
`, dataDir, httpAddr, raftAddr, sock, e.brokerAddr)
	if e.mysqlDSN != "" {
		cfg += fmt.Sprintf(`  db:
    kind: mysql
    dsn: %q
    statements:
      ins: "INSERT INTO bench(k, v) VALUES (?, ?)"
`, e.mysqlDSN)
	}
	cfgPath := filepath.Join(e.dir, "txsink.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	e.sidecarLog = filepath.Join(e.dir, "sidecar.log")
	logFile, err := os.Create(e.sidecarLog)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(e.dir, "bin", "sidecar"), "run", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return err
	}
	logFile.Close()
	e.sidecar = cmd
	e.sidecarDone = make(chan struct{})
	go func() { cmd.Wait(); close(e.sidecarDone) }()
	e.closers = append(e.closers, func() { stopProcess(cmd, e.sidecarDone, "sidecar") })

	e.httpAddr = httpAddr
	e.tcp = client.New("http://" + httpAddr)
	e.unix = client.NewUnix(sock)
	deadline := time.Now().Add(60 * time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		err := e.tcp.Ready(rctx)
		cancel()
		if err == nil {
			break
		}
		select {
		case <-e.sidecarDone:
			return fmt.Errorf("sidecar exited during start (%v); log:\n%s", cmd.ProcessState, tailFile(e.sidecarLog))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sidecar not ready after 60s: %v; log:\n%s", err, tailFile(e.sidecarLog))
		}
	}
	logf("sidecar (pid %d) ready on http://%s and %s", cmd.Process.Pid, httpAddr, sock)
	return nil
}

// sidecarAlive returns an error with the log tail if the sidecar exited.
func (e *env) sidecarAlive() error {
	select {
	case <-e.sidecarDone:
		return fmt.Errorf("sidecar exited (%v); log:\n%s", e.sidecar.ProcessState, tailFile(e.sidecarLog))
	default:
		return nil
	}
}

func (e *env) sidecarPeakRSS() int64 {
	if e.sidecar == nil || e.sidecar.Process == nil {
		return 0
	}
	return vmHWM(e.sidecar.Process.Pid)
}

func (e *env) brokerPeakRSS() int64 {
	if e.broker == nil || e.broker.Process == nil {
		return 0
	}
	return vmHWM(e.broker.Process.Pid)
}

// cpuSeconds is the CPU time (user+system) of the bench itself, the
// sidecar, the broker and the database server (when it runs on this
// machine and says its pid) so far.
type cpuSeconds struct{ self, sidecar, broker, db float64 }

func (e *env) cpu() cpuSeconds {
	var c cpuSeconds
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		c.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	}
	if e.sidecar != nil && e.sidecar.Process != nil {
		c.sidecar = procCPU(e.sidecar.Process.Pid)
	}
	if e.broker != nil && e.broker.Process != nil {
		c.broker = procCPU(e.broker.Process.Pid)
	}
	if e.mysqldPid > 0 {
		c.db = procCPU(e.mysqldPid)
	}
	return c
}

// procCPU reads utime+stime of pid from /proc/<pid>/stat (USER_HZ = 100).
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s) // f[0] is field 3 (state); utime, stime are fields 14, 15
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / 100
}

// vmHWM reads the peak resident set size in KiB from /proc/<pid>/status.
func vmHWM(pid int) int64 { return procStatusKB(pid, "VmHWM:") }

// stopProcess sends SIGTERM, waits up to 15s, then SIGKILL. done (may be
// nil) is closed by whoever waits for cmd.
func stopProcess(cmd *exec.Cmd, done chan struct{}, name string) {
	if cmd.Process == nil {
		return
	}
	if done == nil {
		done = make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		logf("%s did not stop in 15s; killing it", name)
		_ = cmd.Process.Kill()
		<-done
	}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func tailFile(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}
