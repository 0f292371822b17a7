// Command bench measures, in one run, the sidecar path against the direct
// client on the same broker and the same database, and prints one Markdown
// table of throughputs and ratios (sidecar ÷ direct) on stdout. Progress goes
// to stderr. It is a program, never a timed test: `make bench`.
//
// Setup: the Kafka-protocol broker (internal/cmd/kafkabroker, kfake with a
// data dir) and the sidecar (cmd/sidecar) are built into a temp dir and run
// as processes of their own, so the sidecar and the direct client compete
// equally with the broker. MariaDB: TXSINK_BENCH_MYSQL_DSN if set, else the
// shared private server of internal/mysqltest if its socket answers, else a
// private mariadbd started here (binary log on, sync_binlog=1); without any,
// the MySQL rows say "skipped" and the Kafka rows still run.
//
// Rows (select them with -cases, a regexp over the names; -h lists them):
//
//   - kafka-{direct,tcp,unix-<g>,bin-eo}-<interval>[-wN], mysql-{direct,sidecar-<g>,async}[-wN]:
//     throughput, records/s, batches of 1,000 records. kafka-bin-eo is
//     kafka-unix-eo with the binary records body (application/vnd.txsink.records)
//     instead of NDJSON, built by the app without JSON; exactly_once only.
//   - ckpt-{kafka,both}-{direct,sidecar-<g>}-wN (N from -ckpt-writers, default
//     1,4,16): small checkpoints (10 records a sink) in auto mode, each
//     writer looping {write, checkpoint}; checkpoints/s, p50 and p99 of a
//     loop, and for the sidecar its journal fsyncs and entries per
//     checkpoint and the mean time of each phase, read from its /metrics
//     (ckpt.go says what the direct baselines include).
//   - e2e-kafka-{direct,sidecar-<g>}-<-e2e-interval>: the time from the call
//     that writes a record to a read_committed consumer seeing it (e2e.go).
//
// <g> is the sidecar job's delivery guarantee, one row each (-guarantees,
// default eo,alo,none): eo = exactly_once (two-phase commit, the default),
// alo = at_least_once, none = fire and forget (guarantees.go). The tcp and
// async rows keep the default. A last section, "The price of exactly-once",
// compares each eo row with its alo twin of the same run: "exactly-once
// costs X % throughput, +Y ms p50 checkpoint". A row fails loudly if the
// sidecar refuses the guarantee, stores another one, or its sinks show the
// wrong kind of writes (Kafka transaction markers, MariaDB XA PREPAREs;
// checkMarkers, checkXA): a guarantee the server ignored would otherwise
// be measured as exactly-once under another name. E.g.
//
//	make bench BENCHFLAGS="-duration 3s -cases 'ckpt-kafka|e2e' -ckpt-writers 1,4"
//
// Every row records the sidecar's peak VmRSS while it ran (sampled every
// 50 ms; VmHWM cannot be reset between rows). Targets are ratios against
// the direct client in the same run (target below); the machine's load
// moves both alike. -sidecar-dir /dev/shm puts the journal on tmpfs, to
// see what its fsyncs cost (diagnosis only).
//
// Every case checks what it wrote: Kafka by reading the topic with
// read_committed (every key exactly once), MySQL with SELECT COUNT(*) and
// COUNT(DISTINCT k). alo and none rows may hold duplicates (counted and
// printed, not a failure); loss fails every row, as the bench injects no
// faults. A mismatch is printed loudly and the exit status is 1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	valueSize = 100   // bytes per record value
	batchSize = 1_000 // records per write call / per produce batch / per INSERT
	target    = 0.8   // sidecar ÷ direct we aim for (issue 12)
)

type options struct {
	duration    time.Duration
	cases       *regexp.Regexp
	writers     []int
	intervals   []time.Duration
	ckptWriters []int
	e2eInterval time.Duration
	guarantees  []string // short tags (guarantees.go) of the sidecar rows that get one row per guarantee
	sidecarDir  string   // parent of the sidecar's data dir; "" = the run's temp dir
}

func main() {
	code, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	os.Exit(code)
}

