package systemtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/internal/testenv"
	"github.com/txsink/txsink/sinks/kafka"
	"github.com/txsink/txsink/twopc"
)

const uiToken = "ui-s3cret-token"

// TestUIStatusPage drives the status page (issue 13) in headless Chromium
// against a real sidecar with a token, a Kafka broker process, an
// external-mode job with a prepared checkpoint (in doubt), one whose
// prepared checkpoint outlived its Kafka transaction timeout, and a job
// whose checkpoint was committed after the broker had aborted its
// transaction (data loss). It checks what a person sees: the token prompt after the
// first 401, a refused token, the leader, the job and its writer, both
// checkpoints highlighted with text, the age against the transaction
// timeout, the page refreshing by itself, forgetting the token, and the
// banner once the sidecar is gone. Screenshots go to t.ArtifactDir() (kept
// with go test -artifacts).
func TestUIStatusPage(t *testing.T) {
	chromium := findChromium(t)
	b := kafkatest.StartBrokerWith(t, t.TempDir(), kafkatest.BrokerOptions{Topics: []string{topic},
		TransactionMaxTimeout: 2 * time.Minute})
	// Two Kafka sinks on one broker: "events" with a timeout the test never
	// reaches (its prepared checkpoint stays honestly in doubt), "fast"
	// with 3 s, the least Kafka allows for a transaction to be aborted
	// quickly under a prepared checkpoint.
	sinks := fmt.Sprintf("  events:\n    kind: kafka\n    brokers: [%q]\n    default_topic: %s\n    topics: [\"*\"]\n    transaction_timeout: 60s\n"+
		"  fast:\n    kind: kafka\n    brokers: [%q]\n    default_topic: %s\n    topics: [\"*\"]\n    transaction_timeout: 3s\n",
		b.Addr, topic, b.Addr, topic)
	n := newNode(t, sinks)
	tokenFile := filepath.Join(n.dir, "token")
	if err := os.WriteFile(tokenFile, []byte(uiToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n.appendConfig("token_file: " + tokenFile + "\n")
	n.start()
	c := client.New("http://"+n.httpAddr, client.WithToken(uiToken))
	ctx := tctx(t)
	if _, err := client.New("http://" + n.httpAddr).Jobs(ctx); client.Code(err) != "unauthorized" {
		t.Fatalf("GET /v1/jobs without the token: got %v, want 401 unauthorized", err)
	}
	st, err := c.Cluster(ctx)
	if err != nil || st.Leader == "" {
		t.Fatalf("cluster: %+v %v, want a leader", st, err)
	}
	leader := st.Leader

	// In doubt: prepared, no decision from the application.
	orders := openUIJob(t, c, "orders", "events", "w1")
	writeTo(t, c, "orders", "w1", orders.Epoch, "events", 5)
	if r, err := c.Checkpoint(ctx, "orders", "w1", orders.Epoch, 1, []byte("o=5"), twopc.WaitPrepared); err != nil || r.Status != twopc.StatusPrepared {
		t.Fatalf("orders checkpoint 1: %+v %v, want prepared", r, err)
	}
	// Data loss: prepared, the broker aborts the transaction at its
	// timeout, then the application commits.
	clicks := openUIJob(t, c, "clicks", "fast", "w0")
	writeTo(t, c, "clicks", "w0", clicks.Epoch, "fast", 5)
	if r, err := c.Checkpoint(ctx, "clicks", "w0", clicks.Epoch, 1, []byte("c=5"), twopc.WaitPrepared); err != nil || r.Status != twopc.StatusPrepared {
		t.Fatalf("clicks checkpoint 1: %+v %v, want prepared", r, err)
	}
	// In doubt past the timeout: prepared on "fast" and never decided; the
	// broker aborts it too, so committing it now would lose data.
	late := openUIJob(t, c, "late", "fast", "w2")
	writeTo(t, c, "late", "w2", late.Epoch, "fast", 3)
	if r, err := c.Checkpoint(ctx, "late", "w2", late.Epoch, 1, []byte("l=3"), twopc.WaitPrepared); err != nil || r.Status != twopc.StatusPrepared {
		t.Fatalf("late checkpoint 1: %+v %v, want prepared", r, err)
	}
	waitTxnEnded(t, b.Addr, kafka.TransactionalID(kafka.DefaultTransactionalIDPrefix, "clicks", "w0", 0))
	if _, err := c.Commit(ctx, "clicks", 1); client.Code(err) != "data_loss" {
		t.Fatalf("commit of clicks 1 after the broker aborted it: got %v, want 502 data_loss", err)
	}
	if cps, err := c.Checkpoints(ctx, "clicks"); err != nil || len(cps) == 0 || cps[len(cps)-1].Status != twopc.StatusDataLoss {
		t.Fatalf("clicks checkpoints: %+v %v, want checkpoint 1 data_loss", cps, err)
	}

	bctx := startBrowser(t, chromium)
	console := collectConsole(t, bctx)
	if err := chromedp.Do(bctx, chromedp.Navigate("http://"+n.httpAddr+"/ui")); err != nil {
		t.Fatalf("navigate: %v", err)
	}
	s := waitPage(t, bctx, "the token prompt after the first 401", func(s pageState) bool {
		return s.TokenForm && !s.Content && strings.Contains(s.Reason, "401")
	})
	if s.Stored != "" || s.Forget {
		t.Errorf("before any token: stored %q, forget button shown %v; want none", s.Stored, s.Forget)
	}
	typeToken(t, bctx, "not-the-token")
	waitPage(t, bctx, "the prompt again after a wrong token", func(s pageState) bool {
		return s.TokenForm && !s.Content && strings.Contains(s.Reason, "refused")
	})
	typeToken(t, bctx, uiToken)
	s = waitPage(t, bctx, "the data after the right token", func(s pageState) bool {
		return s.Content && !s.TokenForm && s.row("checkpoints", "clicks", "w0", "1") != nil && s.row("checkpoints", "orders", "w1", "1") != nil
	})
	// The late checkpoint reaches its 3 s timeout by itself.
	s = waitPage(t, bctx, "the late checkpoint past its transaction timeout", func(s pageState) bool {
		return strings.Contains(s.row("checkpoints", "late", "w2", "1").cell(6), "past the transaction timeout")
	})
	if cp := s.row("checkpoints", "late", "w2", "1"); cp.Class != "in-doubt" || cp.cell(4) != "IN DOUBT prepared" ||
		!regexp.MustCompile(`^\d+(\.\d)? s of 3\.0 s past the transaction timeout: Kafka aborts it, a commit loses data$`).MatchString(cp.cell(6)) {
		t.Errorf("checkpoint late/w2/1: %+v, want IN DOUBT prepared, its age past 3.0 s said in words", cp)
	}

	// What a person sees.
	if want := "Leader: " + leader + "."; !strings.Contains(s.Node, want) {
		t.Errorf("node line %q, want it to name the leader (%q)", s.Node, want)
	}
	if m := s.row("members", leader); m == nil || m.cell(1) != "LEADER" || m.cell(3) != "reachable" {
		t.Errorf("members row of %s: %+v, want it marked LEADER and reachable", leader, m)
	}
	// Writers columns: job, commit, guarantee, writer, epoch, owner, last committed, in doubt.
	if w := s.row("writers", "orders"); w == nil || w.Class != "in-doubt" || w.cell(2) != "exactly_once" || w.cell(3) != "w1" ||
		w.cell(4) != fmt.Sprint(orders.Epoch) || w.cell(5) != leader || w.cell(6) != "none" || w.cell(7) != "IN DOUBT checkpoint 1" {
		t.Errorf("writers row of orders: %+v, want exactly_once, w1, epoch %d, owner %s, nothing committed, highlighted IN DOUBT checkpoint 1", w, orders.Epoch, leader)
	}
	if w := s.row("writers", "clicks"); w == nil || w.Class != "data-loss" || w.cell(6) != "1 DATA LOSS" || w.cell(7) != "none" {
		t.Errorf("writers row of clicks: %+v, want last committed 1 marked DATA LOSS, nothing in doubt (the loss is decided)", w)
	}
	cp := s.row("checkpoints", "orders", "w1", "1")
	if cp.Class != "in-doubt" || cp.cell(4) != "IN DOUBT prepared" || cp.cell(5) != "events: prepared" ||
		!regexp.MustCompile(`^\d+(\.\d)? s of 60 s$`).MatchString(cp.cell(6)) {
		t.Errorf("checkpoint orders/w1/1: %+v, want IN DOUBT prepared, events: prepared, age of 60 s", cp)
	}
	if cp.BG != "rgb(255, 244, 204)" {
		t.Errorf("checkpoint orders/w1/1 background %q, want the in-doubt colour rgb(255, 244, 204) (is the style sheet loaded?)", cp.BG)
	}
	loss := s.row("checkpoints", "clicks", "w0", "1")
	if loss.Class != "data-loss" || loss.cell(4) != "DATA LOSS data_loss" || loss.BG != "rgb(253, 226, 225)" ||
		loss.cell(5) != "fast: data_loss" || !strings.HasSuffix(loss.cell(6), " s (decided)") {
		t.Errorf("checkpoint clicks/w0/1: %+v, want DATA LOSS in the data-loss colour rgb(253, 226, 225), fast: data_loss, decided", loss)
	}
	if want := "2 checkpoints IN DOUBT, 1 checkpoint with DATA LOSS."; s.Summary != want {
		t.Errorf("summary %q, want %q", s.Summary, want)
	}
	if !regexp.MustCompile(`^updated \d\d:\d\d:\d\d$`).MatchString(s.Updated) {
		t.Errorf("updated %q, want \"updated hh:mm:ss\"", s.Updated)
	}
	if s.Stored != uiToken || !s.Forget || s.Banner != "" {
		t.Errorf("stored token %q, forget shown %v, banner %q; want the token kept in sessionStorage, the button, no banner", s.Stored, s.Forget, s.Banner)
	}
	screenshot(t, bctx, "status.png")

	// It refreshes by itself: the clock moves, and a commit made through
	// the API shows without a reload.
	first := s.Updated
	waitPage(t, bctx, "the updated time to move", func(s pageState) bool { return s.Updated != first })
	if r, err := c.Commit(ctx, "orders", 1); err != nil || r.Status != twopc.StatusCommitted {
		t.Fatalf("commit orders 1: %+v %v", r, err)
	}
	waitPage(t, bctx, "the commit of orders 1 to show", func(s pageState) bool {
		w := s.row("writers", "orders")
		cp := s.row("checkpoints", "orders", "w1", "1")
		return w != nil && w.cell(6) == "1" && w.Class == "" && cp != nil && cp.cell(4) == "committed" &&
			s.Summary == "1 checkpoint IN DOUBT, 1 checkpoint with DATA LOSS."
	})

	// Forgetting the token hides the data and asks again.
	if err := chromedp.Do(bctx, chromedp.Click(chromedp.ID("forget"))); err != nil {
		t.Fatalf("click forget: %v", err)
	}
	waitPage(t, bctx, "the prompt after forgetting the token", func(s pageState) bool {
		return s.TokenForm && !s.Content && s.Stored == "" && !s.Forget
	})
	typeToken(t, bctx, uiToken)
	waitPage(t, bctx, "the data again", func(s pageState) bool { return s.Content && s.row("writers", "orders") != nil })

	// The sidecar goes away: a banner says so, the last data stays.
	n.kill()
	s = waitPage(t, bctx, "the banner after the sidecar died", func(s pageState) bool {
		return strings.Contains(s.Banner, "does not answer") && s.Content
	})
	if !strings.Contains(s.Banner, "Showing data from") {
		t.Errorf("banner %q, want it to say how old the data shown is", s.Banner)
	}
	screenshot(t, bctx, "status-sidecar-down.png")

	for _, m := range console.messages() {
		if m.IsException() || strings.Contains(m.Text, "Content Security Policy") {
			t.Errorf("browser console: %s", m)
		}
	}
}

// findChromium returns Chromium's path; without it the test fails unless
// TXSINK_TEST_SKIP_BROWSER=1 says to skip.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("TXSINK_TEST_SKIP_BROWSER") == "1" {
		t.Skip("no Chromium, browser test skipped: TXSINK_TEST_SKIP_BROWSER=1")
	}
	t.Fatal("the status page test needs Chromium: apt-get install chromium (or set TXSINK_TEST_SKIP_BROWSER=1)")
	return ""
}

