package systemtest

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/internal/mysqltest"
	"github.com/txsink/txsink/twopc"
)

// usage is the sidecar process's resources as its /metrics reports them.
type usage struct{ goroutines, fds, rssMiB, heapMiB, sessions, slotClients float64 }

func (u usage) String() string {
	return fmt.Sprintf("goroutines %.0f, fds %.0f, rss %.1f MiB, heap in use %.1f MiB, sessions %.0f, kafka slot clients %.0f",
		u.goroutines, u.fds, u.rssMiB, u.heapMiB, u.sessions, u.slotClients)
}

func scrape(t *testing.T, n *node) usage {
	t.Helper()
	resp, err := http.Get("http://" + n.httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var u usage
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			continue
		}
		switch name {
		case "go_goroutines":
			u.goroutines = v
		case "process_open_fds":
			u.fds = v
		case "process_resident_memory_bytes":
			u.rssMiB = v / (1 << 20)
		case "go_memstats_heap_inuse_bytes":
			u.heapMiB = v / (1 << 20)
		case "txsink_sessions":
			u.sessions = v
		case `txsink_kafka_slot_clients{sink="events"}`:
			u.slotClients = v
		}
	}
	if u.goroutines == 0 || u.fds == 0 {
		t.Fatalf("/metrics has no go_goroutines or process_open_fds")
	}
	return u
}

// liveHeapMiB asks the sidecar's pprof listener for a heap profile after a
// GC and returns its HeapAlloc.
func liveHeapMiB(t *testing.T, pprofAddr string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + pprofAddr + "/debug/pprof/heap?gc=1&debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "# HeapAlloc = "); ok {
			b, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return b / (1 << 20)
		}
	}
	t.Fatalf("no HeapAlloc in the heap profile (%v)", sc.Err())
	return 0
}

