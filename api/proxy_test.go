package api_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/twopc"
)

const (
	recordsRoute    = "POST /v1/jobs/{job}/writers/{writer}/records"
	checkpointRoute = "POST /v1/jobs/{job}/writers/{writer}/checkpoints/{n}"
)

// ndjson is one Kafka record a line for the sink events, keyed k<i>.
func ndjson(vals ...string) []byte {
	var b strings.Builder
	for _, v := range vals {
		fmt.Fprintf(&b, `{"sink":"events","key":"k-%s","value":%q}`+"\n", v, v)
	}
	return []byte(b.String())
}

// wantKafka reads the topic events with read_committed and checks that it
// holds exactly want (in order, each once).
func (c *cluster) wantKafka(want ...string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var got []string
	for _, r := range kafkatest.ReadCommitted(ctx, c.t, c.kafka, "events", len(want)) {
		got = append(got, strings.Trim(string(r.Value), `"`))
	}
	if !slices.Equal(got, want) {
		c.t.Fatalf("read_committed events: got %q, want %q (each exactly once)", got, want)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// TestProxyPassesSessionCallsToOwner: the session lives on n1; writes (over
// TCP and over n2's Unix socket) and the checkpoint sent to n2 are answered
// by n1 and their records land once. Opening the session on n2 is not passed
// on: it moves the writer to n2, and n1 then passes calls to n2.
func TestProxyPassesSessionCallsToOwner(t *testing.T) {
	c := newCluster(t, []string{"n1", "n2"}, nil, nil)
	n1, n2 := c.nodes["n1"], c.nodes["n2"]
	must[twopc.JobInfo](t)(n1.c.PutJob(ctx(t), "j", twopc.ModeAuto, nil))
	s := must[twopc.SessionInfo](t)(n1.c.OpenSession(ctx(t), "j", "w", nil))
	if o := c.owner("j", "w"); o != "n1" {
		t.Fatalf("owner after opening on n1: %q", o)
	}
	// n2 holds no session of j/w: a 200 can only come from n1.
	res := must[twopc.WriteResult](t)(n2.c.WriteNDJSON(ctx(t), "j", "w", s.Epoch, client.Seq(1), ndjson("a", "b", "c")))
	if res.Accepted != 3 {
		t.Fatalf("write via n2: %+v", res)
	}
	// curl sends large bodies with Expect: 100-continue; the interim
	// answers cross the pass-through too.
	r := n2.raw(t, "POST", fmt.Sprintf("/v1/jobs/j/writers/w/records?epoch=%d&seq=2", s.Epoch), string(ndjson("d")),
		"Content-Type", "application/x-ndjson", "Expect", "100-continue")
	if r.status != 200 || !strings.Contains(string(r.body), `"accepted":1`) {
		t.Fatalf("write with Expect: 100-continue via n2: %s", r)
	}
	res = must[twopc.WriteResult](t)(n2.unix.WriteNDJSON(ctx(t), "j", "w", s.Epoch, client.Seq(3), ndjson("e")))
	if res.Accepted != 1 {
		t.Fatalf("write via n2's Unix socket: %+v", res)
	}
	// A retry of seq 3 through n2 reaches the same session: a duplicate.
	res = must[twopc.WriteResult](t)(n2.c.WriteNDJSON(ctx(t), "j", "w", s.Epoch, client.Seq(3), ndjson("e")))
	if !res.Duplicate {
		t.Fatalf("repeated seq via n2: %+v, want a duplicate", res)
	}
	cp := must[twopc.CheckpointResult](t)(n2.c.Checkpoint(ctx(t), "j", "w", s.Epoch, 1, []byte("pos=5"), ""))
	if cp.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint via n2: %+v", cp)
	}
	c.wantKafka("a", "b", "c", "d", "e")

	five := []string{api.ProxyAnswered, api.ProxyAnswered, api.ProxyAnswered, api.ProxyAnswered, api.ProxyAnswered}
	n2.waitProxied(t, five...)
	tapped, _, _ := n1.snapshot()
	if len(tapped) != 5 {
		t.Fatalf("n1 got %d calls through its API address, want 5", len(tapped))
	}
	for i, h := range tapped {
		if got := h.Get(api.ForwardedByHeader); got != "n2" {
			t.Errorf("call %d at n1: %s %q, want n2", i, api.ForwardedByHeader, got)
		}
	}
	// The TCP calls carry the caller's address; the Unix socket has none.
	if xff := tapped[0].Get("X-Forwarded-For"); xff != "127.0.0.1" {
		t.Errorf("X-Forwarded-For of a TCP call: %q, want 127.0.0.1", xff)
	}
	if _, proxied, _ := n1.snapshot(); len(proxied) != 0 {
		t.Errorf("n1 passed calls on: %v", proxied)
	}

	// Session open is never passed on: on n2 it moves the writer to n2.
	s2 := must[twopc.SessionInfo](t)(n2.c.OpenSession(ctx(t), "j", "w", nil))
	if o := c.owner("j", "w"); o != "n2" || s2.Checkpoint != 1 || string(s2.State) != "pos=5" {
		t.Fatalf("open on n2: owner %q, session %+v; want owner n2 restoring checkpoint 1", o, s2)
	}
	n2.waitProxied(t, five...)
	// Now n1 passes the calls to n2.
	must[twopc.WriteResult](t)(n1.c.WriteNDJSON(ctx(t), "j", "w", s2.Epoch, nil, ndjson("f")))
	if cp := must[twopc.CheckpointResult](t)(n1.c.Checkpoint(ctx(t), "j", "w", s2.Epoch, 2, nil, "")); cp.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint 2 via n1: %+v", cp)
	}
	n1.waitProxied(t, api.ProxyAnswered, api.ProxyAnswered)
	// The old epoch through n1 reaches n2, which fences it.
	_, err := n1.c.WriteNDJSON(ctx(t), "j", "w", s.Epoch, nil, ndjson("stale"))
	wantCode(t, err, http.StatusConflict, api.CodeSessionFenced)
	c.wantKafka("a", "b", "c", "d", "e", "f")
}

