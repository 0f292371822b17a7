// Command chaos is `make chaos`: it proves exactly-once end to end while
// processes are killed with SIGKILL, stopped with SIGSTOP or restarted at
// random moments, and while an app is too slow for its transactions.
//
// It starts a kfake broker process (with a data dir), a private mariadbd
// (binary log on), the sidecar (`sidecar run`) and the page-view example
// (examples/pageviews-go) as CHAOS_WRITERS parallel writers in its
// deterministic mode, while the example's generator appends numbered click
// events. For CHAOS_ROUNDS rounds it waits a random time and injects one
// fault of a kind from CHAOS_FAULTS (faults.go): kill (SIGKILL of an app,
// the sidecar or mariadbd, and a restart), broker-stop and db-stop (SIGSTOP,
// then SIGCONT), broker-restart (a clean stop and start of the broker) and
// slow (an app pauses before a checkpoint until its Kafka transaction is too
// old to be journaled). The random choices come from CHAOS_SEED (printed;
// set it to repeat a run's choices).
//
// Then it lets the apps count every event and runs an independent checker:
// it reads the input and the output topic with read_committed (franz-go, and
// kcat when installed) and the pv table with SQL, and proves that every input
// event is counted exactly once in Kafka (through the input ranges each
// output record carries) and in MySQL (per-app totals), and that no branch of
// ours is left in doubt (XA RECOVER; no open transaction on the output
// topic). Its last line is
//
//	chaos: <N> events, <K> kills, 0 missing, 0 duplicated, 0 in doubt
//
// and it exits non-zero when any of the last three is not 0.
//
// CHAOS_OFFSETS=group runs every app with --offsets group: no checkpoint
// state, the input position is the consumer group "pageviews"'s offsets,
// which the sidecar commits in each checkpoint's Kafka transaction, and a
// restarted app resumes from them (read with require_stable); mixed runs
// the odd apps that way and the even ones with state (the default, state,
// runs all with state). The checker then also reads the group's committed
// offsets (require_stable; internal/kafkatest.GroupOffsets) and requires,
// per input partition of a group app, that they equal the end of the
// furthest input range the output counted, and no offsets of a state app's
// partitions.
//
// CHAOS_MODE=dev runs `sidecar dev` instead (with --mysql-dsn on the
// private mariadbd, so the pv table is txsink_dev.pv there): the broker is
// the one dev starts as a process of its own, and kill -9 of the sidecar
// must leave it running. Before the check the dev sidecar stops cleanly
// (which stops its broker) and the checker reads a kafkabroker restarted on
// the dev broker's data dir. In both modes a "DATA LOSS" line in the
// sidecar's log is a problem.
//
// CHAOS_NODES=3 (cluster.go; default 1, the single sidecar above) runs
// three `sidecar run` nodes as one cluster instead: a cluster key file
// written into the work dir, every node with --join of all three API
// addresses and --bootstrap-expect 3. There is an app on every node
// (CHAOS_WRITERS defaults to CHAOS_NODES): app i talks to node i mod N
// first and is given every node's URL (pageviews-go --sidecar a,b,c), so
// when its node is down the Go client moves to the next one and the app
// reopens its session there (which moves the writer). The kinds add
// node-kill: kill -9 of a node (the leader in the first node-kill round,
// so that even a short run measures a failover, and half of the time
// after) and a restart on the same data dir 0.5–2.5 s later, as a
// StatefulSet would; a kill round's "sidecar" choice kills any node
// (with or without mariadbd). For every leader kill it prints
// the time to a new leader and the failover time: from the kill to the
// first checkpoint the journal decides after it (any writer), polled on
// the survivors every 20 ms; after the rounds a line with min/median/max.
// A leader kill with no checkpoint within 30 s while input is coming is a
// problem of the run (a hang), as is a node not ready 60 s after its
// restart. The checker is the same.
//
// Environment: CHAOS_MODE (run or dev, default run), CHAOS_NODES (1, or a
// cluster of 3 or more; run mode only), CHAOS_ROUNDS (20), CHAOS_SEED (from
// the clock), CHAOS_RATE (events/s, 1000), CHAOS_EVENTS (about 5 s of input
// a round; 1.5 s with CHAOS_FAULTS=kill), CHAOS_WRITERS (2; CHAOS_NODES in
// a cluster), CHAOS_FAULTS (comma-separated kinds; default every kind the
// mode has: dev has kill, broker-stop and db-stop; node-kill needs a
// cluster), CHAOS_KEEP=1 keeps the work directory (kept anyway on
// failure).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/mysqltest"
)

