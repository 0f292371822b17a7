package systemtest

// The application the cluster tests play, and the exactly-once check.
//
// An app is one writer of a job whose input is the numbers 0, 1, 2, …: each
// round it writes the next batch of numbers to Kafka (sink events) and to
// MySQL (sink db, table t) and checkpoints with the position after the
// batch as state. It follows the README's contract: on any error it
// reopens the session (on the node it is told to use) and resumes from the
// state the open returns, replaying what was not committed. In external
// mode it plays its own coordinator: a checkpoint answered "prepared" is
// complete for it (it restores it on reopen), and it then asks the job to
// commit it.
//
// The check reads what landed with independent readers (franz-go and kcat
// read_committed, plain SQL) and compares with what the journal says each
// writer committed: the state of its last committed checkpoint.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/twopc"
)

// app is one writer of the test's job.
type app struct {
	t      *testing.T
	job    string
	mode   twopc.Mode
	writer string
	batch  int

	mu     sync.Mutex
	target *cnode // the node the app talks to
	move   bool   // reopen on target before the next call
	// nodeCtx ends when the app leaves its node (moveTo): a call hanging
	// on an unreachable node is given up, as a real app would.
	nodeCtx   context.Context
	leaveNode context.CancelFunc
	opens     []openRec

	// owned by the run goroutine (read after it ended)
	epoch uint64
	pos   int   // next input number
	cp    int64 // highest checkpoint number used
	acked int64 // external: highest checkpoint answered prepared

	ok      atomic.Int64 // checkpoints answered committed/committing/prepared
	call    atomic.Value // callRec: the call in progress, for a stuck app's report
	reopens atomic.Int64
	errMu   sync.Mutex
	errs    map[string]int
	lastErr map[string]string // kind → the last error of that kind
	fatal   error             // data loss or an answer that breaks the contract

	stop chan struct{}
	done chan struct{}
}

// callRec names a call in progress.
type callRec struct {
	what  string
	since time.Time
}

// calling notes the call about to start and returns a func that clears it.
func (a *app) calling(what string, n *cnode) func() {
	a.call.Store(callRec{what: what + " on " + n.id, since: time.Now()})
	return func() { a.call.Store(callRec{}) }
}

// inCall describes the call in progress ("" when none).
func (a *app) inCall() string {
	select {
	case <-a.done:
		return fmt.Sprintf("the app ended: %v", a.fatal)
	default:
	}
	r, _ := a.call.Load().(callRec)
	if r.what == "" {
		return "no call in progress"
	}
	return fmt.Sprintf("in %s for %v", r.what, time.Since(r.since).Round(time.Millisecond))
}

// openRec is one successful session open: where, and what it restored.
type openRec struct {
	node       string
	epoch      uint64
	checkpoint int64
	pos        int
	at         time.Time
}

func newApp(t *testing.T, job string, mode twopc.Mode, writer string, on *cnode) *app {
	a := &app{t: t, job: job, mode: mode, writer: writer, batch: 5, target: on, errs: map[string]int{}, lastErr: map[string]string{},
		stop: make(chan struct{}), done: make(chan struct{})}
	a.nodeCtx, a.leaveNode = context.WithCancel(context.Background())
	return a
}

// callCtx bounds one call: 10 s, and no longer than the app stays on its node.
func (a *app) callCtx() (context.Context, context.CancelFunc) {
	a.mu.Lock()
	base := a.nodeCtx
	a.mu.Unlock()
	return context.WithTimeout(base, 10*time.Second)
}

// openLog returns the session opens so far.
func (a *app) openLog() []openRec {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.opens)
}

// firstOpenOn returns the app's first session open on n, failing the test
// if there was none.
func (a *app) firstOpenOn(n *cnode) openRec {
	a.t.Helper()
	for _, o := range a.openLog() {
		if o.node == n.id {
			return o
		}
	}
	a.t.Fatalf("no session open of writer %s on %s recorded", a.writer, n.id)
	return openRec{}
}

// value is the record of input number i.
func (a *app) value(i int) string { return fmt.Sprintf("%s/%s/%06d", a.job, a.writer, i) }

// node is the node the app talks to now.
func (a *app) node() *cnode {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.target
}

// moveTo makes the app reopen its session on n (as an app does when its
// node is unreachable); the open moves the writer there.
func (a *app) moveTo(n *cnode) {
	a.mu.Lock()
	a.target, a.move = n, true
	a.leaveNode()
	a.nodeCtx, a.leaveNode = context.WithCancel(context.Background())
	a.mu.Unlock()
}

// start runs the app until halt; every step is bounded, and the app gives
// up after 2 minutes.
func (a *app) start() {
	go func() {
		defer close(a.done)
		a.run()
	}()
}

