// Command kafkabroker runs kfake, franz-go's in-memory Kafka-protocol
// broker, as a process of its own, for tests and benchmarks in which the
// broker must outlive the sidecar (crash tests, make bench).
//
// It prints exactly one line, "listening <host:port>", to stdout once it
// accepts connections, logs to stderr, and stops cleanly on SIGTERM or
// SIGINT. A clean stop keeps open transactions in the data dir (like Kafka);
// a SIGKILL makes kfake abort them at the next start (Kafka would keep them
// until their timeout).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/twmb/franz-go/pkg/kfake"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "kafkabroker:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("kafkabroker", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:9092", "listen address host:port (port 0: any free port)")
	dataDir := fs.String("data-dir", "", "persist the log here (fsync every write); empty: memory only")
	partitions := fs.Int("partitions", 1, "partitions of seeded and auto-created topics")
	topics := fs.String("topics", "", "comma-separated topics to create at start")
	txnMaxTimeout := fs.Duration("transaction-max-timeout", 0, "transaction.max.timeout.ms (0: kfake's default, 15m)")
	verbose := fs.Bool("v", false, "log kfake's info messages")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *partitions < 1 {
		return fmt.Errorf("--partitions %d must be >= 1", *partitions)
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	// kfake binds 127.0.0.1:<port>; ListenFn lets --addr choose the host.
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.ListenFn(func(string, string) (net.Listener, error) { return ln, nil }),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(*partitions),
		kfake.WithLogger(slogLogger{log}),
	}
	if *topics != "" {
		var ts []string
		for _, t := range strings.Split(*topics, ",") {
			if t = strings.TrimSpace(t); t != "" {
				ts = append(ts, t)
			}
		}
		opts = append(opts, kfake.SeedTopics(int32(*partitions), ts...))
	}
	if *dataDir != "" {
		opts = append(opts, kfake.DataDir(*dataDir), kfake.SyncWrites())
	}
	if *txnMaxTimeout > 0 {
		opts = append(opts, kfake.BrokerConfigs(map[string]string{
			"transaction.max.timeout.ms": fmt.Sprint(txnMaxTimeout.Milliseconds()),
		}))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		ln.Close()
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	fmt.Printf("listening %s\n", c.ListenAddrs()[0])
	log.Info("kafka broker ready", "addr", c.ListenAddrs()[0], "data_dir", *dataDir)
	<-ctx.Done()
	log.Info("stopping")
	c.Close() // persists the data dir, open transactions included
	return nil
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