type config struct {
	mode    string // "run" or "dev"
	rounds  int
	seed    uint64
	rate    int
	events  int
	writers int
	nodes   int      // sidecar nodes: 1, or a cluster of 3 or more
	faults  []string // kinds of fault the rounds choose from
	offsets string   // where the apps keep their input position: state, group or mixed
	keep    bool
}

func configFromEnv() (c config, err error) {
	c = config{mode: "run", rounds: 20, rate: 1000, writers: 2, nodes: 1, offsets: "state", seed: uint64(time.Now().UnixNano())}
	if o := os.Getenv("CHAOS_OFFSETS"); o != "" {
		if o != "state" && o != "group" && o != "mixed" {
			return c, fmt.Errorf("CHAOS_OFFSETS=%q: want state, group or mixed", o)
		}
		c.offsets = o
	}
	if m := os.Getenv("CHAOS_MODE"); m != "" {
		if m != "run" && m != "dev" {
			return c, fmt.Errorf("CHAOS_MODE=%q: want run or dev", m)
		}
		c.mode = m
	}
	for _, v := range []struct {
		name string
		dst  *int
		min  int
	}{{"CHAOS_ROUNDS", &c.rounds, 0}, {"CHAOS_RATE", &c.rate, 1}, {"CHAOS_EVENTS", &c.events, 1}, {"CHAOS_WRITERS", &c.writers, 1}, {"CHAOS_NODES", &c.nodes, 1}} {
		if s := os.Getenv(v.name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < v.min {
				return c, fmt.Errorf("%s=%q: want an integer >= %d", v.name, s, v.min)
			}
			*v.dst = n
		}
	}
	if s := os.Getenv("CHAOS_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return c, fmt.Errorf("CHAOS_SEED=%q: want an unsigned integer", s)
		}
		c.seed = n
	}
	switch {
	case c.nodes == 2:
		return c, fmt.Errorf("CHAOS_NODES=2: want 1 or at least 3 (two nodes have no quorum once either dies)")
	case c.nodes > 1 && c.mode == "dev":
		return c, fmt.Errorf("CHAOS_NODES=%d: a cluster needs CHAOS_MODE=run (sidecar dev is one node)", c.nodes)
	case c.nodes > 1 && os.Getenv("CHAOS_WRITERS") == "":
		c.writers = c.nodes // an app on every node
	}
	if c.faults, err = parseFaults(c.mode, c.nodes, os.Getenv("CHAOS_FAULTS")); err != nil {
		return c, err
	}
	if c.events == 0 {
		// Input must keep coming while the rounds run (a slow round needs
		// a checkpoint to pause before): a round lasts about 1.2 s plus
		// its fault, 1–4 s for a stop, ~8 s for a slow app.
		perRound := 1500
		if len(c.faults) > 1 || c.faults[0] != faultKill {
			perRound = 5000
		}
		c.events = max(3000, c.rounds*perRound*c.rate/1000)
	}
	c.keep = os.Getenv("CHAOS_KEEP") == "1"
	return c, nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first Ctrl-C the run winds down (stopping its processes
	// takes a while); a second one kills the driver at once.
	go func() { <-ctx.Done(); stop() }()
	cfg, err := configFromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(2)
	}
	os.Exit(run(ctx, cfg, os.Stdout))
}

