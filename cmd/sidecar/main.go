// Command sidecar is txsink: exactly-once output into Kafka and MySQL for
// applications in any language, over HTTP.
//
//	sidecar run --config txsink.yaml   # real use
//	sidecar dev                        # self-contained single node with its own Kafka broker
//	sidecar dev --stop-broker          # stop the dev broker left running by a killed sidecar
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

const usage = `usage: sidecar <command> [flags]

commands:
  run --config FILE   run with a YAML config (see examples/txsink.yaml)
  dev                 self-contained dev node: a Kafka broker of its own, sample sinks
  version, --version  print the version

operator commands (over the HTTP API, see -h of each):
  status              node, role, leader, members, readiness, jobs, in-doubt count
  jobs                every job and writer
  checkpoints JOB     a job's checkpoints, unresolved first, with their age
  commit JOB N        commit checkpoints <= N of an external-mode job
  abort JOB N         abort checkpoint N of an external-mode job

Run "sidecar <command> -h" for the flags of a command.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "sidecar:", err)
		os.Exit(exitCode(err))
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command")
	}
	switch args[0] {
	case "run":
		return runConfig(ctx, args[1:], stdout, stderr)
	case "dev":
		return runDev(ctx, args[1:], stdout, stderr)
	case "kafka-broker": // hidden: the broker process that dev starts
		return runDevBroker(ctx, args[1:], stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "txsink", versionString())
		return nil
	case "status":
		return runStatus(ctx, args[1:], stdout, stderr)
	case "jobs":
		return runJobs(ctx, args[1:], stdout, stderr)
	case "checkpoints":
		return runCheckpoints(ctx, args[1:], stdout, stderr)
	case "commit", "abort":
		return runDecide(ctx, args[0], args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		if strings.HasPrefix(args[0], "-") {
			// "sidecar --addr X jobs" is the likeliest slip: say where flags go.
			return fmt.Errorf("unknown command %q: flags go after the command (sidecar jobs --addr ADDR)", args[0])
		}
		return fmt.Errorf("unknown command %q", args[0])
	}
}

// runConfig is "sidecar run --config FILE".
func runConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sidecar run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", os.Getenv("TXSINK_CONFIG"), "YAML config file [TXSINK_CONFIG]")
	// Parse once to find the file, then bind the common flags over it.
	pre := flag.NewFlagSet("", flag.ContinueOnError)
	pre.SetOutput(io.Discard)
	prePath := pre.String("config", *path, "")
	var scratch Config
	bindRun(pre, &scratch)
	_ = pre.Parse(args)
	if *prePath == "" {
		// No file to bind the flags over: bind them over the defaults, so
		// that "sidecar run -h" lists every flag, not only --config.
		def := DefaultConfig()
		bindRun(fs, &def)
		if err := fs.Parse(args); err != nil {
			return err
		}
		fs.Usage()
		return errors.New("run needs --config FILE (or TXSINK_CONFIG)")
	}
	cfg, err := LoadConfig(*prePath)
	if err != nil {
		return err
	}
	bindRun(fs, &cfg)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := applyEnv(fs); err != nil {
		return err
	}
	if err := cfg.Finish(); err != nil {
		return fmt.Errorf("config %s: %w", *path, err)
	}
	log := newLogger(stderr, cfg.Log.Format, cfg.Log.Level)
	sc, err := startSidecar(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer sc.close()
	scheme := "http"
	if cfg.TLSCertFile != "" {
		scheme = "https"
	}
	fmt.Fprintf(stdout, "txsink listening on %s://%s and %s\n", scheme, sc.httpAddr, cfg.Socket)
	<-ctx.Done()
	log.Info("stopping")
	return nil
}