func run() (int, error) {
	var o options
	var casesRe, writers, intervals, ckptWriters, guarantees string
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "measured time per case")
	flag.StringVar(&casesRe, "cases", "", "regexp over case names (e.g. 'kafka', 'unix|direct', 'mysql'); empty: all")
	flag.StringVar(&writers, "writers", "1,2", "comma-separated writer counts (parallel producers / sidecar writers / DB connections)")
	flag.StringVar(&intervals, "intervals", "100ms,1s", "comma-separated Kafka commit/checkpoint intervals")
	flag.StringVar(&ckptWriters, "ckpt-writers", "1,4,16", "comma-separated writer counts of the ckpt-* rows")
	flag.DurationVar(&o.e2eInterval, "e2e-interval", 50*time.Millisecond, "commit/checkpoint interval of the e2e-* rows")
	flag.StringVar(&guarantees, "guarantees", "eo,alo,none", "comma-separated delivery guarantees of the kafka-unix, mysql-sidecar, "+
		"ckpt-*-sidecar and e2e-*-sidecar rows: eo (exactly_once), alo (at_least_once), none")
	flag.StringVar(&o.sidecarDir, "sidecar-dir", "", "directory to put the sidecar's data dir (journal) in, e.g. /dev/shm to "+
		"see what the journal's fsyncs cost; for diagnosis only (default: the run's temp dir)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: go run ./internal/cmd/bench [flags]\n\ncases: %s\n\n",
			strings.Join(allCaseNames(), " "))
		flag.PrintDefaults()
	}
	flag.Parse()
	var err error
	if o.cases, err = regexp.Compile(casesRe); err != nil {
		return 0, fmt.Errorf("-cases: %w", err)
	}
	if o.writers, err = parseCounts("-writers", writers); err != nil {
		return 0, err
	}
	if o.ckptWriters, err = parseCounts("-ckpt-writers", ckptWriters); err != nil {
		return 0, err
	}
	if o.guarantees, err = parseGuarantees(guarantees); err != nil {
		return 0, err
	}
	if o.e2eInterval <= 0 {
		return 0, fmt.Errorf("-e2e-interval: must be positive")
	}
	for _, s := range strings.Split(intervals, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil || d <= 0 {
			return 0, fmt.Errorf("-intervals: bad interval %q", s)
		}
		o.intervals = append(o.intervals, d)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	env, err := setup(ctx, o)
	defer env.close()
	if err != nil {
		return 0, err
	}

	var results []*result
	for _, c := range plan(o) {
		if !o.cases.MatchString(c.name) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		r := &result{c: c}
		results = append(results, r)
		if c.needsMySQL() && env.mysqlDSN == "" {
			r.note = "skipped: no MariaDB (" + env.mysqlWhy + "; set TXSINK_BENCH_MYSQL_DSN)"
			logf("%s: %s", c.name, r.note)
			continue
		}
		logf("%s: running for %v", c.name, o.duration)
		if c.lat != nil {
			c.lat.reset()
		}
		var j0 journalWrites
		if c.path != "direct" {
			j0 = env.journalWrites(ctx)
		}
		rss := env.sampleRSS()
		before := env.cpu()
		r.records, r.elapsed, r.err = c.run(ctx, env, o.duration)
		after := env.cpu()
		r.peakRSS = rss()
		if c.path != "direct" && r.err == nil {
			r.journal = env.journalWrites(ctx).minus(j0)
		}
		if s := r.elapsed.Seconds(); s > 0 {
			r.cpu = cpuSeconds{self: (after.self - before.self) / s, sidecar: (after.sidecar - before.sidecar) / s,
				broker: (after.broker - before.broker) / s, db: (after.db - before.db) / s}
		}
		if r.err == nil {
			logf("%s: %d records in %.2fs = %s/s; verifying", c.name, r.records, r.elapsed.Seconds(), human(r.rate()))
			r.err = c.verify(ctx, env, r.records)
		}
		if r.err != nil {
			logf("%s: FAILED: %v", c.name, r.err)
		} else {
			logf("%s: verified", c.name)
		}
	}
	if len(results) == 0 {
		return 0, fmt.Errorf("-cases %q matches none of: %s", casesRe, strings.Join(allCaseNames(), " "))
	}
	peak := env.sidecarPeakRSS()
	broker := env.brokerPeakRSS()
	printTable(os.Stdout, o, results)
	printLatencyTables(os.Stdout, o, results)
	printCPUBudget(os.Stdout, results)
	printGuaranteeSummary(os.Stdout, results)
	printFooter(os.Stdout, results, peak, broker)

	code := 0
	for _, r := range results {
		if r.err != nil {
			code = 1
			fmt.Fprintf(os.Stderr, "\n!!! %s FAILED: %v\n", r.c.name, r.err)
		}
	}
	return code, nil
}

