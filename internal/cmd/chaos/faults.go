package main

// Fault kinds beyond kill -9: what users meet when a broker or a database
// hangs (SIGSTOP, a stopped VM, a long GC pause), when the broker is
// restarted, and when an app is too slow between writing and checkpointing
// for its Kafka transaction to be journaled safely.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The fault kinds of CHAOS_FAULTS.
const (
	faultKill          = "kill"           // kill -9 of an app, the sidecar, mariadbd, or sidecar and mariadbd
	faultBrokerStop    = "broker-stop"    // SIGSTOP of the broker process, SIGCONT after 1–7 s
	faultDBStop        = "db-stop"        // SIGSTOP of mariadbd, SIGCONT after 1–4 s
	faultBrokerRestart = "broker-restart" // SIGTERM of the broker process (clean stop), started again
	faultSlow          = "slow"           // an app pauses between its records and its checkpoint past the expiry
	faultNodeKill      = "node-kill"      // cluster: kill -9 of a node (the leader first, then half of the time), restarted after 0.5–2.5 s
)

// allFaults is every kind, in the order summaries list them.
var allFaults = []string{faultKill, faultBrokerStop, faultDBStop, faultBrokerRestart, faultSlow, faultNodeKill}

// Kafka transaction timing of run mode: short, so that an app paused for a
// few seconds outlives expireShare of it within one round; the rest of the
// timeout (15 s, the sink's commit window) is the margin for journaling and
// committing, longer than any stop of the broker or mariadbd that a round
// injects. The sidecar's checkpoint timeout is set to that window, so that
// the sidecar has no reason to warn about it.
const (
	txnTimeout  = 20 * time.Second
	expireShare = 0.25
	// maxOpen is how long the sidecar lets a Kafka transaction stay open.
	maxOpen = time.Duration(float64(txnTimeout) * expireShare)
)

// defaultFaults are the kinds a mode runs when CHAOS_FAULTS is not set:
// all it supports. node-kill needs a cluster (nodes > 1).
func defaultFaults(mode string, nodes int) []string {
	if mode == "dev" {
		return []string{faultKill, faultBrokerStop, faultDBStop}
	}
	if nodes > 1 {
		return slices.Clone(allFaults)
	}
	return slices.DeleteFunc(slices.Clone(allFaults), func(k string) bool { return k == faultNodeKill })
}

// parseFaults reads CHAOS_FAULTS: comma-separated kinds, each at most once.
// `sidecar dev` starts and owns its broker with Kafka's 15-minute
// transaction timeout, so dev mode supports neither broker-restart nor
// slow (a slow round would have to pause for minutes). node-kill needs
// CHAOS_NODES > 1.
func parseFaults(mode string, nodes int, s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return defaultFaults(mode, nodes), nil
	}
	var kinds []string
	for _, k := range strings.Split(s, ",") {
		k = strings.TrimSpace(k)
		switch {
		case k == "":
			continue
		case !slices.Contains(allFaults, k):
			return nil, fmt.Errorf("CHAOS_FAULTS: unknown kind %q (want some of %s)", k, strings.Join(allFaults, ","))
		case mode == "dev" && !slices.Contains(defaultFaults("dev", 1), k):
			return nil, fmt.Errorf("CHAOS_FAULTS: %s is not available with CHAOS_MODE=dev (it has %s)", k, strings.Join(defaultFaults("dev", 1), ","))
		case k == faultNodeKill && nodes < 2:
			return nil, fmt.Errorf("CHAOS_FAULTS: node-kill needs a cluster (CHAOS_NODES=3)")
		case slices.Contains(kinds, k):
			return nil, fmt.Errorf("CHAOS_FAULTS: %s given twice", k)
		}
		kinds = append(kinds, k)
	}
	if len(kinds) == 0 {
		return nil, fmt.Errorf("CHAOS_FAULTS=%q names no kind", s)
	}
	return kinds, nil
}

// schedule is the fault kind of every round: the first len(kinds) rounds
// run each kind once in an order drawn from the seed (so that a short run,
// like CI's, sees every kind), later rounds draw a kind at random.
func schedule(intN func(int) int, kinds []string, rounds int) []string {
	out := make([]string, 0, rounds)
	order := slices.Clone(kinds)
	for i := len(order) - 1; i > 0; i-- { // Fisher–Yates with the run's rng
		j := intN(i + 1)
		order[i], order[j] = order[j], order[i]
	}
	for r := range rounds {
		if r < len(order) {
			out = append(out, order[r])
		} else {
			out = append(out, kinds[intN(len(kinds))])
		}
	}
	return out
}