// TestProxyPassesBinaryBody: a binary records body (BinaryRecordsType)
// sent to a node that does not own the writer reaches the owner with its
// Content-Type, and its records land once.
func TestProxyPassesBinaryBody(t *testing.T) {
	c := newCluster(t, []string{"n1", "n2"}, nil, nil)
	n1, n2 := c.nodes["n1"], c.nodes["n2"]
	must[twopc.JobInfo](t)(n1.c.PutJob(ctx(t), "j", twopc.ModeAuto, nil))
	s := must[twopc.SessionInfo](t)(n1.c.OpenSession(ctx(t), "j", "w", nil))
	body, err := client.AppendBinaryRecords(nil, []*twopc.Record{
		{Sink: "events", KeyB64: []byte("k-a"), ValueB64: []byte("a")},
		{Sink: "events", KeyB64: []byte("k-b"), ValueB64: []byte("b")},
	})
	if err != nil {
		t.Fatal(err)
	}
	// n2 holds no session of j/w: a 200 can only come from n1, which
	// decoded the body as binary (as NDJSON it would be a 400).
	res := must[twopc.WriteResult](t)(n2.c.WriteBinary(ctx(t), "j", "w", s.Epoch, client.Seq(1), body))
	if res.Accepted != 2 {
		t.Fatalf("binary write via n2: %+v", res)
	}
	cp := must[twopc.CheckpointResult](t)(n2.c.Checkpoint(ctx(t), "j", "w", s.Epoch, 1, nil, ""))
	if cp.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint via n2: %+v", cp)
	}
	c.wantKafka("a", "b")
	n2.waitProxied(t, api.ProxyAnswered, api.ProxyAnswered)
}