// forEachWriter runs f for writers w0..w<n-1>, 20 at a time.
func forEachWriter(t *testing.T, n int, f func(w string) error) {
	t.Helper()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 20)
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			w := fmt.Sprintf("w%d", i)
			if err := f(w); err != nil {
				errs <- fmt.Errorf("%s: %w", w, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestResourcesBoundedByConfig is the hostile tester's run scaled down: the
// sidecar as a process against a broker process, 200 writers that write and
// checkpoint and then idle. Goroutines and fds return to the baseline once
// the slot clients were idle for idle_client_timeout (and the idle sessions
// are forgotten: session_lost). Then 200 writers leave open transactions and
// the sidecar is killed: the restart listens without fencing them first, and
// fences all of them in the background.
func TestResourcesBoundedByConfig(t *testing.T) {
	const writers = 200
	broker := startBroker(t)
	n := newNode(t, kafkaSinkYAML(broker)+"    idle_client_timeout: 500ms\nlimits:\n  session_idle_timeout: 2s\n")
	pprof := freeAddr(t)
	c := n.start("TXSINK_PPROF_ADDR=" + pprof)
	ctx := context.Background()
	if _, err := c.PutJob(ctx, "j", twopc.ModeAuto, nil); err != nil {
		t.Fatal(err)
	}
	base := scrape(t, n)
	baseHeap := liveHeapMiB(t, pprof)
	epochs := sync.Map{}
	forEachWriter(t, writers, func(w string) error {
		s, err := c.OpenSession(ctx, "j", w, nil)
		if err != nil {
			return err
		}
		epochs.Store(w, s.Epoch)
		if _, err := c.Write(ctx, "j", w, s.Epoch, nil, records([]string{w})); err != nil {
			return err
		}
		_, err = c.Checkpoint(ctx, "j", w, s.Epoch, 1, nil, "")
		return err
	})
	peak := scrape(t, n)
	var after usage
	deadline := time.Now().Add(30 * time.Second)
	for {
		after = scrape(t, n)
		if after.goroutines <= base.goroutines+30 && after.fds <= base.fds+30 && after.slotClients == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after idling: %v; want goroutines and fds within 30 of the baseline %v (peak %v)", after, base, peak)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// What stays above the baseline is mostly the test client's idle
	// keep-alive connections (20 at a time), which the server closes after
	// its IdleTimeout.
	t.Logf("%d writers (kafka, separate broker): baseline %v; after checkpoints %v; idle %v", writers, base, peak, after)
	idleHeap := liveHeapMiB(t, pprof)
	idleSince := time.Now()
	// The idle sessions are forgotten too (no probe before: a call would
	// keep a session alive).
	deadline = time.Now().Add(30 * time.Second)
	for forgotten(n) < writers {
		if time.Now().After(deadline) {
			t.Fatalf("idle sessions forgotten: got %d, want %d", forgotten(n), writers)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if u := scrape(t, n); u.sessions != 0 {
		t.Fatalf("txsink_sessions after every session was forgotten: got %.0f, want 0", u.sessions)
	}
	// The live heap (after a GC) does not keep growing while the writers
	// idle: no client, telemetry push or session is left per writer.
	laterHeap := liveHeapMiB(t, pprof)
	t.Logf("live heap after GC: baseline %.1f MiB, clients closed %.1f MiB, sessions forgotten %v later %.1f MiB",
		baseHeap, idleHeap, time.Since(idleSince).Round(100*time.Millisecond), laterHeap)
	if laterHeap > idleHeap+1 {
		t.Fatalf("live heap grew while idle: %.1f → %.1f MiB", idleHeap, laterHeap)
	}
	ep, _ := epochs.Load("w0")
	if _, err := c.Write(ctx, "j", "w0", ep.(uint64), nil, records([]string{"late"})); client.Code(err) != "session_lost" {
		t.Fatalf("write of a session idle past session_idle_timeout: got %v, want session_lost", err)
	}

	// Open transactions of every writer, then kill -9.
	forEachWriter(t, writers, func(w string) error {
		s, err := c.OpenSession(ctx, "j", w, nil)
		if err != nil {
			return err
		}
		_, err = c.Write(ctx, "j", w, s.Epoch, nil, records([]string{"lost-" + w}))
		return err
	})
	n.kill()
	t0 := time.Now()
	c = n.start()
	ready := time.Since(t0)
	waitLog(t, n, `msg="writers left by the previous process fenced"`, fmt.Sprintf("writers=%d", writers))
	t.Logf("restart with %d writers holding open transactions: ready after %v; all fenced after %v", writers, ready.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	// No open transaction is left to hold the LSO: a new checkpoint's
	// record is readable right after the 200 committed ones.
	s, err := c.OpenSession(ctx, "j", "w1", nil)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, c, "j", "w1", s.Epoch, []string{"after"})
	if _, err := c.Checkpoint(ctx, "j", "w1", s.Epoch, 2, nil, ""); err != nil {
		t.Fatal(err)
	}
	want := []string{"after"}
	for i := range writers {
		want = append(want, fmt.Sprintf("w%d", i))
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var got []string
	for _, r := range kafkatest.ReadCommitted(rctx, t, broker, topic, len(want)) {
		got = append(got, string(r.Value))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("read_committed: got %d records %v, want %d: %v", len(got), abbrev(got), len(want), abbrev(want))
	}
}

// forgotten sums the sessions the sidecar logged as forgotten.
func forgotten(n *node) int {
	sum := 0
	for _, l := range strings.Split(n.logs.String(), "\n") {
		if !strings.Contains(l, `msg="forgot idle sessions"`) {
			continue
		}
		_, rest, _ := strings.Cut(l, " sessions=")
		v, _, _ := strings.Cut(rest, " ")
		k, _ := strconv.Atoi(v)
		sum += k
	}
	return sum
}

// waitLog waits up to 30 s for a line of the sidecar's log that contains
// every one of parts.
func waitLog(t *testing.T, n *node, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, l := range strings.Split(n.logs.String(), "\n") {
			if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(l, p) }) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("log line with %q not seen within 30s:\n%s", parts, tail(n.logs, 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// threadsConnected counts the server's connections to this test's
// database (the server is shared with other tests and packages).
func (m *mdb) threadsConnected() int {
	m.t.Helper()
	var n int
	if err := m.db.QueryRow("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE()").Scan(&n); err != nil {
		m.t.Fatal(err)
	}
	return n
}

// TestMySQLConnectionsCapped: 200 writers each hold an open branch in a
// MySQL sink with the default max_conns (64). 64 get a connection; the
// others answer 429 backpressure naming max_conns instead of a server
// error, the server's connections stay below max_connections (an
// administrator still connects), and after the first 64 checkpoint, the
// refused writers write on the same sessions and commit too.
func TestMySQLConnectionsCapped(t *testing.T) {
	const writers, maxConns, reserved = 200, 64, 4
	m := newMDB(t, mysqltest.DSN(t), tableT)
	m.db.SetMaxOpenConns(1)
	n := newNode(t, m.sinkYAML("db", 0, insStmts)+"    conn_wait: 200ms\n")
	c := n.start()
	ctx := tctx(t)
	if _, err := c.PutJob(ctx, m.job, twopc.ModeAuto, nil); err != nil {
		t.Fatal(err)
	}
	serverBase := m.threadsConnected()
	base := scrape(t, n)
	var mu sync.Mutex
	held := map[string]uint64{}
	refused := map[string]uint64{}
	forEachWriter(t, writers, func(w string) error {
		s, err := c.OpenSession(ctx, m.job, w, nil)
		if err != nil {
			return err
		}
		_, err = c.Write(ctx, m.job, w, s.Epoch, nil, insRecords("db", []string{w}))
		mu.Lock()
		defer mu.Unlock()
		var e *client.Error
		switch {
		case err == nil:
			held[w] = s.Epoch
		case errors.As(err, &e) && e.Status == 429 && e.Code == "backpressure" && strings.Contains(e.Detail, "max_conns"):
			refused[w] = s.Epoch
		default:
			return err
		}
		return nil
	})
	serverPeak := m.threadsConnected()
	peak := scrape(t, n)
	t.Logf("%d MySQL writers, max_conns %d: %d hold a branch, %d answered 429; server connections %d → %d; sidecar %v → %v",
		writers, maxConns, len(held), len(refused), serverBase, serverPeak, base, peak)
	if len(held) != maxConns || len(refused) != writers-maxConns {
		t.Fatalf("got %d writes through and %d refused, want %d and %d", len(held), len(refused), maxConns, writers-maxConns)
	}
	if grew := serverPeak - serverBase; grew > maxConns+reserved {
		t.Fatalf("server connections grew by %d, want at most max_conns+reserved_conns = %d", grew, maxConns+reserved)
	}
	admin, err := sql.Open("mysql", m.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.PingContext(ctx); err != nil {
		t.Fatalf("an administrator cannot connect while every branch connection is pinned: %v", err)
	}
	for w, ep := range held {
		if _, err := c.Checkpoint(ctx, m.job, w, ep, 1, nil, ""); err != nil {
			t.Fatalf("checkpoint %s: %v", w, err)
		}
	}
	forEachWriter(t, writers, func(w string) error {
		ep, ok := refused[w]
		if !ok {
			return nil
		}
		if _, err := c.Write(ctx, m.job, w, ep, nil, insRecords("db", []string{w})); err != nil {
			return fmt.Errorf("write after backpressure on the same session: %w", err)
		}
		_, err := c.Checkpoint(ctx, m.job, w, ep, 1, nil, "")
		return err
	})
	var want []string
	for i := range writers {
		want = append(want, fmt.Sprintf("w%d", i))
	}
	slices.Sort(want)
	m.wantRows(want)
}
