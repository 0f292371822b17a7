// Package kafkatest has test helpers for Kafka: an in-process kfake cluster,
// a kfake broker in a separate process (internal/cmd/kafkabroker) for tests
// in which the broker must outlive the code under test, and a read_committed
// reader that also catches duplicates.
package kafkatest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// NewCluster starts an in-process kfake cluster of one broker with topic
// auto-creation (1 partition per new topic unless opts say otherwise) and
// closes it at t.Cleanup. opts are applied after those defaults.
func NewCluster(t testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	all := append([]kfake.Opt{
		kfake.NumBrokers(1),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(1),
	}, opts...)
	c, err := kfake.NewCluster(all...)
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// Addr returns the first listen address of c.
func Addr(c *kfake.Cluster) string { return c.ListenAddrs()[0] }

var build struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// BrokerBinary builds internal/cmd/kafkabroker once per test binary and
// returns the path of the executable.
func BrokerBinary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			build.err = err
			return
		}
		build.dir, err = os.MkdirTemp("", "kafkabroker-")
		if err != nil {
			build.err = err
			return
		}
		build.bin = filepath.Join(build.dir, "kafkabroker")
		cmd := exec.Command("go", "build", "-o", build.bin, "./internal/cmd/kafkabroker")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./internal/cmd/kafkabroker: %v\n%s", err, out)
		}
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.bin
}

// moduleRoot is the folder of go.mod, found from this source file.
func moduleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("kafkatest: cannot locate source")
	}
	dir := filepath.Dir(file)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("kafkatest: go.mod not found")
		}
		dir = parent
	}
}

// Broker is a kafkabroker process.
type Broker struct {
	Addr string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // Wait's result, set before done closes
}

// BrokerOptions are extra flags of StartBrokerWith.
type BrokerOptions struct {
	// Addr to listen on; empty: 127.0.0.1:0. Restarting a broker on the
	// address of a stopped one keeps clients' seeds valid.
	Addr string
	// Partitions of seeded and auto-created topics (0: 1).
	Partitions int
	// Topics to create at start.
	Topics []string
	// TransactionMaxTimeout sets transaction.max.timeout.ms (0: default).
	TransactionMaxTimeout time.Duration
}

// StartBroker starts a kafkabroker process persisting into dir (empty:
// memory only) on a free port, waits until it listens, and stops it
// gracefully at t.Cleanup. stop may be called earlier; it is idempotent.
func StartBroker(t testing.TB, dir string) (addr string, stop func()) {
	t.Helper()
	b := StartBrokerWith(t, dir, BrokerOptions{})
	return b.Addr, b.Stop
}

// StartBrokerWith is StartBroker with options; it returns the Broker so a
// test can also Kill it.
func StartBrokerWith(t testing.TB, dir string, o BrokerOptions) *Broker {
	t.Helper()
	bin := BrokerBinary(t)
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	args := []string{"--addr", o.Addr}
	if dir != "" {
		args = append(args, "--data-dir", dir)
	}
	if o.Partitions > 0 {
		args = append(args, "--partitions", fmt.Sprint(o.Partitions))
	}
	if len(o.Topics) > 0 {
		args = append(args, "--topics", strings.Join(o.Topics, ","))
	}
	if o.TransactionMaxTimeout > 0 {
		args = append(args, "--transaction-max-timeout", o.TransactionMaxTimeout.String())
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = &prefixWriter{t: t}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start kafkabroker: %v", err)
	}
	b := &Broker{cmd: cmd, done: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() {
		b.err = cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(b.Stop)

	select {
	case line, ok := <-lines:
		addr, found := strings.CutPrefix(line, "listening ")
		if !ok || !found {
			b.Kill()
			t.Fatalf("kafkabroker %v: got first line %q, want \"listening <addr>\"", args, line)
		}
		b.Addr = addr
	case <-time.After(30 * time.Second):
		b.Kill()
		t.Fatalf("kafkabroker %v: not listening after 30s", args)
	}
	return b
}

// Stop sends SIGTERM (a clean stop: open transactions survive in the data
// dir) and waits for the process; after 10s it kills it.
func (b *Broker) Stop() {
	select {
	case <-b.done:
		return
	default:
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		b.Kill()
	}
}

// Kill sends SIGKILL and waits for the process to exit.
func (b *Broker) Kill() {
	select {
	case <-b.done:
		return
	default:
	}
	_ = b.cmd.Process.Kill()
	<-b.done
}

// Signal sends sig to the broker process; tests stop it with SIGSTOP (a
// broker that hangs with its connections open) and resume it with SIGCONT.
func (b *Broker) Signal(sig os.Signal) error { return b.cmd.Process.Signal(sig) }

// Pid is the broker's process id.
func (b *Broker) Pid() int { return b.cmd.Process.Pid }

// Done is closed when the process has exited.
func (b *Broker) Done() <-chan struct{} { return b.done }

// prefixWriter sends the broker's stderr to the test log.
type prefixWriter struct {
	t  testing.TB
	mu sync.Mutex
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.t.Logf("kafkabroker: %s", line)
	}
	return len(p), nil
}

// ReadOptions tune ReadCommitted.
type ReadOptions struct {
	// Timeout bounds the wait for want records (0: 10s).
	Timeout time.Duration
	// Linger is how long to keep reading after want records arrived, to
	// catch extras such as duplicates (0: 200ms).
	Linger time.Duration
}

// ReadCommitted reads topic from the start with isolation read_committed
// until it has want records or the timeout passes, then keeps reading for
// a short linger so that extra (duplicate) records are caught too. It
// returns everything read; the caller compares it with what it expects.
func ReadCommitted(ctx context.Context, t testing.TB, addr, topic string, want int) []*kgo.Record {
	t.Helper()
	return ReadCommittedWith(ctx, t, addr, topic, want, ReadOptions{})
}

// ReadCommittedWith is ReadCommitted with options.
func ReadCommittedWith(ctx context.Context, t testing.TB, addr, topic string, want int, o ReadOptions) []*kgo.Record {
	t.Helper()
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Linger == 0 {
		o.Linger = 200 * time.Millisecond
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(addr),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(50*time.Millisecond),
	)
	if err != nil {
		t.Fatalf("kafkatest: consumer: %v", err)
	}
	defer cl.Close()

	var got []*kgo.Record
	deadline := time.Now().Add(o.Timeout)
	var lingerUntil time.Time
	for {
		now := time.Now()
		if len(got) >= want && lingerUntil.IsZero() {
			lingerUntil = now.Add(o.Linger)
		}
		end := deadline
		if !lingerUntil.IsZero() {
			end = lingerUntil
		}
		if !now.Before(end) {
			return got
		}
		pctx, cancel := context.WithDeadline(ctx, end)
		fs := cl.PollFetches(pctx)
		cancel()
		if ctx.Err() != nil {
			return got
		}
		fs.EachError(func(tp string, p int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				t.Logf("kafkatest: fetch %s[%d]: %v", tp, p, err)
			}
		})
		got = append(got, fs.Records()...)
	}
}