// TestProxyStreamsBodyUndecoded: the node that passes a call on neither
// reads nor decodes its body. Checked three ways: n2 accepts at most 1 KiB
// of body, yet a 8 KiB write through it succeeds; a malformed body through
// n2 is answered 400 by n1 (n1's Observe sees the 400, n2 passed the
// answer); and a body sent in two halves reaches n1 before its second half
// is sent (a node buffering the body would hold the first half back).
func TestProxyStreamsBodyUndecoded(t *testing.T) {
	c := newCluster(t, []string{"n1", "n2"}, nil, map[string]clusterOpt{
		"n2": func(_ *cluster, _ *cnode, cfg *api.Config) { cfg.MaxBodyBytes = 1 << 10 },
	})
	n1, n2 := c.nodes["n1"], c.nodes["n2"]
	must[twopc.JobInfo](t)(n1.c.PutJob(ctx(t), "j", twopc.ModeAuto, nil))
	s := must[twopc.SessionInfo](t)(n1.c.OpenSession(ctx(t), "j", "w", nil))

	var big []string
	for i := range 40 {
		big = append(big, fmt.Sprintf("%03d-%s", i, strings.Repeat("x", 200)))
	}
	body := ndjson(big...)
	if len(body) < 8<<10 {
		t.Fatalf("test body is only %d bytes", len(body))
	}
	if res := must[twopc.WriteResult](t)(n2.c.WriteNDJSON(ctx(t), "j", "w", s.Epoch, nil, body)); res.Accepted != 40 {
		t.Fatalf("8 KiB write via n2 (limit 1 KiB there): %+v", res)
	}

	// Malformed: decoded, and refused, by n1.
	r := n2.raw(t, "POST", fmt.Sprintf("/v1/jobs/j/writers/w/records?epoch=%d", s.Epoch), "{not json\n", "Content-Type", "application/x-ndjson")
	if p := r.problem(t); r.status != 400 || p.Code != api.CodeMalformedBody {
		t.Fatalf("malformed body via n2: %s", r)
	}
	waitObserved(t, n1, observed{recordsRoute, 400})
	n2.waitProxied(t, api.ProxyAnswered, api.ProxyAnswered)

	// Streaming: the first half must reach n1 while the second is unsent.
	var half1, half2 []string
	for i := range 2000 {
		v := fmt.Sprintf("s%04d-%s", i, strings.Repeat("y", 100))
		if i < 1000 {
			half1 = append(half1, v)
		} else {
			half2 = append(half2, v)
		}
	}
	pr, pw := io.Pipe()
	bodyRead := n1.armBodyRead()
	done := make(chan reply, 1)
	go func() {
		req, err := http.NewRequest("POST", n2.base+fmt.Sprintf("/v1/jobs/j/writers/w/records?epoch=%d", s.Epoch), pr)
		if err != nil {
			done <- reply{status: -1, body: []byte(err.Error())}
			return
		}
		req.Header.Set("Content-Type", "application/x-ndjson")
		resp, err := n2.hc.Do(req)
		if err != nil {
			done <- reply{status: -1, body: []byte(err.Error())}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		done <- reply{status: resp.StatusCode, header: resp.Header, body: b}
	}()
	if _, err := pw.Write(ndjson(half1...)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-bodyRead:
	case r := <-done:
		t.Fatalf("answered before the second half was sent: %s", r)
	case <-time.After(10 * time.Second):
		pw.CloseWithError(errors.New("test gave up"))
		t.Fatal("n1 read no byte of the body within 10s while its second half was held back: n2 buffers bodies")
	}
	if _, err := pw.Write(ndjson(half2...)); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	select {
	case r := <-done:
		if r.status != 200 || !strings.Contains(string(r.body), `"accepted":2000`) {
			t.Fatalf("streamed write via n2: %s", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("streamed write via n2: no answer in 20s")
	}
	cp := must[twopc.CheckpointResult](t)(n2.c.Checkpoint(ctx(t), "j", "w", s.Epoch, 1, nil, ""))
	if cp.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint via n2: %+v", cp)
	}
	c.wantKafka(append(big, append(half1, half2...)...)...)
}

// TestProxyNeverPassesTwice: n1 and n2 each think the other owns the writer
// (journals that disagree for a moment). A call to n1 is passed to n2 once,
// which serves it itself: 409 session_lost, as it holds no session. A call
// that arrives with Txsink-Forwarded-By is served where it arrives.
func TestProxyNeverPassesTwice(t *testing.T) {
	c := newCluster(t, []string{"n1", "n2"}, nil, nil)
	n1, n2 := c.nodes["n1"], c.nodes["n2"]
	toN2 := func(string, string) (string, string, bool) { return "n2", n2.tapURL, true }
	toN1 := func(string, string) (string, string, bool) { return "n1", n1.tapURL, true }
	n1.owner.Store(&toN2)
	n2.owner.Store(&toN1)
	must[twopc.JobInfo](t)(n1.c.PutJob(ctx(t), "j", twopc.ModeAuto, nil))
	s := must[twopc.SessionInfo](t)(n1.c.OpenSession(ctx(t), "j", "w", nil))
	if o := c.owner("j", "w"); o != "n1" {
		t.Fatalf("session open was passed on: owner %q, want n1", o)
	}

	_, err := n1.c.WriteNDJSON(ctx(t), "j", "w", s.Epoch, nil, ndjson("x"))
	wantCode(t, err, http.StatusConflict, api.CodeSessionLost)
	n1.waitProxied(t, api.ProxyAnswered)
	tapped2, proxied2, _ := n2.snapshot()
	if len(tapped2) != 1 || tapped2[0].Get(api.ForwardedByHeader) != "n1" || len(proxied2) != 0 {
		t.Fatalf("n2: %d calls arrived (%v), passed on %v; want one from n1, none passed on", len(tapped2), tapped2, proxied2)
	}
	if tapped1, _, _ := n1.snapshot(); len(tapped1) != 0 {
		t.Fatalf("the call came back to n1: %v", tapped1)
	}

	// Sent to n2 directly with the header: served by n2, not passed on.
	r := n2.raw(t, "POST", fmt.Sprintf("/v1/jobs/j/writers/w/checkpoints/1?epoch=%d", s.Epoch), "{}",
		"Content-Type", "application/json", api.ForwardedByHeader, "n9")
	if p := r.problem(t); r.status != 409 || p.Code != api.CodeSessionLost {
		t.Fatalf("checkpoint carrying %s sent to n2: %s", api.ForwardedByHeader, r)
	}
	if _, proxied2, _ := n2.snapshot(); len(proxied2) != 0 {
		t.Fatalf("n2 passed on a call that was forwarded already: %v", proxied2)
	}
	// The session on n1 is intact: served there, the records land.
	n1.owner.Store(nil)
	must[twopc.WriteResult](t)(n1.c.WriteNDJSON(ctx(t), "j", "w", s.Epoch, nil, ndjson("y")))
	must[twopc.CheckpointResult](t)(n1.c.Checkpoint(ctx(t), "j", "w", s.Epoch, 1, nil, ""))
	c.wantKafka("y")
}

// TestProxyOwnerUnreachable: the owner's API address does not answer. The
// call through n2 is 503 unavailable naming n1, with the problem's owner,
// which the client reads as "reopen"; reopening on n2 moves the writer
// there, and only what is written after the reopen lands.
func TestProxyOwnerUnreachable(t *testing.T) {
	c := newCluster(t, []string{"n1", "n2"}, nil, nil)
	n1, n2 := c.nodes["n1"], c.nodes["n2"]
	must[twopc.JobInfo](t)(n1.c.PutJob(ctx(t), "j", twopc.ModeAuto, nil))
	s := must[twopc.SessionInfo](t)(n1.c.OpenSession(ctx(t), "j", "w", nil))
	must[twopc.WriteResult](t)(n1.c.WriteNDJSON(ctx(t), "j", "w", s.Epoch, nil, ndjson("lost-with-n1")))

	dead := closedAddr(t)
	c.putMember("n1", "http://"+dead)
	r := n2.raw(t, "POST", fmt.Sprintf("/v1/jobs/j/writers/w/records?epoch=%d", s.Epoch), string(ndjson("x")),
		"Content-Type", "application/x-ndjson")
	p := r.problem(t)
	if r.status != 503 || p.Code != api.CodeUnavailable || p.Owner != "n1" || r.header.Get("Retry-After") == "" ||
		!strings.Contains(p.Detail, "node n1") || !strings.Contains(p.Detail, "reopen the session") {
		t.Fatalf("write via n2 to an unreachable owner: %s", r)
	}
	_, err := n2.c.Checkpoint(ctx(t), "j", "w", s.Epoch, 1, nil, "")
	wantCode(t, err, http.StatusServiceUnavailable, api.CodeUnavailable)
	if !errors.Is(err, client.ErrReopen) {
		t.Fatalf("client error %v does not match client.ErrReopen", err)
	}
	n2.waitProxied(t, api.ProxyUnreachable, api.ProxyUnreachable)

	// The app reopens on n2: the writer moves, nothing was committed.
	s2 := must[twopc.SessionInfo](t)(n2.c.OpenSession(ctx(t), "j", "w", nil))
	if o := c.owner("j", "w"); o != "n2" || s2.Checkpoint != 0 || s2.Epoch <= s.Epoch {
		t.Fatalf("reopen on n2: owner %q, session %+v", o, s2)
	}
	must[twopc.WriteResult](t)(n2.c.WriteNDJSON(ctx(t), "j", "w", s2.Epoch, nil, ndjson("replayed")))
	must[twopc.CheckpointResult](t)(n2.c.Checkpoint(ctx(t), "j", "w", s2.Epoch, 1, nil, ""))
	c.wantKafka("replayed")
	n2.waitProxied(t, api.ProxyUnreachable, api.ProxyUnreachable)
}

// TestProxyOwnerHangs: an owner that accepts the connection and never
// answers is given the call's deadline plus the margin, then the caller
// gets 503 naming it.
func TestProxyOwnerHangs(t *testing.T) {
	c := newCluster(t, []string{"n1", "n2"}, nil, map[string]clusterOpt{
		"n2": func(_ *cluster, _ *cnode, cfg *api.Config) {
			cfg.WriteTimeout, cfg.CheckpointTimeout = 200*time.Millisecond, 300*time.Millisecond
		},
	})
	n2 := c.nodes["n2"]
	api.SetProxyMargin(n2.srv, 200*time.Millisecond)
	hung := hungAddr(t)
	toHung := func(string, string) (string, string, bool) { return "n1", "http://" + hung, true }
	n2.owner.Store(&toHung)
	for _, tc := range []struct{ path, body, ct string }{
		{"/v1/jobs/j/writers/w/records?epoch=1", string(ndjson("x")), "application/x-ndjson"},
		{"/v1/jobs/j/writers/w/checkpoints/1?epoch=1", "{}", "application/json"},
	} {
		start := time.Now()
		r := n2.raw(t, "POST", tc.path, tc.body, "Content-Type", tc.ct)
		took := time.Since(start)
		p := r.problem(t)
		if r.status != 503 || p.Owner != "n1" || !strings.Contains(p.Detail, "no answer in time") {
			t.Fatalf("%s to a hung owner: %s", tc.path, r)
		}
		if took < 400*time.Millisecond || took > 5*time.Second {
			t.Fatalf("%s to a hung owner answered after %s, want about the deadline plus the margin (0.4-0.5s)", tc.path, took)
		}
	}
	n2.waitProxied(t, api.ProxyUnreachable, api.ProxyUnreachable)
}

// TestProxyOwnerChecksToken: the Authorization header goes to the owner,
// which checks it. n2 has no token itself, n3 has one.
func TestProxyOwnerChecksToken(t *testing.T) {
	withToken := func(_ *cluster, _ *cnode, cfg *api.Config) { cfg.Token = "tok" }
	c := newCluster(t, []string{"n1", "n2", "n3"}, nil, map[string]clusterOpt{"n1": withToken, "n3": withToken})
	n1, n2, n3 := c.nodes["n1"], c.nodes["n2"], c.nodes["n3"]
	must[twopc.JobInfo](t)(n1.c.PutJob(ctx(t), "j", twopc.ModeAuto, nil))
	s := must[twopc.SessionInfo](t)(n1.c.OpenSession(ctx(t), "j", "w", nil))
	path := fmt.Sprintf("/v1/jobs/j/writers/w/records?epoch=%d", s.Epoch)

	r := n2.raw(t, "POST", path, string(ndjson("no-token")), "Content-Type", "application/x-ndjson")
	if p := r.problem(t); r.status != 401 || p.Code != api.CodeUnauthorized || r.header.Get("WWW-Authenticate") == "" {
		t.Fatalf("write without token via n2: %s", r)
	}
	waitObserved(t, n1, observed{recordsRoute, 401})
	n2.waitProxied(t, api.ProxyAnswered)

	r = n2.raw(t, "POST", path, string(ndjson("with-token")), "Content-Type", "application/x-ndjson", "Authorization", "Bearer tok")
	if r.status != 200 {
		t.Fatalf("write with the token via n2: %s", r)
	}
	n2.waitProxied(t, api.ProxyAnswered, api.ProxyAnswered)
	if tapped, _, _ := n1.snapshot(); len(tapped) != 2 || tapped[1].Get("Authorization") != "Bearer tok" {
		t.Fatalf("n1 did not get the caller's Authorization header: %v", tapped)
	}

	// n3 has a token: it refuses the call itself and passes nothing on.
	r = n3.raw(t, "POST", path, string(ndjson("no-token")), "Content-Type", "application/x-ndjson")
	if r.status != 401 {
		t.Fatalf("write without token via n3: %s", r)
	}
	if _, proxied, _ := n3.snapshot(); len(proxied) != 0 {
		t.Fatalf("n3 passed an unauthorized call on: %v", proxied)
	}
	must[twopc.CheckpointResult](t)(n3.c.Checkpoint(ctx(t), "j", "w", s.Epoch, 1, nil, ""))
	c.wantKafka("with-token")
}

// TestProxyTLSOwner: an owner whose API address is https is reached with
// the CA of Config.ProxyTLS; without it the call is 503 naming the owner.
func TestProxyTLSOwner(t *testing.T) {
	c := newCluster(t, []string{"n1", "n2", "n3"}, map[string]string{"n1": tlsTap}, map[string]clusterOpt{
		"n2": func(c *cluster, _ *cnode, cfg *api.Config) {
			cfg.ProxyTLS = &tls.Config{RootCAs: c.nodes["n1"].tapCertPool(), MinVersion: tls.VersionTLS12}
		},
	})
	n1, n2, n3 := c.nodes["n1"], c.nodes["n2"], c.nodes["n3"]
	if !strings.HasPrefix(n1.tapURL, "https://") {
		t.Fatalf("n1's API address %s is not https", n1.tapURL)
	}
	must[twopc.JobInfo](t)(n1.c.PutJob(ctx(t), "j", twopc.ModeAuto, nil))
	s := must[twopc.SessionInfo](t)(n1.c.OpenSession(ctx(t), "j", "w", nil))
	must[twopc.WriteResult](t)(n2.c.WriteNDJSON(ctx(t), "j", "w", s.Epoch, nil, ndjson("over-tls")))
	must[twopc.CheckpointResult](t)(n2.c.Checkpoint(ctx(t), "j", "w", s.Epoch, 1, nil, ""))
	c.wantKafka("over-tls")

	_, err := n3.c.WriteNDJSON(ctx(t), "j", "w", s.Epoch, nil, ndjson("x"))
	wantCode(t, err, http.StatusServiceUnavailable, api.CodeUnavailable)
	if ce, _ := errors.AsType[*client.Error](err); ce.Owner != "n1" || !strings.Contains(ce.Detail, "certificate") {
		t.Fatalf("n3 without the CA: %v", err)
	}
}

// TestClientEndpoints: a client with several endpoints sends a call that
// cannot connect to the next one (transparently, since a node passes the
// call to the owner), turns a session call that got no answer into
// ErrReopen and moves on, and reopens on the endpoint in use.
func TestClientEndpoints(t *testing.T) {
	c := newCluster(t, []string{"n1", "n2"}, nil, nil)
	n1, n2 := c.nodes["n1"], c.nodes["n2"]
	dead := "http://" + closedAddr(t)
	hangup := "http://" + hangupAddr(t)

	a := client.New(dead, client.WithEndpoints(n2.base, n1.base), client.WithHTTPClient(n2.hc))
	must[twopc.JobInfo](t)(a.PutJob(ctx(t), "j", twopc.ModeAuto, nil))
	if a.Endpoint() != n2.base {
		t.Fatalf("endpoint after a refused connection: %s, want %s", a.Endpoint(), n2.base)
	}
	s := must[twopc.SessionInfo](t)(a.OpenSession(ctx(t), "j", "w", nil))
	if o := c.owner("j", "w"); o != "n2" {
		t.Fatalf("owner %q, want n2", o)
	}
	must[twopc.WriteResult](t)(a.WriteNDJSON(ctx(t), "j", "w", s.Epoch, client.Seq(1), ndjson("aborted-by-move")))

	// A session call that was sent and got no answer: not sent again,
	// ErrReopen, and the client moves to the next endpoint.
	b := client.New(hangup, client.WithEndpoints(n1.base), client.WithHTTPClient(n1.hc))
	_, err := b.WriteNDJSON(ctx(t), "j", "w", s.Epoch, client.Seq(2), ndjson("never"))
	if !errors.Is(err, client.ErrReopen) || client.Code(err) != "" {
		t.Fatalf("write to a node that hangs up: %v, want ErrReopen without an answer", err)
	}
	if b.Endpoint() != n1.base {
		t.Fatalf("endpoint after no answer: %s, want %s", b.Endpoint(), n1.base)
	}
	s2 := must[twopc.SessionInfo](t)(b.OpenSession(ctx(t), "j", "w", nil))
	if o := c.owner("j", "w"); o != "n1" || s2.Checkpoint != 0 {
		t.Fatalf("reopen via b: owner %q, session %+v", o, s2)
	}
	must[twopc.WriteResult](t)(b.WriteNDJSON(ctx(t), "j", "w", s2.Epoch, client.Seq(1), ndjson("one")))
	must[twopc.CheckpointResult](t)(b.Checkpoint(ctx(t), "j", "w", s2.Epoch, 1, nil, ""))

	// The old session through n2 reaches n1, which fences it: ErrReopen.
	_, err = a.WriteNDJSON(ctx(t), "j", "w", s.Epoch, client.Seq(2), ndjson("stale"))
	wantCode(t, err, http.StatusConflict, api.CodeSessionFenced)
	if !errors.Is(err, client.ErrReopen) {
		t.Fatalf("session_fenced does not match ErrReopen: %v", err)
	}

	// A client whose first node is down reaches the owner through n2.
	d := client.New(dead, client.WithEndpoints(n2.base), client.WithHTTPClient(n2.hc))
	must[twopc.WriteResult](t)(d.WriteNDJSON(ctx(t), "j", "w", s2.Epoch, client.Seq(2), ndjson("two")))
	if cp := must[twopc.CheckpointResult](t)(d.Checkpoint(ctx(t), "j", "w", s2.Epoch, 2, nil, "")); cp.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint 2 via d: %+v", cp)
	}
	c.wantKafka("one", "two")
	n2.waitProxied(t, api.ProxyAnswered, api.ProxyAnswered, api.ProxyAnswered)
}

// raw sends a request to the node's own listener.
func (n *cnode) raw(t *testing.T, method, path, body string, header ...string) reply {
	t.Helper()
	return transport{base: n.base, hc: n.hc}.do(t, method, path, body, header...)
}

// waitObserved waits (bounded) until the node's Observe saw o.
func waitObserved(t *testing.T, n *cnode, o observed) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, _, obs := n.snapshot()
		if slices.Contains(obs, o) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s never observed %v (saw %v)", n.id, o, obs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// closedAddr is a 127.0.0.1 address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// hungAddr accepts connections and never answers (a stopped process).
func hungAddr(t *testing.T) string {
	return acceptAddr(t, func(c net.Conn) {})
}

// hangupAddr reads a request's first bytes, then closes the connection.
func hangupAddr(t *testing.T) string {
	return acceptAddr(t, func(c net.Conn) {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		c.Read(make([]byte, 1))
		c.Close()
	})
}

// acceptAddr listens on 127.0.0.1 and hands every connection to fn; the
// connections and the listener close when the test ends.
func acceptAddr(t *testing.T, fn func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan net.Conn, 64)
	t.Cleanup(func() {
		ln.Close()
		for {
			select {
			case c := <-conns:
				c.Close()
			default:
				return
			}
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case conns <- c:
			default:
				c.Close()
			}
			go fn(c)
		}
	}()
	return ln.Addr().String()
}

