package api_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/txsink/txsink/api"
)

// TestDeclaredBodyNeverSent: 20 requests that declare a 32 MiB body and send
// nothing. The server must not allocate from the declared length (before, it
// grew a buffer of Content-Length up front: 20 × 32 MiB), and must answer and
// close each connection once the read timeout passes.
func TestDeclaredBodyNeverSent(t *testing.T) {
	const (
		conns    = 20
		declared = 32 << 20
		timeout  = 700 * time.Millisecond
	)
	e := newEnv(t, func(c *api.Config) { c.MaxBodyBytes = declared; c.ReadTimeout = timeout })
	addr := strings.TrimPrefix(e.ts[0].base, "http://")

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc

	type result struct {
		status string
		closed bool
		after  time.Duration
		err    error
	}
	results := make([]result, conns)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second)) // bounds the test if the server never answers
		fmt.Fprintf(c, "POST /v1/jobs/j/writers/w%d/records?epoch=1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n", i, declared)
		wg.Add(1)
		go func() {
			defer wg.Done()
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				results[i].err = err
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			results[i].status = resp.Status
			// The server closes the connection: the next read is EOF.
			_, err = br.ReadByte()
			results[i].closed = err == io.EOF
			results[i].after = time.Since(t0)
		}()
	}
	// Watch the heap until every connection is answered (bounded by the
	// connections' own deadline).
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	peak := before
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
watch:
	for {
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapAlloc)
		select {
		case <-done:
			break watch
		case <-tick.C:
		}
	}
	const bound = 64 << 20 // far below conns × declared = 640 MiB
	if grew := peak - min(peak, before); grew > bound {
		t.Fatalf("heap grew by %d MiB while %d requests declared %d MiB each; want at most %d MiB",
			grew>>20, conns, declared>>20, bound>>20)
	}
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("conn %d: %v", i, r.err)
		}
		if !strings.HasPrefix(r.status, "400") || !r.closed {
			t.Fatalf("conn %d: got status %q, closed=%v; want 400 and the connection closed", i, r.status, r.closed)
		}
		if r.after < timeout {
			t.Fatalf("conn %d answered after %s, before the read timeout %s", i, r.after, timeout)
		}
	}
	t.Logf("peak heap growth %d KiB; answered after %s", (peak-min(peak, before))>>10, results[0].after)
}

// TestBodyDeadlineClearedAfterBody: the read timeout must not cancel a call
// that works longer than it after its body arrived (net/http clears the
// connection's read deadline once the body is read; this keeps it so).
func TestBodyDeadlineClearedAfterBody(t *testing.T) {
	e := newEnv(t, func(c *api.Config) { c.ReadTimeout = 200 * time.Millisecond })
	tr := e.ts[0]
	tr.do(t, "PUT", "/v1/jobs/j", `{"commit":"auto","sinks":["events"]}`)
	r := tr.do(t, "POST", "/v1/jobs/j/writers/w/session", `{}`)
	if r.status != 200 {
		t.Fatalf("open: %s", r)
	}
	// A write whose sink hangs for longer than the read timeout: the call
	// must run until the sink answers, not be cancelled by the deadline.
	e.events.SetHang("write", true)
	// The sink's pause (a simulated slow server, not a wait for a condition).
	pause := time.AfterFunc(600*time.Millisecond, func() { e.events.SetHang("write", false) })
	defer pause.Stop()
	r = tr.do(t, "POST", "/v1/jobs/j/writers/w/records?epoch=1", `{"value":"a"}`, "Content-Type", "application/x-ndjson")
	if r.status != 200 {
		t.Fatalf("write with a sink slower than the read timeout: got %s, want 200", r)
	}
}