func run(ctx context.Context, cfg config, out io.Writer) int {
	// A short path: mariadbd's socket lives in it (< 108 bytes).
	dir, err := os.MkdirTemp("", "txsink-chaos-")
	if err != nil {
		fmt.Fprintln(out, "chaos:", err)
		return 1
	}
	d := &driver{cfg: cfg, dir: dir, out: out, rng: rand.New(rand.NewPCG(cfg.seed, 0x74787331))}
	d.plan = schedule(d.rng.IntN, cfg.faults, cfg.rounds)
	sidecar := cfg.mode
	if cfg.nodes > 1 {
		sidecar = fmt.Sprintf("%s, a cluster of %d nodes", cfg.mode, cfg.nodes)
	}
	fmt.Fprintf(out, "chaos: seed %d (CHAOS_SEED=%d repeats the choices), sidecar %s, %d rounds, faults %s, %d events at %d/s, %d writers (offsets in %s), work dir %s\n",
		cfg.seed, cfg.seed, sidecar, cfg.rounds, strings.Join(cfg.faults, ","), cfg.events, cfg.rate, cfg.writers, cfg.offsets, dir)
	res, err := func() (result, error) {
		defer d.shutdown() // also on a panic: no process of ours outlives the run
		return d.run(ctx)
	}()
	if err != nil {
		fmt.Fprintf(out, "chaos: FAILED: %v\nchaos: logs are in %s\n", err, dir)
		return 1
	}
	ok := res.missing == 0 && res.duplicated == 0 && res.inDoubt == 0 && len(res.problems) == 0
	if ok && !cfg.keep {
		_ = os.RemoveAll(dir)
	} else {
		fmt.Fprintf(out, "chaos: logs are in %s\n", dir)
	}
	for _, p := range res.problems {
		fmt.Fprintf(out, "chaos: PROBLEM: %s\n", p)
	}
	fmt.Fprintf(out, "chaos: %d events, %d kills, %d missing, %d duplicated, %d in doubt\n",
		res.events, d.kills, res.missing, res.duplicated, res.inDoubt)
	if !ok {
		return 1
	}
	return 0
}

// driver owns the processes of one chaos run.
type driver struct {
	cfg config
	dir string
	out io.Writer
	rng *rand.Rand

	bin       string // directory of the built binaries
	db        *mysqltest.Server
	dbDSN     string // DSN of the chaos database
	brokers   string
	httpAddr  string
	raftAddr  string
	broker    *proc
	sidecar   *proc   // single mode: the sidecar (also d.nodes[0])
	nodes     []*node // every sidecar process: the one of single mode, or the cluster's
	generator *proc
	apps      []*proc
	cl        *client.Client // every node (the next one when one cannot be reached)

	plan       []string // the fault kind of each round
	faultsOf   map[string]int
	frozen     map[int]bool // pids stopped with SIGSTOP and not continued yet
	kills      int
	killsOf    map[string]int
	unexpected []string // processes that exited without being killed

	failovers  []time.Duration // leader kills: kill → first checkpoint decided after it
	elections  []time.Duration // leader kills: kill → a new leader seen by a survivor
	noFailover int             // leader kills without a checkpoint within failoverLimit
}

const job = "pageviews"

// partitions is the number of partitions of the input and output topics:
// 4, or one per writer when there are more (app i reads the partitions p
// with p mod writers = i, so a writer without one would never catch up).
func (d *driver) partitions() int { return max(4, d.cfg.writers) }

func (d *driver) run(ctx context.Context) (result, error) {
	start := time.Now()
	d.killsOf, d.faultsOf, d.frozen = map[string]int{}, map[string]int{}, map[int]bool{}
	if err := d.build(ctx); err != nil {
		return result{}, err
	}
	if err := d.startAll(ctx); err != nil {
		return result{}, err
	}
	fmt.Fprintf(d.out, "chaos: everything is up after %s; starting %d rounds\n", time.Since(start).Round(time.Millisecond), d.cfg.rounds)
	for r := 1; r <= d.cfg.rounds; r++ {
		if err := d.round(ctx, r); err != nil {
			return result{}, err
		}
	}
	fmt.Fprintf(d.out, "chaos: rounds done (faults: %s; %d kills: %s); letting the apps count every event\n", d.faultSummary(), d.kills, d.killSummary())
	if d.clustered() {
		fmt.Fprintf(d.out, "chaos: failover: %s\n", d.failoverSummary())
	}
	if err := d.drain(ctx); err != nil {
		return result{}, err
	}
	fmt.Fprintf(d.out, "chaos: all events counted after %s; stopping the sidecar and checking\n", time.Since(start).Round(time.Second))
	d.stopNodes()
	if d.cfg.mode == "dev" {
		// The dev sidecar's clean stop stopped its broker too: serve the
		// same data dir again for the checker.
		if err := d.startBroker(ctx, filepath.Join(d.devDataDir(), "kafka"), "--partitions", "1"); err != nil {
			return result{}, fmt.Errorf("restart the dev broker's data for the checker: %w", err)
		}
	}
	groupParts := map[int32]bool{}
	for p := range d.partitions() {
		if d.groupApp(p % d.cfg.writers) {
			groupParts[int32(p)] = true
		}
	}
	res, err := check(ctx, d.out, d.brokers, d.dbDSN, int64(d.cfg.events), d.partitions(), job, groupParts)
	if err != nil {
		return result{}, fmt.Errorf("checker: %w", err)
	}
	for _, n := range d.nodes {
		if c := strings.Count(readFile(n.p.logPath), "DATA LOSS"); c > 0 {
			res.problems = append(res.problems, fmt.Sprintf("the sidecar logged DATA LOSS %d times (%s)", c, n.p.logPath))
		}
	}
	for _, u := range d.unexpected {
		res.problems = append(res.problems, "unexpected exit: "+u)
	}
	return res, nil
}