// TestClientErrReopen: which answers the client reports as ErrReopen. A 503
// that names no owner (here: no journal leader) is "retry the call", not
// "reopen"; a write after a restart (session_lost) is "reopen".
func TestClientErrReopen(t *testing.T) {
	e := newEnv(t)
	c := e.ts[0].c
	must[twopc.JobInfo](t)(c.PutJob(ctx(t), "j", "", []string{"events"}))
	s := must[twopc.SessionInfo](t)(c.OpenSession(ctx(t), "j", "w", nil))
	e.journal.down.Store(true)
	_, err := c.Checkpoint(ctx(t), "j", "w", s.Epoch, 1, nil, "")
	e.journal.down.Store(false)
	wantCode(t, err, http.StatusServiceUnavailable, api.CodeUnavailable)
	if errors.Is(err, client.ErrReopen) {
		t.Fatalf("503 without owner matches ErrReopen: %v", err)
	}
	// That 503 failed the session (the checkpoint may be journaled): the
	// next call says so, and that is a reopen.
	_, err = c.WriteNDJSON(ctx(t), "j", "w", s.Epoch, nil, []byte(values("a")))
	if !errors.Is(err, client.ErrReopen) || client.Code(err) != api.CodeSinkFailure {
		t.Fatalf("write after the failed checkpoint: %v, want sink_failure matching ErrReopen", err)
	}
	_, err = c.WriteNDJSON(ctx(t), "j", "w", s.Epoch+5, nil, []byte(values("a")))
	if !errors.Is(err, client.ErrReopen) || client.Code(err) != api.CodeNoSession {
		t.Fatalf("write with an epoch never opened: %v, want no_session matching ErrReopen", err)
	}
	_, err = c.PutJob(ctx(t), "j", twopc.ModeExternal, nil)
	if client.Code(err) != api.CodeModeConflict || errors.Is(err, client.ErrReopen) {
		t.Fatalf("mode change with an open session: %v, want mode_conflict not matching ErrReopen", err)
	}
}

