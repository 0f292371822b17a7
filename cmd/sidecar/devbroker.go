package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/internal/kafkabroker"
)

// The dev broker is kfake in a process of its own (the hidden subcommand
// "kafka-broker" of this binary: not "dev-…", so that `pkill -f "sidecar
// dev"` does not match it), so that a kill -9 of `sidecar dev` does not
// kill the broker: kfake's reload after a SIGKILL aborts open transactions
// without an ABORT marker, which hides later commits of the same producer
// and resurrects the aborted records after the next crash (see
// sinks/kafka/DESIGN.md). The broker only ever stops cleanly (SIGTERM).
//
// <data-dir>/kafka holds kfake's data, broker.log (the broker's output) and
// broker.json (its pid and address, written by the broker once it listens),
// through which a restarted `sidecar dev` finds and reuses it.

const (
	brokerStateFile = "broker.json"
	brokerLogFile   = "broker.log"
	// brokerStartWait bounds the wait for a new broker's state file.
	brokerStartWait = 30 * time.Second
	// brokerStopWait bounds the wait for a broker's clean stop; kfake
	// writes its data dir on the way out.
	brokerStopWait = 30 * time.Second
)

// brokerState is the content of broker.json.
type brokerState struct {
	PID  int    `json:"pid"`
	Addr string `json:"addr"`
}

// devBroker is a running dev broker process, started by this sidecar or by
// an earlier one on the same data dir.
type devBroker struct {
	brokerState
	// started: this process started it (and may stop it if start-up fails).
	started bool
	// done is closed when a broker this process started has exited (it is
	// this process's child and must be waited for); nil for a reused one.
	done chan struct{}
}