// build compiles the sidecar, the broker and the example into the work dir.
func (d *driver) build(ctx context.Context) error {
	d.bin = filepath.Join(d.dir, "bin")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", d.bin+"/", "./cmd/sidecar", "./internal/cmd/kafkabroker", "./examples/pageviews-go")
	cmd.Dir = repoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w\n%s", err, out)
	}
	return nil
}

// repoRoot is the module root (the directory `go env GOMOD` names), so that
// `go run ./internal/cmd/chaos` works from any directory of the repository.
func repoRoot() string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err == nil {
		if mod := strings.TrimSpace(string(out)); mod != "" && mod != os.DevNull {
			return filepath.Dir(mod)
		}
	}
	return "."
}

// freeAddrs reserves n distinct loopback ports: every listener stays open
// until all are chosen, so the kernel cannot hand one out twice (a sidecar
// once got the same port for Raft and HTTP that way).
func freeAddrs(n int) ([]string, error) {
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, nil
}

func (d *driver) startAll(ctx context.Context) error {
	var err error
	fmt.Fprintln(d.out, "chaos: starting a private mariadbd (binary log on)")
	d.db, err = mysqltest.Start(filepath.Join(d.dir, "mdb"))
	if err != nil {
		return err
	}
	if d.dbDSN, err = createSchema(ctx, d.db.DSN()); err != nil {
		return err
	}
	// The broker's, the sidecar's HTTP and its Raft port (each node's in a
	// cluster), chosen together.
	addrs, err := freeAddrs(1 + 2*d.cfg.nodes)
	if err != nil {
		return err
	}
	d.brokers, d.httpAddr, d.raftAddr = addrs[0], addrs[1], addrs[2]
	if d.clustered() {
		if err := d.startBroker(ctx, filepath.Join(d.dir, "kafka"), "--partitions", strconv.Itoa(d.partitions()), "--topics", "clicks,pageviews",
			"--transaction-max-timeout", txnTimeout.String()); err != nil {
			return err
		}
		if err := d.startCluster(ctx, addrs[1:]); err != nil {
			return err
		}
		var urls []string
		for _, n := range d.nodes[1:] {
			urls = append(urls, n.url())
		}
		d.cl = client.New(d.nodes[0].url(), client.WithEndpoints(urls...))
	} else if d.cfg.mode == "dev" {
		if err := d.devSidecar(); err != nil {
			return err
		}
	} else {
		if err := d.startBroker(ctx, filepath.Join(d.dir, "kafka"), "--partitions", strconv.Itoa(d.partitions()), "--topics", "clicks,pageviews",
			"--transaction-max-timeout", txnTimeout.String()); err != nil {
			return err
		}
		single := &node{id: "chaos", httpAddr: d.httpAddr, raftAddr: d.raftAddr}
		if err := d.writeNodeConfig(filepath.Join(d.dir, "txsink.yaml"), single, ""); err != nil {
			return err
		}
		d.sidecar = newProc("sidecar", filepath.Join(d.dir, "sidecar.log"), filepath.Join(d.bin, "sidecar"),
			"run", "--config", filepath.Join(d.dir, "txsink.yaml"))
	}
	if !d.clustered() {
		d.cl = client.New("http://" + d.httpAddr)
		d.nodes = []*node{{id: "chaos", p: d.sidecar, httpAddr: d.httpAddr, raftAddr: d.raftAddr, cl: d.cl}}
		if err := d.sidecar.start(); err != nil {
			return err
		}
		if err := waitFor(ctx, 60*time.Second, "sidecar", d.sidecar, func() bool { return d.ready(ctx) }); err != nil {
			return err
		}
	}

	d.generator = newProc("generator", filepath.Join(d.dir, "generator.log"), filepath.Join(d.bin, "pageviews-go"),
		"generate", "--brokers", d.brokers, "--events", strconv.Itoa(d.cfg.events), "--partitions", strconv.Itoa(d.partitions()),
		"--rate", strconv.Itoa(d.cfg.rate))
	if err := d.generator.start(); err != nil {
		return err
	}
	for i := range d.cfg.writers {
		argv := append([]string{filepath.Join(d.bin, "pageviews-go"),
			"count", "--sidecar", d.appSidecar(i), "--brokers", d.brokers, "--job", job,
			"--writer", strconv.Itoa(i), "--writers", strconv.Itoa(d.cfg.writers),
			"--every", "100", "--interval", "0", "--exit-idle", "3s", "--give-up", "10m", "--pause-file", d.pauseFile(i)},
			d.offsetsArgs(i)...)
		p := newProc(fmt.Sprintf("app-%d", i), filepath.Join(d.dir, fmt.Sprintf("app-%d.log", i)), argv...)
		if err := p.start(); err != nil {
			return err
		}
		d.apps = append(d.apps, p)
	}
	return nil
}