// stopFor stops process pid (SIGSTOP) for dur, calls beforeCont, then
// continues it. The pid stays in d.frozen until SIGCONT was sent, so that
// shutdown continues it whatever happens in between (a stopped process
// ignores SIGTERM).
func (d *driver) stopFor(ctx context.Context, pid int, dur time.Duration, beforeCont func()) error {
	if pid <= 0 {
		return fmt.Errorf("no process to stop")
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("SIGSTOP %d: %w", pid, err)
	}
	d.frozen[pid] = true
	err := d.sleepSupervised(ctx, dur)
	if err == nil {
		beforeCont()
	}
	d.thaw()
	return err
}

// thaw sends SIGCONT to every process stopped by stopFor.
func (d *driver) thaw() {
	for pid := range d.frozen {
		_ = syscall.Kill(pid, syscall.SIGCONT)
		delete(d.frozen, pid)
	}
}

// brokerPID is the pid of the broker process: ours in run mode, the one
// `sidecar dev` started in dev mode.
func (d *driver) brokerPID() int {
	if d.cfg.mode == "dev" {
		return d.devBrokerPID()
	}
	return d.broker.pid()
}

// stopRound stops the broker (1–7 s: open transactions may expire
// meanwhile) or mariadbd (1–4 s). The sidecar has to ride it out: calls
// wait or fail with a replayable error, and nothing acknowledged may be
// lost. A transaction prepared just before the stop is at most maxOpen old
// then, so it still commits within txnTimeout after the stop.
func (d *driver) stopRound(ctx context.Context, kind string) (string, error) {
	dur := time.Duration(1000+d.rng.IntN(6000)) * time.Millisecond
	if kind == faultDBStop {
		dur = time.Duration(1000+d.rng.IntN(3000)) * time.Millisecond
	}
	what, pid := "broker", d.brokerPID()
	if kind == faultDBStop {
		what, pid = "mariadbd", d.db.Pid()
	}
	// Every checkpoint needs both sinks: while either is stopped none
	// should commit (a few may finish right after the SIGSTOP).
	before, okBefore := d.committed(ctx)
	during := "?"
	if err := d.stopFor(ctx, pid, dur, func() {
		// Within the wait for a stopped sink the sidecar may not answer
		// in a second; "?" then.
		if n, ok := d.committed(ctx); ok && okBefore {
			during = strconv.FormatInt(n-before, 10)
		}
	}); err != nil {
		return "", fmt.Errorf("%s: %w", kind, err)
	}
	return fmt.Sprintf("SIGSTOP %s (pid %d) for %s (%s checkpoints committed meanwhile), then SIGCONT; %s",
		what, pid, dur.Round(time.Millisecond), during, d.recovery(ctx)), nil
}

// recovery waits (at most 30 s) until a checkpoint commits after a fault
// and says how long that took: the run goes on either way, and the checker
// judges the outcome.
func (d *driver) recovery(ctx context.Context) string {
	t0 := time.Now()
	before, ok := d.committed(ctx)
	if !ok {
		before = -1
	}
	// Without new input the apps may rightly have nothing to commit.
	limit := 30 * time.Second
	if !d.generator.running() {
		limit = 5 * time.Second
	}
	err := waitFor(ctx, limit, "a new checkpoint", nil, func() bool {
		d.supervise()
		n, ok := d.committed(ctx)
		return ok && n > before
	})
	if err != nil {
		return fmt.Sprintf("no checkpoint committed within %s after it", time.Since(t0).Round(time.Second))
	}
	return fmt.Sprintf("checkpoints commit again %s later", time.Since(t0).Round(time.Millisecond))
}

// committed is the sum of the writers' last committed checkpoints.
func (d *driver) committed(ctx context.Context) (int64, bool) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	info, err := d.cl.Job(ctx, job)
	if err != nil {
		return 0, false
	}
	var n int64
	for _, w := range info.Writers {
		n += w.LastCommitted
	}
	return n, true
}

// brokerRestartRound stops the broker process cleanly (SIGTERM: kfake
// keeps open transactions in its data dir, as Kafka does) and starts it
// again on the same data dir and address. A broker that does not stop
// cleanly is a problem of the run: killing kfake would corrupt its
// transactions (sinks/kafka/DESIGN.md), which is why this round never does.
func (d *driver) brokerRestartRound(ctx context.Context) (string, error) {
	pause := time.Duration(d.rng.IntN(1000)) * time.Millisecond
	pid := d.broker.pid()
	t0 := time.Now()
	d.broker.signalAndWait(syscall.SIGTERM, 30*time.Second)
	if d.broker.running() {
		d.unexpected = append(d.unexpected, fmt.Sprintf("broker (pid %d) did not stop within 30s of SIGTERM; killed", pid))
		d.broker.kill9()
	}
	stopped := time.Since(t0)
	if err := d.sleepSupervised(ctx, pause); err != nil {
		return "", err
	}
	off := fileSize(d.broker.logPath)
	if err := d.broker.start(); err != nil {
		return "", err
	}
	if err := waitFor(ctx, 30*time.Second, "broker", d.broker, func() bool {
		return strings.Contains(readFrom(d.broker.logPath, off), "listening ")
	}); err != nil {
		return "", err
	}
	return fmt.Sprintf("SIGTERM broker (pid %d, stopped in %s), restarted after %s; %s",
		pid, stopped.Round(time.Millisecond), pause, d.recovery(ctx)), nil
}