// runDevBroker is the hidden "sidecar kafka-broker --state FILE <broker
// flags>": the broker body of `sidecar dev`.
func runDevBroker(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("sidecar kafka-broker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := kafkabroker.DefaultConfig()
	cfg.Bind(fs)
	statePath := fs.String("state", "", "write pid and address here once listening (removed on a clean stop)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *statePath == "" {
		return errors.New("kafka-broker needs --state FILE")
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	me := os.Getpid()
	defer func() {
		// Remove the state file only if it still names this process.
		if st, err := readBrokerState(*statePath); err == nil && st.PID == me {
			_ = os.Remove(*statePath)
		}
	}()
	return kafkabroker.Run(ctx, cfg, log, func(addr string) error {
		return writeBrokerState(*statePath, brokerState{PID: me, Addr: addr})
	})
}

// readBrokerState reads broker.json; a missing file is os.ErrNotExist.
func readBrokerState(path string) (brokerState, error) {
	var st brokerState
	b, err := os.ReadFile(path)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}

// writeBrokerState writes broker.json atomically (temp file, fsync,
// rename), so a reader never sees half a file.
func writeBrokerState(path string, st brokerState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := fmt.Sprintf("%s.%d.new", path, os.Getpid())
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// pidAlive reports whether a process with this pid exists and is not a
// zombie (a broker whose sidecar died is reaped by init, which in some
// containers never happens).
func pidAlive(pid int) bool {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// "pid (comm) S ...": the state follows the last ')'.
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'Z' {
			return false
		}
	}
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// isDevBroker reports whether process pid runs "kafka-broker", so that a
// stale broker.json whose pid now belongs to another process never gets
// that process stopped. Without /proc (not Linux) it cannot tell and
// trusts the pid.
func isDevBroker(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		_, statErr := os.Stat("/proc/self/cmdline")
		return statErr != nil // no /proc at all: trust the pid
	}
	return slices.Contains(strings.Split(string(b), "\x00"), "kafka-broker")
}

// kafkaAnswers reports whether addr answers a Kafka request within 3 s.
func kafkaAnswers(ctx context.Context, addr string) bool {
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		return false
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return cl.Ping(ctx) == nil
}

// findDevBroker returns the broker named by kdir's broker.json if its pid
// is alive and its address answers Kafka; ok is false otherwise (no file,
// or a stale one).
func findDevBroker(ctx context.Context, kdir string) (b *devBroker, ok bool, err error) {
	st, err := readBrokerState(filepath.Join(kdir, brokerStateFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, false, nil
	case err != nil:
		return nil, false, err
	}
	if !pidAlive(st.PID) || !isDevBroker(st.PID) || !kafkaAnswers(ctx, st.Addr) {
		return nil, false, nil
	}
	return &devBroker{brokerState: st}, true, nil
}

// ensureDevBroker reuses the data dir's running broker or starts a new one
// on addr (127.0.0.1:<port>) with the dev topics.
func ensureDevBroker(ctx context.Context, log *slog.Logger, kdir, addr string) (*devBroker, error) {
	b, ok, err := findDevBroker(ctx, kdir)
	if err != nil {
		return nil, err
	}
	if ok {
		if b.Addr != addr {
			return nil, fmt.Errorf("the Kafka broker of this data dir runs as pid %d on %s, but --kafka-addr is %s: "+
				"pass --kafka-addr %s, or stop it first with: %s",
				b.PID, b.Addr, addr, b.Addr, stopBrokerCommand(os.Args[0], filepath.Dir(kdir)))
		}
		log.Info("reusing the running Kafka broker", "pid", b.PID, "addr", b.Addr)
		return b, nil
	}
	statePath := filepath.Join(kdir, brokerStateFile)
	if err := os.Remove(statePath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale %s: %w", statePath, err)
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start the Kafka broker: %w", err)
	}
	logPath := filepath.Join(kdir, brokerLogFile)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	// Partitions 0 keeps what dev always had: events with 1 partition,
	// kfake's default for new topics. TxnMaxTimeout 0: kfake's 15 min.
	bcfg := kafkabroker.Config{Addr: addr, DataDir: kdir, Topics: []string{"events"}}
	cmd := exec.Command(exe, append([]string{"kafka-broker", "--state", statePath}, bcfg.Args()...)...)
	// A file, not a pipe: the broker outlives this process, and a write
	// to a pipe nobody reads any more would kill it.
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a terminal's Ctrl-C reaches only the sidecar,
	// which stops the broker after its own clean stop.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the Kafka broker: %w", err)
	}
	b = &devBroker{brokerState: brokerState{PID: cmd.Process.Pid}, started: true, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(b.done)
	}()
	deadline := time.Now().Add(brokerStartWait)
	for {
		if st, err := readBrokerState(statePath); err == nil && st.PID == b.PID {
			b.Addr = st.Addr
			log.Info("started the Kafka broker", "pid", b.PID, "addr", b.Addr, "log", logPath)
			return b, nil
		}
		select {
		case <-b.done:
			return nil, fmt.Errorf("the Kafka broker exited during start (%v); %s:\n%s", cmd.ProcessState, logPath, tailFile(logPath, 10))
		case <-ctx.Done():
			_ = b.stop(context.Background())
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = b.stop(context.Background())
			return nil, fmt.Errorf("the Kafka broker did not listen within %v; see %s", brokerStartWait, logPath)
		}
	}
}

// stop asks the broker to stop cleanly (SIGTERM) and waits until it has
// exited. It never sends SIGKILL: that is what loses transactions.
func (b *devBroker) stop(ctx context.Context) error {
	if err := syscall.Kill(b.PID, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return fmt.Errorf("stop the Kafka broker (pid %d): %w", b.PID, err)
	}
	deadline := time.Now().Add(brokerStopWait)
	for {
		if b.done != nil {
			select {
			case <-b.done:
				return nil
			default:
			}
		} else if !pidAlive(b.PID) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the Kafka broker (pid %d) did not stop within %v after SIGTERM", b.PID, brokerStopWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// tailFile returns the last n lines of a file (for error messages).
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}