// groupApp reports whether app i keeps its input position in the consumer
// group (pageviews-go --offsets group): all apps with CHAOS_OFFSETS=group,
// the odd ones with mixed.
func (d *driver) groupApp(i int) bool {
	return d.cfg.offsets == "group" || (d.cfg.offsets == "mixed" && i%2 == 1)
}

// offsetsArgs are app i's flags for where it keeps its input position; the
// group is the job's name, the app's default, spelled out for the checker.
func (d *driver) offsetsArgs(i int) []string {
	if d.groupApp(i) {
		return []string{"--offsets", "group", "--group", job}
	}
	return []string{"--offsets", "state"}
}

// startBroker runs kafkabroker on d.brokers with dataDir and waits until it
// listens.
func (d *driver) startBroker(ctx context.Context, dataDir string, args ...string) error {
	argv := append([]string{filepath.Join(d.bin, "kafkabroker"), "--addr", d.brokers, "--data-dir", dataDir}, args...)
	d.broker = newProc("broker", filepath.Join(d.dir, "broker.log"), argv...)
	if err := d.broker.start(); err != nil {
		return err
	}
	return waitFor(ctx, 30*time.Second, "broker", d.broker, func() bool {
		return strings.Contains(tailFile(d.broker.logPath, 5), "listening ")
	})
}

// devDataDir is the dev sidecar's --data-dir.
func (d *driver) devDataDir() string { return filepath.Join(d.dir, "sidecar") }

// devSidecar sets up `sidecar dev` as the sidecar: its own broker on
// d.brokers, the db sink in database txsink_dev of the private mariadbd.
// The input topic is created by the generator, the output topic by the
// dev sink (create_topics).
func (d *driver) devSidecar() error {
	c, err := gomysql.ParseDSN(d.db.DSN())
	if err != nil {
		return err
	}
	c.DBName = "txsink_dev"
	d.dbDSN = c.FormatDSN()
	d.sidecar = newProc("sidecar", filepath.Join(d.dir, "sidecar.log"), filepath.Join(d.bin, "sidecar"),
		"dev", "--data-dir", d.devDataDir(), "--http-addr", d.httpAddr, "--raft-addr", d.raftAddr,
		"--kafka-addr", d.brokers, "--mysql-dsn", d.db.DSN())
	return nil
}

// writeNodeConfig writes the config of `sidecar run` node n to path: its
// data dir is <work dir>/sidecar in single mode, <work dir>/<id> in a
// cluster; extra holds the cluster's keys.
func (d *driver) writeNodeConfig(path string, n *node, extra string) error {
	dataDir := filepath.Join(d.dir, "sidecar")
	if d.clustered() {
		dataDir = filepath.Join(d.dir, n.id)
	}
	cfg := fmt.Sprintf(`# written by the chaos driver
node_id: %s
data_dir: %s
http_addr: %s
raft_addr: %s
%slog: {level: info}
timeouts: {checkpoint: %s}
sinks:
  events:
    kind: kafka
    brokers: [%q]
    default_topic: pageviews
    topics: [pageviews]
    transaction_timeout: %s
    expire_share: %v
  db:
    kind: mysql
    dsn: %q
    statements:
      upsert_pv: "INSERT INTO pv(app, views) VALUES (?, ?) ON DUPLICATE KEY UPDATE views = views + VALUES(views)"
jobs:
  %s:
    commit: auto
    sinks: [events, db]
`, n.id, dataDir, n.httpAddr, n.raftAddr, extra, txnTimeout-maxOpen, d.brokers, txnTimeout, expireShare, d.dbDSN, job)
	return os.WriteFile(path, []byte(cfg), 0o600)
}

