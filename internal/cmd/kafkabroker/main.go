// Command kafkabroker runs kfake, franz-go's in-memory Kafka-protocol
// broker, as a process of its own, for tests and benchmarks in which the
// broker must outlive the sidecar (crash tests, make bench).
//
// It prints exactly one line, "listening <host:port>", to stdout once it
// accepts connections, logs to stderr, and stops cleanly on SIGTERM or
// SIGINT. A clean stop keeps open transactions in the data dir (like Kafka);
// a SIGKILL makes kfake abort them at the next start (Kafka would keep them
// until their timeout), see internal/kafkabroker.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/txsink/txsink/internal/kafkabroker"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "kafkabroker:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("kafkabroker", flag.ContinueOnError)
	cfg := kafkabroker.DefaultConfig()
	cfg.Bind(fs)
	verbose := fs.Bool("v", false, "log kfake's info messages")
	if err := fs.Parse(args); err != nil {
		return err
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return kafkabroker.Run(ctx, cfg, log, kafkabroker.PrintReady(os.Stdout))
}