// halt stops the app after its current step and waits for it (bounded).
func (a *app) halt() {
	a.t.Helper()
	close(a.stop)
	select {
	case <-a.done:
	case <-time.After(30 * time.Second):
		a.t.Fatalf("app %s did not stop within 30s", a.writer)
	}
	if a.fatal != nil {
		a.t.Errorf("app %s: %v", a.writer, a.fatal)
	}
}

// note counts an error by its kind.
func (a *app) note(err error) {
	k := client.Code(err)
	var ne net.Error
	switch {
	case k != "":
	case errors.Is(err, context.Canceled):
		k = "canceled" // the app left the node (moveTo)
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
		k = "timeout"
	default:
		k = "conn"
	}
	a.errMu.Lock()
	a.errs[k]++
	a.lastErr[k] = err.Error()
	a.errMu.Unlock()
}

// lastErrors lists the last error of each kind.
func (a *app) lastErrors() string {
	a.errMu.Lock()
	defer a.errMu.Unlock()
	var out []string
	for _, k := range slices.Sorted(maps.Keys(a.lastErr)) {
		out = append(out, k+": "+a.lastErr[k])
	}
	return strings.Join(out, "; ")
}

// errSummary lists the errors seen, e.g. "session_fenced 2, conn 5".
func (a *app) errSummary() string {
	a.errMu.Lock()
	defer a.errMu.Unlock()
	ks := slices.Sorted(maps.Keys(a.errs))
	var out []string
	for _, k := range ks {
		out = append(out, fmt.Sprintf("%s %d", k, a.errs[k]))
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

func (a *app) stopped() bool {
	select {
	case <-a.stop:
		return true
	default:
		return false
	}
}

func (a *app) run() {
	hard := time.Now().Add(2 * time.Minute)
	needOpen := true
	for !a.stopped() {
		if time.Now().After(hard) {
			a.fatal = errors.New("still running after 2 minutes")
			return
		}
		a.mu.Lock()
		if a.move {
			a.move, needOpen = false, true
		}
		a.mu.Unlock()
		if needOpen {
			if err := a.open(a.node()); err != nil {
				a.note(err)
				if a.fatal != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
				continue
			}
			needOpen = false
		}
		if err := a.step(a.node()); err != nil {
			a.note(err)
			if a.fatal != nil {
				return
			}
			needOpen = true
			time.Sleep(20 * time.Millisecond)
			continue
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// open opens the session on n and resumes from the state it returns.
func (a *app) open(n *cnode) error {
	ctx, cancel := a.callCtx()
	defer cancel()
	var restore *int64
	if a.mode == twopc.ModeExternal {
		r := a.acked
		restore = &r
	}
	end := a.calling("session open", n)
	s, err := n.api.OpenSession(ctx, a.job, a.writer, restore)
	end()
	if err != nil {
		if errors.Is(err, twopc.ErrDataLoss) {
			a.fatal = fmt.Errorf("session open reports data loss: %v", err)
		}
		return err
	}
	if len(s.DataLoss) > 0 {
		a.fatal = fmt.Errorf("session open reports data loss %v", s.DataLoss)
		return a.fatal
	}
	pos := 0
	if len(s.State) > 0 {
		if pos, err = strconv.Atoi(string(s.State)); err != nil {
			a.fatal = fmt.Errorf("restored state %q is not a position", s.State)
			return a.fatal
		}
	}
	a.epoch, a.pos = s.Epoch, pos
	a.cp = max(a.cp, s.Checkpoint)
	a.reopens.Add(1)
	a.mu.Lock()
	a.opens = append(a.opens, openRec{node: n.id, epoch: s.Epoch, checkpoint: s.Checkpoint, pos: pos, at: time.Now()})
	a.mu.Unlock()
	return nil
}

// records are the Kafka and MySQL records of input numbers [from, to).
func (a *app) records(from, to int) []*twopc.Record {
	var out []*twopc.Record
	for i := from; i < to; i++ {
		v := a.value(i)
		q, _ := json.Marshal(v)
		w, _ := json.Marshal(a.writer)
		out = append(out,
			&twopc.Record{Sink: "events", Key: w, Value: q},
			&twopc.Record{Sink: "db", Stmt: "ins", Args: []json.RawMessage{w, q}})
	}
	return out
}

// step writes one batch and checkpoints it (and, external, commits it).
func (a *app) step(n *cnode) error {
	ctx, cancel := a.callCtx()
	defer cancel()
	end := a.calling("write", n)
	_, err := n.api.Write(ctx, a.job, a.writer, a.epoch, nil, a.records(a.pos, a.pos+a.batch))
	end()
	if err != nil {
		return err
	}
	a.cp++
	next := a.cp
	wait := twopc.WaitCommitted
	if a.mode == twopc.ModeExternal {
		wait = twopc.WaitPrepared
	}
	end = a.calling(fmt.Sprintf("checkpoint %d", next), n)
	r, err := n.api.Checkpoint(ctx, a.job, a.writer, a.epoch, next, []byte(strconv.Itoa(a.pos+a.batch)), wait)
	end()
	if err != nil {
		if errors.Is(err, twopc.ErrDataLoss) {
			a.fatal = fmt.Errorf("checkpoint %d: %v", next, err)
		}
		return err
	}
	switch r.Status {
	case twopc.StatusCommitted, twopc.StatusCommitting, twopc.StatusPrepared:
	default:
		a.fatal = fmt.Errorf("checkpoint %d on %s answered status %q: %+v", next, n.id, r.Status, r)
		return a.fatal
	}
	a.pos += a.batch
	a.ok.Add(1)
	if a.mode == twopc.ModeExternal {
		a.acked = next
		end = a.calling(fmt.Sprintf("commit %d", next), n)
		_, err := n.api.Commit(ctx, a.job, next)
		end()
		if err != nil {
			a.note(err) // the next commit, or the restore on reopen, covers it
		}
	}
	return nil
}

// finalState opens the writer's session once more (on n) after the app
// stopped and returns its restored checkpoint and position: what the
// journal says was committed. External mode restores what the app
// acknowledged, which commits it.
func (a *app) finalState(n *cnode) (int64, int) {
	a.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := a.open(n)
		if err == nil {
			return a.cp, a.pos
		}
		if a.fatal != nil || time.Now().After(deadline) {
			a.t.Fatalf("final session open of writer %s on %s: %v", a.writer, n.id, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// progress waits until every app answered at least k more checkpoints,
// bounded by within; it returns how long that took.
func progress(t *testing.T, apps []*app, k int64, within time.Duration, what string) time.Duration {
	t.Helper()
	t0 := time.Now()
	base := make([]int64, len(apps))
	for i, a := range apps {
		base[i] = a.ok.Load()
	}
	for {
		done := true
		for i, a := range apps {
			if a.ok.Load() < base[i]+k {
				done = false
			}
		}
		if done {
			return time.Since(t0)
		}
		if time.Now().After(t0.Add(within)) {
			var st []string
			for i, a := range apps {
				st = append(st, fmt.Sprintf("%s: +%d (errors: %s; %s; last errors: %s)", a.writer, a.ok.Load()-base[i],
					a.errSummary(), a.inCall(), a.lastErrors()))
			}
			t.Fatalf("%s: writers did not make %d more checkpoints within %v: %s\napp goroutines:\n%s",
				what, k, within, strings.Join(st, "; "), appStacks())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkExactlyOnce stops nothing: the apps must be halted. It reads each
// writer's committed position from a final session open on via, waits
// until the job has no unresolved checkpoint, and checks Kafka
// (read_committed, franz-go and kcat) and MySQL hold every record of every
// committed position once and nothing else, and XA RECOVER has no branch
// of the job.
func (c *tcluster) checkExactlyOnce(via *cnode, apps ...*app) {
	c.t.Helper()
	c.checkDelivered(via, false, apps...)
}

// checkAtLeastOnce is checkExactlyOnce for an at_least_once job: every
// committed value must be there and nothing else, but a value may be there
// more than once (a replay after a kill); it returns the duplicates in
// Kafka and in MySQL.
func (c *tcluster) checkAtLeastOnce(via *cnode, apps ...*app) (kafkaDups, mysqlDups int) {
	c.t.Helper()
	return c.checkDelivered(via, true, apps...)
}

// checkDelivered checks Kafka (franz-go and kcat) and MySQL against what
// the journal says the apps committed: exactly once, or with dupsOK at
// least once. It returns the duplicates counted in Kafka and MySQL.
func (c *tcluster) checkDelivered(via *cnode, dupsOK bool, apps ...*app) (kafkaDups, mysqlDups int) {
	t := c.t
	t.Helper()
	// ok: got is want, or with dupsOK holds every wanted value and nothing
	// else.
	var want []string
	for _, a := range apps {
		cp, pos := a.finalState(via)
		for i := range pos {
			want = append(want, a.value(i))
		}
		t.Logf("writer %s: committed checkpoint %d, position %d; %d checkpoints answered ok, %d session opens; errors: %s",
			a.writer, cp, pos, a.ok.Load(), a.reopens.Load(), a.errSummary())
	}
	sort.Strings(want)
	// ok: got is want, or with dupsOK holds every wanted value and nothing
	// else.
	ok := func(got []string) bool {
		if !dupsOK {
			return slices.Equal(got, want)
		}
		missing, _, extra := compareOnce(want, got)
		return missing == 0 && extra == 0
	}
	c.waitNoUnresolved(via, 20*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	var got []string
	for _, r := range kafkatest.ReadCommittedWith(ctx, t, c.broker, clusterTopic, len(want),
		kafkatest.ReadOptions{Timeout: 20 * time.Second, Linger: 500 * time.Millisecond}) {
		got = append(got, string(r.Value))
	}
	sort.Strings(got)
	missing, dup, extra := compareOnce(want, got)
	t.Logf("kafka read_committed (franz-go): %d records, want %d: %d missing, %d duplicated, %d not committed by the journal",
		len(got), len(want), missing, dup, extra)
	if !ok(got) {
		t.Errorf("kafka read_committed: %s", diffOnce(want, got))
	}
	kafkaDups = dup
	if kv := kcatTopicValues(t, c.broker, clusterTopic); kv != nil {
		sort.Strings(kv)
		if !slices.Equal(kv, got) {
			t.Errorf("kafka read_committed (kcat): %s; franz-go read %d records", diffOnce(want, kv), len(got))
		} else {
			t.Logf("kafka read_committed (kcat): the same %d records", len(kv))
		}
	}
	rows, err := c.db.rowsOf()
	if err != nil {
		t.Fatalf("read table t: %v", err)
	}
	missing, dup, extra = compareOnce(want, rows)
	t.Logf("mysql t: %d rows, want %d: %d missing, %d duplicated, %d not committed by the journal", len(rows), len(want), missing, dup, extra)
	if !ok(rows) {
		t.Errorf("mysql t: %s", diffOnce(want, rows))
	}
	c.waitNoXA(10 * time.Second)
	return kafkaDups, dup
}

// waitNoUnresolved waits until GET /v1/jobs/{job}/checkpoints on n lists
// no checkpoint that is not finished (open, prepared, committing,
// aborting), failing with the list after within.
func (c *tcluster) waitNoUnresolved(n *cnode, within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		cps, err := n.api.Checkpoints(ctx, c.db.job)
		cancel()
		var left []string
		for _, cp := range cps {
			switch cp.Status {
			case twopc.StatusCommitted, twopc.StatusAborted:
			default:
				left = append(left, fmt.Sprintf("%s@%d:%s", cp.Writer, cp.Checkpoint, cp.Status))
			}
		}
		if err == nil && len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("job %s still has unresolved checkpoints after %v (err %v): %v", c.db.job, within, err, left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitNoXA waits until XA RECOVER lists no branch of the job.
func (c *tcluster) waitNoXA(within time.Duration) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within+5*time.Second)
	defer cancel()
	conn, err := c.db.db.Conn(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	defer conn.Close()
	deadline := time.Now().Add(within)
	for {
		xs, err := c.db.ours(ctx, conn)
		if err == nil && len(xs) == 0 {
			c.t.Logf("XA RECOVER: 0 branches of job %s", c.db.job)
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("XA RECOVER still lists %d branches of job %s after %v (err %v)", len(xs), c.db.job, within, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// onceDiff is how got differs from want: the wanted values missing, the
// extra copies of wanted values ("v×k"), and the values never wanted.
type onceDiff struct{ miss, dups, extra []string }

func diffValues(want, got []string) onceDiff {
	w := map[string]bool{}
	for _, v := range want {
		w[v] = true
	}
	seen := map[string]int{}
	for _, v := range got {
		seen[v]++
	}
	var d onceDiff
	for _, v := range want {
		if seen[v] == 0 {
			d.miss = append(d.miss, v)
		}
	}
	for _, v := range slices.Sorted(maps.Keys(seen)) {
		if !w[v] {
			for range seen[v] {
				d.extra = append(d.extra, v)
			}
		} else if seen[v] > 1 {
			for range seen[v] - 1 {
				d.dups = append(d.dups, fmt.Sprintf("%s×%d", v, seen[v]))
			}
		}
	}
	return d
}

// compareOnce counts the wanted values missing from got, the extra copies
// of wanted values, and the values not wanted at all.
func compareOnce(want, got []string) (missing, dup, extra int) {
	d := diffValues(want, got)
	return len(d.miss), len(d.dups), len(d.extra)
}

// diffOnce describes how got differs from want.
func diffOnce(want, got []string) string {
	d := diffValues(want, got)
	return fmt.Sprintf("got %d, want %d: missing %d %s, duplicated %d %s, never committed %d %s",
		len(got), len(want), len(d.miss), abbrev(d.miss), len(d.dups), abbrev(slices.Compact(d.dups)),
		len(d.extra), abbrev(slices.Compact(d.extra)))
}

// appStacks returns the stacks of this process's goroutines that run an
// app, to show where a stuck writer waits.
func appStacks() string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "systemtest.(*app).run") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}
