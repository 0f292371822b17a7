// Package kafkabroker runs kfake, franz-go's Kafka-protocol broker, as the
// body of a process of its own: internal/cmd/kafkabroker (tests, make bench)
// and the hidden `sidecar kafka-broker` that `sidecar dev` starts.
//
// The broker must live in its own process because kfake's recovery after a
// SIGKILL is unlike Kafka's: it aborts open transactions in memory without
// an ABORT marker, which hides the next transaction of the same producer and
// resurrects the aborted records after a second crash (see
// kafkatest.TestKfakeCrashReloadResurrectsAbortedTxn). A clean stop
// (SIGTERM/SIGINT) persists open transactions; that is the only way the
// broker processes of this repository are meant to stop.
package kafkabroker

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Config is a broker's setup. The zero value is not useful; start from
// DefaultConfig or Bind.
type Config struct {
	// Addr is the listen address host:port (port 0: any free port).
	Addr string
	// DataDir persists the log (fsync on every write); empty: memory only.
	DataDir string
	// Partitions of seeded and auto-created topics; 0: kfake's default (10)
	// for new topics and 1 for the seeded ones, as `sidecar dev` always had.
	Partitions int
	// Topics are created at start.
	Topics []string
	// TxnMaxTimeout sets transaction.max.timeout.ms (0: kfake's default,
	// 15 min).
	TxnMaxTimeout time.Duration
}

// DefaultConfig listens on 127.0.0.1:9092, in memory, one partition.
func DefaultConfig() Config {
	return Config{Addr: "127.0.0.1:9092", Partitions: 1}
}

// Bind registers the broker's flags on fs, filling c (defaults from c).
func (c *Config) Bind(fs *flag.FlagSet) {
	fs.StringVar(&c.Addr, "addr", c.Addr, "listen address host:port (port 0: any free port)")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "persist the log here (fsync every write); empty: memory only")
	fs.IntVar(&c.Partitions, "partitions", c.Partitions, "partitions of seeded and auto-created topics (0: 1 for seeded, kfake's 10 for new ones)")
	fs.Func("topics", "comma-separated topics to create at start", func(s string) error {
		c.Topics = nil
		for _, t := range strings.Split(s, ",") {
			if t = strings.TrimSpace(t); t != "" {
				c.Topics = append(c.Topics, t)
			}
		}
		return nil
	})
	fs.DurationVar(&c.TxnMaxTimeout, "transaction-max-timeout", c.TxnMaxTimeout, "transaction.max.timeout.ms (0: kfake's default, 15m)")
}

// Args returns the command-line flags that Bind parses back into c.
func (c Config) Args() []string {
	args := []string{"--addr", c.Addr, "--partitions", fmt.Sprint(c.Partitions)}
	if c.DataDir != "" {
		args = append(args, "--data-dir", c.DataDir)
	}
	if len(c.Topics) > 0 {
		args = append(args, "--topics", strings.Join(c.Topics, ","))
	}
	if c.TxnMaxTimeout > 0 {
		args = append(args, "--transaction-max-timeout", c.TxnMaxTimeout.String())
	}
	return args
}

// Validate reports a config the broker cannot run.
func (c Config) Validate() error {
	if c.Partitions < 0 {
		return fmt.Errorf("partitions %d must not be negative", c.Partitions)
	}
	if c.TxnMaxTimeout < 0 {
		return fmt.Errorf("transaction max timeout %v must not be negative", c.TxnMaxTimeout)
	}
	return nil
}

// Run starts the broker, calls ready with its listen address once it
// accepts connections, and serves until ctx ends; then it closes the
// broker cleanly, which persists open transactions in the data dir.
func Run(ctx context.Context, c Config, log *slog.Logger, ready func(addr string) error) error {
	if err := c.Validate(); err != nil {
		return err
	}
	// kfake binds 127.0.0.1:<port>; ListenFn lets Addr choose the host.
	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return err
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.ListenFn(func(string, string) (net.Listener, error) { return ln, nil }),
		kfake.AllowAutoTopicCreation(),
		kfake.WithLogger(slogLogger{log}),
	}
	seedParts := int32(1)
	if c.Partitions > 0 {
		opts = append(opts, kfake.DefaultNumPartitions(c.Partitions))
		seedParts = int32(c.Partitions)
	}
	if len(c.Topics) > 0 {
		opts = append(opts, kfake.SeedTopics(seedParts, c.Topics...))
	}
	if c.DataDir != "" {
		opts = append(opts, kfake.DataDir(c.DataDir), kfake.SyncWrites())
	}
	if c.TxnMaxTimeout > 0 {
		opts = append(opts, kfake.BrokerConfigs(map[string]string{
			"transaction.max.timeout.ms": fmt.Sprint(c.TxnMaxTimeout.Milliseconds()),
		}))
	}
	cl, err := kfake.NewCluster(opts...)
	if err != nil {
		ln.Close()
		return err
	}
	defer cl.Close() // persists the data dir, open transactions included
	addr := cl.ListenAddrs()[0]
	if err := ready(addr); err != nil {
		return err
	}
	log.Info("kafka broker ready", "addr", addr, "data_dir", c.DataDir)
	<-ctx.Done()
	log.Info("stopping")
	return nil
}

// PrintReady is a ready func for Run that prints "listening <addr>" to w:
// the one stdout line internal/cmd/kafkabroker promises.
func PrintReady(w io.Writer) func(string) error {
	return func(addr string) error {
		_, err := fmt.Fprintf(w, "listening %s\n", addr)
		return err
	}
}

// slogLogger bridges kfake's logs into slog.
type slogLogger struct{ l *slog.Logger }

func (s slogLogger) Logf(level kfake.LogLevel, format string, args ...any) {
	var l slog.Level
	switch level {
	case kfake.LogLevelError:
		l = slog.LevelError
	case kfake.LogLevelWarn:
		l = slog.LevelWarn
	case kfake.LogLevelInfo:
		l = slog.LevelInfo
	default:
		l = slog.LevelDebug
	}
	if !s.l.Enabled(context.Background(), l) {
		return
	}
	s.l.Log(context.Background(), l, fmt.Sprintf(format, args...))
}