// TestProxyBadOwnerAddress: an API address in the journal that is not an
// http(s) URL is 503 naming the owner, like an unreachable one.
func TestProxyBadOwnerAddress(t *testing.T) {
	c := newCluster(t, []string{"n1", "n2"}, nil, nil)
	n2 := c.nodes["n2"]
	bad := func(string, string) (string, string, bool) { return "n1", "127.0.0.1:8470", true }
	n2.owner.Store(&bad)
	r := n2.raw(t, "POST", "/v1/jobs/j/writers/w/records?epoch=1", string(ndjson("x")), "Content-Type", "application/x-ndjson")
	if p := r.problem(t); r.status != 503 || p.Owner != "n1" || !strings.Contains(p.Detail, "not an http(s) URL") {
		t.Fatalf("owner with a bad address: %s", r)
	}
	n2.waitProxied(t, api.ProxyUnreachable)
}

// TestProxyConfig: SessionOwner needs this node's id (it is what the
// owner sees in Txsink-Forwarded-By), and the call timeouts are not
// negative.
func TestProxyConfig(t *testing.T) {
	e := newEnv(t)
	owner := func(string, string) (string, string, bool) { return "", "", false }
	for _, cfg := range []api.Config{
		{SessionOwner: owner},
		{SessionOwner: owner, Node: "bad name"},
		{WriteTimeout: -time.Second},
	} {
		if _, err := api.New(e.coord, cfg); err == nil {
			t.Errorf("api.New(%+v): no error", cfg)
		}
	}
	if _, err := api.New(e.coord, api.Config{SessionOwner: owner, Node: "n1"}); err != nil {
		t.Fatal(err)
	}
}