// benchCase is one row of the table.
type benchCase struct {
	name string
	kind string // kafka | mysql
	path string // direct | tcp | unix | bin (unix, binary body) | sidecar | async
	// guarantee is the short tag of the sidecar job's delivery guarantee
	// (eo, alo, none; guarantees.go), "" for the direct client and the
	// rows that keep the default (tcp, async).
	guarantee string
	interval  time.Duration
	writers   int
	mysql     bool // needs MariaDB although kind is not mysql
	// lat, when not nil, collects the latencies the case measures
	// (ckpt: one write+checkpoint loop; e2e: a record's call start →
	// visible); the table prints p50 and p99.
	lat    *latencies
	run    func(ctx context.Context, env *env, d time.Duration) (int64, time.Duration, error)
	verify func(ctx context.Context, env *env, records int64) error
	// dups is what verify counted beyond one copy of each record: an
	// error for exactly-once, allowed (and printed) for alo and none.
	dups int64
	// lost is how many records a none row's verification found missing,
	// each counted by the sidecar as failed (lostOK); 0 for other rows.
	lost int64
	// xaPrepares is how much the MariaDB server's XA PREPARE count grew
	// during a MySQL sidecar row with a guarantee (checkXA).
	xaPrepares int64
}

func (c *benchCase) needsMySQL() bool { return c.kind == "mysql" || c.mysql }

// throughput reports whether the row belongs in the records/s table.
func (c *benchCase) throughput() bool { return c.kind == "kafka" || c.kind == "mysql" }

type result struct {
	c       *benchCase
	records int64
	elapsed time.Duration
	err     error
	note    string
	cpu     cpuSeconds // cores used during the run: bench (the app), sidecar, broker
	peakRSS int64      // KiB, the sidecar's largest VmRSS sampled during the run
	journal journalWrites
}

func (r *result) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.records) / r.elapsed.Seconds()
}

func (r *result) ok() bool { return r.err == nil && r.note == "" && r.records > 0 }

// plan lists the cases in run order: each sidecar row right after its
// direct baseline, so drift of the machine hits both alike.
func plan(o options) []*benchCase {
	var cs []*benchCase
	for _, w := range o.writers {
		for _, iv := range o.intervals {
			cs = append(cs, kafkaCase("direct", "", iv, w), kafkaCase("tcp", "", iv, w))
			for _, g := range o.guarantees {
				cs = append(cs, kafkaCase("unix", g, iv, w))
			}
			if slices.Contains(o.guarantees, "eo") {
				cs = append(cs, kafkaCase("bin", "eo", iv, w))
			}
		}
	}
	for _, w := range o.writers {
		cs = append(cs, mysqlCase("direct", "", w))
		for _, g := range o.guarantees {
			cs = append(cs, mysqlCase("sidecar", g, w))
		}
		cs = append(cs, mysqlCase("async", "", w))
	}
	for _, sinks := range []string{"kafka", "both"} {
		for _, w := range o.ckptWriters {
			cs = append(cs, ckptCase(sinks, "direct", "", w))
			for _, g := range o.guarantees {
				cs = append(cs, ckptCase(sinks, "sidecar", g, w))
			}
		}
	}
	cs = append(cs, e2eCase("direct", "", o.e2eInterval))
	for _, g := range o.guarantees {
		cs = append(cs, e2eCase("sidecar", g, o.e2eInterval))
	}
	return cs
}

func parseCounts(flagName, list string) ([]int, error) {
	var ns []int
	for _, s := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%s: bad count %q", flagName, s)
		}
		ns = append(ns, n)
	}
	return ns, nil
}

func allCaseNames() []string {
	var ns []string
	for _, c := range plan(options{writers: []int{1}, intervals: []time.Duration{100 * time.Millisecond, time.Second},
		ckptWriters: []int{1}, e2eInterval: 50 * time.Millisecond, guarantees: allGuarantees}) {
		ns = append(ns, c.name)
	}
	return ns
}

// caseName is kind-path[-guarantee][-interval][-wN].
func caseName(kind, path, g string, iv time.Duration, w int) string {
	n := kind + "-" + path
	if g != "" {
		n += "-" + g
	}
	if iv > 0 {
		n += "-" + iv.String()
	}
	if w > 1 {
		n += fmt.Sprintf("-w%d", w)
	}
	return n
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// human formats a rate: 1234567 → "1.23 M".
func human(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2f M", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1f k", v/1e3)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

var errMismatch = errors.New("MISMATCH")