// slowRound makes one app pause between sending a checkpoint's records and
// checkpointing for longer than the sidecar lets a Kafka transaction stay
// open (maxOpen). The sidecar must then refuse that checkpoint with the
// replayable 502 sink_failure, and the app must reopen and replay; a
// checkpoint that commits after such a pause is a problem of the run (an
// aged transaction was journaled).
func (d *driver) slowRound(ctx context.Context, app int) (string, error) {
	pause := maxOpen + time.Duration(1500+d.rng.IntN(1500))*time.Millisecond
	p := d.apps[app]
	if !p.running() {
		if err := p.start(); err != nil {
			return "", err
		}
	}
	off := fileSize(p.logPath)
	trigger := d.pauseFile(app)
	if err := writeAtomic(trigger, pause.String()); err != nil {
		return "", err
	}
	// The app consumes the trigger at its next checkpoint that has records;
	// input arrives at CHAOS_RATE, so that is within a second or two.
	var outcome, resumed string
	err := waitFor(ctx, pause+30*time.Second, p.name+" (slow checkpoint)", nil, func() bool {
		d.supervise()
		outcome, resumed = slowOutcome(readFrom(p.logPath, off))
		return outcome != "" && (resumed != "" || accepted(outcome))
	})
	_ = os.Remove(trigger) // unused if the wait failed: not to fire later
	if err != nil {
		if d.generator.running() {
			d.unexpected = append(d.unexpected, fmt.Sprintf("slow round: %v; log tail:\n%s", err, tailFile(p.logPath, 15)))
		}
		return fmt.Sprintf("%s asked to pause %s before a checkpoint: no checkpoint came (generating: %v; %v)",
			p.name, pause.Round(time.Millisecond), d.generator.running(), err), nil
	}
	if accepted(outcome) {
		// The sidecar journaled a transaction open longer than it allows:
		// the broker may abort it before its commit.
		d.unexpected = append(d.unexpected, fmt.Sprintf("%s paused %s (> %s open) before a checkpoint, and the checkpoint was accepted (%s); want 502 sink_failure",
			p.name, pause.Round(time.Millisecond), maxOpen, outcome))
		return fmt.Sprintf("%s paused %s between records and checkpoint: %s (WRONG)", p.name, pause.Round(time.Millisecond), outcome), nil
	}
	// Any refusal is right; the expected one names the expiry.
	answer := outcome
	if strings.Contains(outcome, "502 sink_failure") && strings.Contains(outcome, "transaction expired") {
		answer = "502 sink_failure, transaction expired"
	} else if len(answer) > 100 {
		answer = answer[:100] + "…"
	}
	return fmt.Sprintf("%s paused %s between records and checkpoint (> %s open): %s; %s",
		p.name, pause.Round(time.Millisecond), maxOpen, answer, resumed), nil
}

// accepted reports whether the outcome the app logged after its pause is
// an answer (committed or committing) rather than a refusal.
func accepted(outcome string) bool { return strings.HasPrefix(outcome, "status ") }

// slowOutcome finds, in an app's log written after a slow round began,
// the outcome of the checkpoint after the pause and the session that the
// app reopened to replay (each "" until logged).
func slowOutcome(log string) (outcome, resumed string) {
	for _, line := range strings.Split(log, "\n") {
		if outcome == "" {
			if _, after, ok := strings.Cut(line, "after the pause: "); ok {
				outcome = after
			}
			continue
		}
		if _, after, ok := strings.Cut(line, ": session epoch "); ok {
			if i := strings.Index(after, "resuming after checkpoint "); i >= 0 {
				rest := after[i+len("resuming after checkpoint "):]
				if j := strings.IndexByte(rest, ' '); j >= 0 {
					rest = rest[:j]
				}
				return outcome, "reopened, replaying after checkpoint " + rest
			}
		}
	}
	return outcome, ""
}

// pauseFile is the --pause-file of app i.
func (d *driver) pauseFile(i int) string { return filepath.Join(d.dir, fmt.Sprintf("pause-app-%d", i)) }

// writeAtomic writes a file so that a reader never sees part of it.
func writeAtomic(path, content string) error {
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// fileSize is the size of a file (0 if missing).
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readFrom returns a file's content from offset off on ("" if unreadable).
func readFrom(path string, off int64) string {
	b := readFile(path)
	if off > int64(len(b)) {
		return ""
	}
	return b[off:]
}