// startBrowser starts headless Chromium with a fresh profile and without
// the background connections that a closed network refuses. The browser
// lives at most 3 minutes and stops with the test.
func startBrowser(t *testing.T, path string) context.Context {
	t.Helper()
	// Not t.TempDir: Chromium's children may still write into the profile
	// for a moment after it stops, and TempDir's cleanup fails the test
	// when its RemoveAll does.
	dir, err := os.MkdirTemp("", "statusui-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	logs := &testenv.Buffer{}
	life, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	alloc, cancelAlloc := chromedp.NewExecAllocator(life,
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(dir),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.Flag("disable-extensions", true),
		chromedp.WindowSize(1280, 900), chromedp.CombinedOutput(logs))
	bctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		stop()
		if t.Failed() {
			t.Logf("chromium output (tail):\n%s", tail(logs, 30))
		}
		for range 50 { // bounded: see above
			if os.RemoveAll(dir) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("could not remove the browser profile %s", dir)
	})
	// The first Run starts the browser; it must not carry a shorter
	// deadline than the browser's life.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start %s: %v\n%s", path, err, tail(logs, 30))
	}
	return bctx
}

// consoleLog keeps what the page wrote to the browser console.
type consoleLog struct {
	mu   sync.Mutex
	msgs []chromedp.ConsoleMessage
}