func (d *driver) ready(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return d.cl.Ready(ctx) == nil
}

// waitFor polls cond until it holds, p exits, ctx ends or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, p *proc, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if p != nil {
			if exited, err := p.exited(); exited {
				return fmt.Errorf("%s exited during start (%v); log tail:\n%s", what, err, tailFile(p.logPath, 30))
			}
		}
		if time.Now().After(deadline) {
			if p == nil {
				return fmt.Errorf("%s not ready after %s", what, timeout)
			}
			return fmt.Errorf("%s not ready after %s; log tail:\n%s", what, timeout, tailFile(p.logPath, 30))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// round waits a random time, then injects the round's fault (d.plan): a
// kill -9 (and restart) of an app, the sidecar or mariadbd, a SIGSTOP of
// the broker or mariadbd, a clean restart of the broker, or a slow app.
func (d *driver) round(ctx context.Context, r int) error {
	wait := time.Duration(200+d.rng.IntN(1800)) * time.Millisecond
	app := d.rng.IntN(len(d.apps))
	if err := d.sleepSupervised(ctx, wait); err != nil {
		return err
	}
	kind := d.plan[r-1]
	d.faultsOf[kind]++
	var what string
	var err error
	switch kind {
	case faultKill:
		what, err = d.killRound(ctx, app)
	case faultBrokerStop, faultDBStop:
		what, err = d.stopRound(ctx, kind)
	case faultBrokerRestart:
		what, err = d.brokerRestartRound(ctx)
	case faultSlow:
		what, err = d.slowRound(ctx, app)
	case faultNodeKill:
		what, err = d.nodeKillRound(ctx)
	default:
		err = fmt.Errorf("round %d: unknown fault kind %q", r, kind)
	}
	if err != nil {
		return err
	}
	d.supervise()
	fmt.Fprintf(d.out, "chaos: round %2d/%d  +%-6s %-14s %s | %s\n", r, d.cfg.rounds, wait.Round(10*time.Millisecond), kind, what, d.progress(ctx))
	return nil
}

// killRound kills one process with SIGKILL and starts it again after a
// random pause.
func (d *driver) killRound(ctx context.Context, app int) (string, error) {
	pause := time.Duration(d.rng.IntN(500)) * time.Millisecond
	roll := d.rng.IntN(100)
	var what string
	switch {
	case roll < 35:
		p := d.apps[app]
		if !p.running() {
			what = p.name + " had exited (idle); started it again"
			break
		}
		pid := p.pid()
		p.kill9()
		d.countKill(p.name)
		if err := d.sleepSupervised(ctx, pause); err != nil {
			return "", err
		}
		if err := p.start(); err != nil {
			return "", err
		}
		what = fmt.Sprintf("kill -9 %s (pid %d), restarted after %s", p.name, pid, pause)
	case roll < 65 && d.clustered():
		// Any node, the leader too; a restart after the pause.
		return d.killNode(ctx, d.rng.IntN(len(d.nodes)), pause)
	case roll < 65:
		pid, bpid := d.sidecar.pid(), d.devBrokerPID()
		d.sidecar.kill9()
		d.countKill("sidecar")
		if err := d.sleepSupervised(ctx, pause); err != nil {
			return "", err
		}
		t0 := time.Now()
		if err := d.sidecar.start(); err != nil {
			return "", err
		}
		_ = waitFor(ctx, 30*time.Second, "sidecar", nil, func() bool { return d.ready(ctx) || !d.sidecar.running() })
		d.checkDevBroker(bpid)
		what = fmt.Sprintf("kill -9 sidecar (pid %d), restarted after %s, ready in %s", pid, pause, time.Since(t0).Round(time.Millisecond))
	case roll < 85:
		pid := d.db.Pid()
		d.db.Kill9()
		d.countKill("mariadbd")
		if err := d.sleepSupervised(ctx, pause); err != nil {
			return "", err
		}
		t0 := time.Now()
		if err := d.db.Relaunch(); err != nil {
			return "", fmt.Errorf("restart mariadbd: %w", err)
		}
		what = fmt.Sprintf("kill -9 mariadbd (pid %d), restarted after %s, up in %s", pid, pause, time.Since(t0).Round(time.Millisecond))
	default:
		// Both at once, as when their machine dies; the sidecar comes back
		// first and has to wait for MariaDB (sink_wait). In a cluster: any
		// one node and mariadbd.
		n := d.nodes[0]
		if d.clustered() {
			n = d.nodes[d.rng.IntN(len(d.nodes))]
		}
		spid, dpid, bpid := n.p.pid(), d.db.Pid(), d.devBrokerPID()
		d.db.Kill9()
		n.p.kill9()
		if d.clustered() {
			d.countKill("node")
		} else {
			d.countKill("sidecar")
		}
		d.countKill("mariadbd")
		if err := n.p.start(); err != nil {
			return "", err
		}
		dbDown := pause + time.Duration(500+d.rng.IntN(1500))*time.Millisecond
		if err := d.sleepSupervised(ctx, dbDown); err != nil {
			return "", err
		}
		if err := d.db.Relaunch(); err != nil {
			return "", fmt.Errorf("restart mariadbd: %w", err)
		}
		t0 := time.Now()
		_ = waitFor(ctx, 30*time.Second, "sidecar", nil, func() bool { return d.nodeReady(ctx, n) || !n.p.running() })
		d.checkDevBroker(bpid)
		name := "sidecar"
		if d.clustered() {
			name = n.id
		}
		what = fmt.Sprintf("kill -9 %s (pid %d) and mariadbd (pid %d); %s restarted at once, mariadbd after %s; ready %s later",
			name, spid, dpid, name, dbDown.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	}
	return what, nil
}

// devBrokerPID is the pid in the dev broker's broker.json (0 if not in dev
// mode or unreadable).
func (d *driver) devBrokerPID() int {
	if d.cfg.mode != "dev" {
		return 0
	}
	var st struct {
		PID int `json:"pid"`
	}
	if json.Unmarshal([]byte(readFile(filepath.Join(d.devDataDir(), "kafka", "broker.json"))), &st) != nil {
		return 0
	}
	return st.PID
}

// checkDevBroker records a problem if the dev broker that ran as pid
// before the sidecar's kill is not the one the restarted sidecar uses: it
// must survive the kill.
func (d *driver) checkDevBroker(before int) {
	if d.cfg.mode != "dev" {
		return
	}
	if after := d.devBrokerPID(); before == 0 || after != before {
		d.unexpected = append(d.unexpected, fmt.Sprintf("dev broker: pid %d before the sidecar's kill, %d after (want the same process)", before, after))
	}
}

func (d *driver) countKill(name string) {
	d.kills++
	if strings.HasPrefix(name, "app-") {
		name = "app"
	}
	d.killsOf[name]++
}

// faultSummary counts the rounds of each fault kind.
func (d *driver) faultSummary() string {
	var parts []string
	for _, k := range allFaults {
		if n := d.faultsOf[k]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, n))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func (d *driver) killSummary() string {
	var parts []string
	names := []string{"app", "sidecar", "mariadbd"}
	if d.clustered() {
		names = []string{"app", "node", "mariadbd"}
	}
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s %d", n, d.killsOf[n]))
	}
	return strings.Join(parts, ", ")
}

// sleepSupervised sleeps while restarting processes that died on their own.
func (d *driver) sleepSupervised(ctx context.Context, dur time.Duration) error {
	end := time.Now().Add(dur)
	for {
		d.supervise()
		left := time.Until(end)
		if left <= 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(left, 100*time.Millisecond)):
		}
	}
}

