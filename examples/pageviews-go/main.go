// Command pageviews is txsink's page-view example in Go: the classic
// "count views per app" stream processor, made exactly-once by the sidecar.
//
// What it shows: an app that reads click events from the Kafka topic
// "clicks", counts views per app, and at every checkpoint writes that
// checkpoint's per-app increments through the sidecar to the Kafka topic
// "pageviews" and into MySQL with
//
//	INSERT INTO pv(app, views) VALUES (?, ?) ON DUPLICATE KEY UPDATE views = views + VALUES(views)
//
// That statement is not idempotent on purpose: a duplicated commit would show
// in the totals. The app passes its consumer offsets as the checkpoint state
// and, after any restart, seeks to the offsets the sidecar gives back. So the
// totals in MySQL equal the true counts however often the app, the sidecar
// or the database is killed. With --offsets group it passes no state: each
// checkpoint carries the offsets for a consumer group, which the sidecar
// commits in the checkpoint's Kafka transaction, and the app resumes from
// the group's committed offsets (group.go).
//
//	pageviews            generate up to --events clicks, count them all, print the expected totals
//	pageviews generate   append numbered click events to "clicks"
//	pageviews count      the counting app alone (resumes from its checkpoint state, or --offsets group: its group's offsets)
//
// It talks to the sidecar only through its public HTTP API (api/client).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const usage = `usage: pageviews [command] [flags]

commands:
  (none)     demo: generate up to --events clicks, count them all, print the expected totals
  generate   append numbered click events to the input topic
  count      the counting app: resume from the sidecar's state (or the group's offsets), count, checkpoint

Run "pageviews <command> -h" for the flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "pageviews:", err)
		}
		var ex exitCode
		if errors.As(err, &ex) {
			os.Exit(int(ex))
		}
		os.Exit(1)
	}
}

// exitCode makes main exit with that status (e.g. 3 for reported data loss).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd := "demo"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "demo":
		return runDemo(ctx, args, stdout, stderr)
	case "generate":
		g := defaultGenConfig()
		fs := newFlagSet("generate", stderr)
		g.bind(fs)
		if err := fs.Parse(args); err != nil {
			return err
		}
		return generate(ctx, g, stdout)
	case "count":
		c := defaultCountConfig()
		fs := newFlagSet("count", stderr)
		c.bind(fs)
		if err := fs.Parse(args); err != nil {
			return err
		}
		return count(ctx, c, stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
}

func newFlagSet(name string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("pageviews "+name, flag.ContinueOnError)
	fs.SetOutput(out)
	return fs
}

// runDemo is what the README runs: fill "clicks" up to --events, count until
// caught up, then print the totals MySQL must hold.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	g, c := defaultGenConfig(), defaultCountConfig()
	fs := newFlagSet("", stderr)
	g.bind(fs)
	c.bind(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := generate(ctx, g, stdout); err != nil {
		return err
	}
	c.brokers, c.input = g.brokers, g.input // bound once, by g
	if c.exitIdle == 0 {
		c.exitIdle = time.Second
	}
	if err := count(ctx, c, stdout); err != nil {
		return err
	}
	truth, total, err := trueCounts(ctx, c.brokers, c.input)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nexpected totals from all %d events in %q (MySQL must show exactly these):\n", total, c.input)
	for _, app := range sortedKeys(truth) {
		fmt.Fprintf(stdout, "  %-6s %d\n", app, truth[app])
	}
	fmt.Fprintf(stdout, `check:
  mariadb txsink_dev -e "SELECT app, views FROM pv WHERE app LIKE 'app%%' ORDER BY app"
  kcat -C -b %s -t %s -X isolation.level=read_committed -e -f '%%k %%s\n'
`, c.brokers, c.output)
	if c.offsets == offsetsGroup {
		fmt.Fprintf(stdout, "  go run ./internal/cmd/groupoffsets --brokers %s --group %s   # the group's committed offsets\n", c.brokers, c.groupID())
	}
	return nil
}