func (l *consoleLog) messages() []chromedp.ConsoleMessage {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]chromedp.ConsoleMessage(nil), l.msgs...)
}

// collectConsole reads the console until the browser's context ends; the
// test's cleanup waits for the reader to stop.
func collectConsole(t *testing.T, bctx context.Context) *consoleLog {
	l := &consoleLog{}
	msgs := chromedp.Console(bctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range msgs {
			if err != nil {
				return
			}
			l.mu.Lock()
			l.msgs = append(l.msgs, m)
			l.mu.Unlock()
		}
	}()
	// Registered after startBrowser's cleanup, so it runs first: cancel
	// the tab here to end the iteration.
	t.Cleanup(func() {
		_ = chromedp.Cancel(bctx)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("console reader did not stop within 10s")
		}
	})
	return l
}

func typeToken(t *testing.T, bctx context.Context, tok string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(bctx, 10*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.SendKeys(chromedp.ID("token"), tok), chromedp.Click(chromedp.ID("token-use"))); err != nil {
		t.Fatalf("enter the token: %v", err)
	}
}

func screenshot(t *testing.T, bctx context.Context, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(bctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	p := filepath.Join(t.ArtifactDir(), name)
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", p, len(png))
}

// pageState is what the page shows, read as a person would: visibility
// and rendered text (innerText), plus the computed background of rows.
type pageState struct {
	TokenForm   bool      `json:"tokenForm"`
	Reason      string    `json:"reason"`
	Content     bool      `json:"content"`
	Banner      string    `json:"banner"`
	Updated     string    `json:"updated"`
	Node        string    `json:"node"`
	Summary     string    `json:"summary"`
	Forget      bool      `json:"forget"`
	Stored      string    `json:"stored"`
	Members     []pageRow `json:"members"`
	Writers     []pageRow `json:"writers"`
	Checkpoints []pageRow `json:"checkpoints"`
}

type pageRow struct {
	Class string   `json:"cls"`
	Cells []string `json:"cells"`
	BG    string   `json:"bg"`
}

func (r *pageRow) cell(i int) string {
	if r == nil || i >= len(r.Cells) {
		return ""
	}
	return r.Cells[i]
}

// row is the first row of the table whose leading cells are key.
func (s pageState) row(table string, key ...string) *pageRow {
	rows := map[string][]pageRow{"members": s.Members, "writers": s.Writers, "checkpoints": s.Checkpoints}[table]
	for i, r := range rows {
		ok := len(r.Cells) >= len(key)
		for j := 0; ok && j < len(key); j++ {
			ok = r.Cells[j] == key[j]
		}
		if ok {
			return &rows[i]
		}
	}
	return nil
}

const pageStateJS = `(() => {
  const e = (id) => document.getElementById(id);
  const vis = (id) => { const x = e(id); return !!x && !x.hidden && x.getClientRects().length > 0; };
  const text = (id) => vis(id) ? e(id).innerText.trim() : "";
  const rows = (id) => Array.from(document.querySelectorAll("#" + id + " tbody tr")).map((tr) => ({
    cls: tr.className,
    cells: Array.from(tr.cells).map((td) => td.innerText.trim().replace(/\s+/g, " ")),
    bg: tr.cells[0] ? getComputedStyle(tr.cells[0]).backgroundColor : "",
  }));
  return {
    tokenForm: vis("token-form"), reason: text("token-reason"), content: vis("content"),
    banner: text("banner"), updated: text("updated"), node: text("node"), summary: text("summary"),
    forget: vis("forget"), stored: sessionStorage.getItem("txsink-token") || "",
    members: rows("members"), writers: rows("writers"), checkpoints: rows("checkpoints"),
  };
})()`

// waitPage polls the page (every 100 ms, at most 20 s) until cond holds,
// and fails the test with the last state otherwise.
func waitPage(t *testing.T, bctx context.Context, what string, cond func(pageState) bool) pageState {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last pageState
	var lastErr error
	for {
		ctx, cancel := context.WithTimeout(bctx, 5*time.Second)
		s, err := chromedp.Run(ctx, chromedp.Evaluate[pageState](pageStateJS))
		cancel()
		if err == nil {
			if cond(s) {
				return s
			}
			last = s
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(last, "", "  ")
			t.Fatalf("waiting for %s: not seen within 20s (last error %v); the page showed:\n%s", what, lastErr, b)
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
}

// openUIJob creates an external-mode job writing only sink and opens a
// session for writer.
func openUIJob(t *testing.T, c *client.Client, job, sink, writer string) twopc.SessionInfo {
	t.Helper()
	ctx := tctx(t)
	if _, err := c.PutJob(ctx, job, twopc.ModeExternal, []string{sink}); err != nil {
		t.Fatal(err)
	}
	s, err := c.OpenSession(ctx, job, writer, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func writeTo(t *testing.T, c *client.Client, job, writer string, epoch uint64, sink string, n int) {
	t.Helper()
	recs := make([]*twopc.Record, n)
	for i := range recs {
		recs[i] = &twopc.Record{Sink: sink, Key: []byte(`"k"`), Value: []byte(fmt.Sprintf(`"%s-%d"`, job, i))}
	}
	if _, err := c.Write(tctx(t), job, writer, epoch, nil, recs); err != nil {
		t.Fatalf("write %s/%s: %v", job, writer, err)
	}
}

// waitTxnEnded waits (bounded) until the broker has had the transaction
// open and then no longer has: its timeout aborted it.
func waitTxnEnded(t *testing.T, broker, txnID string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx := tctx(t)
	seen := false
	deadline := time.Now().Add(20 * time.Second)
	for {
		d, err := adm.DescribeTransactions(ctx, txnID)
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("DescribeTransactions: %v", err)
		}
		st := d[txnID].State
		if st == "Ongoing" {
			seen = true
		} else if seen {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("transaction %s: state %q after 20s (seen ongoing: %v), want it ongoing and then aborted by the broker", txnID, st, seen)
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
}