// supervise restarts the sidecar and apps that exited without being killed
// by us, like a container runtime would, and records each unexpected exit.
// An app that exited 0 was idle (caught up with the generator); it is
// started again while the run goes on.
func (d *driver) supervise() {
	for _, p := range append(d.nodeProcs(), d.apps...) {
		exited, err := p.exited()
		if !exited {
			continue
		}
		// An app exiting 0 was idle; the sidecar never exits by itself.
		if err != nil || d.isNode(p) {
			msg := fmt.Sprintf("%s: %v; log tail:\n%s", p.name, err, tailFile(p.logPath, 15))
			d.unexpected = append(d.unexpected, msg)
			fmt.Fprintf(d.out, "chaos: %s exited on its own (%v); restarting it (see %s)\n", p.name, err, p.logPath)
		}
		_ = p.start()
	}
}

// progress is a one-line status: input generated, checkpoints committed.
func (d *driver) progress(ctx context.Context) string {
	gen := "generator done"
	if d.generator.running() {
		gen = "generating"
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	info, err := d.cl.Job(ctx, job)
	if err != nil {
		return gen + ", sidecar: " + client.Code(err) + " " + shortErr(err)
	}
	var parts []string
	for _, w := range info.Writers {
		s := fmt.Sprintf("%s@%d", w.Name, w.LastCommitted)
		if d.clustered() {
			s += "/" + w.Owner
		}
		if len(w.InDoubt) > 0 {
			s += fmt.Sprintf("(in doubt %v)", w.InDoubt)
		}
		parts = append(parts, s)
	}
	return gen + ", committed checkpoints " + strings.Join(parts, " ")
}

func shortErr(err error) string {
	s := err.Error()
	if len(s) > 60 {
		s = s[:60] + "…"
	}
	return s
}

// drain waits until the generator has finished and every app has exited 0
// (caught up and idle), restarting processes that die on their own.
func (d *driver) drain(ctx context.Context) error {
	// The generator needs events/rate in all; allow a minute more.
	genWait := time.Duration(d.cfg.events/d.cfg.rate)*time.Second + time.Minute
	genDeadline := time.Now().Add(genWait)
	for d.generator.running() {
		if time.Now().After(genDeadline) {
			return fmt.Errorf("generator still running %s after the rounds; log:\n%s", genWait, tailFile(d.generator.logPath, 20))
		}
		if err := d.sleepSupervised(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
	if _, err := d.generator.exited(); err != nil {
		return fmt.Errorf("generator: %v; log:\n%s", err, tailFile(d.generator.logPath, 20))
	}
	deadline := time.Now().Add(5 * time.Minute)
	lastReport := time.Now()
	for {
		for _, n := range d.nodes {
			if exited, err := n.p.exited(); exited {
				d.unexpected = append(d.unexpected, fmt.Sprintf("%s: %v", n.p.name, err))
				_ = n.p.start()
			}
		}
		done := 0
		for _, p := range d.apps {
			exited, err := p.exited()
			switch {
			case exited && err == nil:
				done++
			case exited:
				d.unexpected = append(d.unexpected, fmt.Sprintf("%s: %v; log tail:\n%s", p.name, err, tailFile(p.logPath, 15)))
				_ = p.start()
			}
		}
		if done == len(d.apps) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("apps did not catch up within 5 minutes (%s)", d.progress(ctx))
		}
		if time.Since(lastReport) > 2*time.Second {
			fmt.Fprintf(d.out, "chaos: draining: %d/%d apps caught up | %s\n", done, len(d.apps), d.progress(ctx))
			lastReport = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	// Every checkpoint is committed in both sinks once nothing is in doubt.
	return waitFor(ctx, time.Minute, "sidecar (unresolved checkpoints)", d.sidecar, func() bool {
		info, err := d.cl.Job(ctx, job)
		if err != nil {
			return false
		}
		for _, w := range info.Writers {
			if len(w.InDoubt) > 0 {
				return false
			}
		}
		return true
	})
}

// shutdown stops everything that still runs, in dev mode also a dev
// broker that a killed dev sidecar left running.
func (d *driver) shutdown() {
	d.thaw() // a stopped process would ignore SIGTERM
	for _, p := range append(d.apps, d.generator) {
		if p != nil {
			p.stop(45 * time.Second)
		}
	}
	d.stopNodes()
	if d.broker != nil {
		d.broker.stop(45 * time.Second)
	}
	if d.cfg.mode == "dev" && d.bin != "" {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, filepath.Join(d.bin, "sidecar"), "dev", "--data-dir", d.devDataDir(), "--stop-broker").CombinedOutput()
		cancel()
		if err != nil {
			fmt.Fprintf(d.out, "chaos: sidecar dev --stop-broker: %v\n%s", err, out)
		}
	}
	if d.db != nil {
		d.db.Stop()
	}
}

// stopNodes stops every sidecar process (SIGTERM, SIGKILL after 45 s), a
// cluster's nodes at once: one by one, the last would stop without a
// quorum.
func (d *driver) stopNodes() {
	var wg sync.WaitGroup
	for _, n := range d.nodes {
		if n.p == nil { // the start failed before this one was set up
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.p.stop(45 * time.Second)
		}()
	}
	wg.Wait()
	if len(d.nodes) == 0 && d.sidecar != nil { // the start failed before
		d.sidecar.stop(45 * time.Second)
	}
}
