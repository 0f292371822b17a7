package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/internal/testenv"
	"github.com/txsink/txsink/raftlog"
	"github.com/txsink/txsink/twopc"
)

// TestFollowerForwardRetriesSameKey: two real raft nodes; the follower's
// journal forwards a proposal to the leader's API through a proxy that
// loses the leader's first answer after the command was applied (the
// outcome is unknown to the follower). The follower retries with the same
// bytes and gets the stored first result, marked duplicate, at the first
// index: applied once. Its own machine has the effect when Propose returns.
func TestFollowerForwardRetriesSameKey(t *testing.T) {
	key := filepath.Join(t.TempDir(), "cluster.key")
	if err := os.WriteFile(key, []byte("a-cluster-key-for-tests-of-more-than-32-bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := func(id string, bootstrap bool) (*raftlog.Node, *twopc.Machine) {
		m := twopc.NewMachine()
		n, err := raftlog.Open(raftlog.Config{NodeID: id, Dir: t.TempDir(), BindAddr: "127.0.0.1:0", Bootstrap: bootstrap,
			ClusterKeyFile: key, Logger: slog.New(slog.DiscardHandler)}, m)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close() })
		return n, m
	}
	n1, m1 := open("n1", true)
	n2, m2 := open("n2", false)
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	if err := n1.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n1.AddVoter(ctx, "n2", n2.Addr()); err != nil {
		t.Fatal(err)
	}

	// The leader's API, and a proxy in front of it that loses one answer.
	p1, err := newPeers(Config{NodeID: "n1"}, "")
	if err != nil {
		t.Fatal(err)
	}
	j1 := &raftJournal{n: n1, m: m1, peers: p1}
	srv, err := api.New(&lateService{}, api.Config{Admin: &clusterAdmin{cfg: Config{NodeID: "n1", Voter: true}, node: n1, machine: m1, journal: j1, peers: p1}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, srv, ln)
	leaderAPI := "http://" + ln.Addr().String()
	var calls, lost atomic.Int32
	proxy := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		body, _ := io.ReadAll(r.Body)
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, leaderAPI+r.URL.Path, bytes.NewReader(body))
		req.Header = r.Header.Clone()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		if r.URL.Path == "/v1/cluster/propose" && lost.CompareAndSwap(0, 1) {
			// The leader applied it; the follower never hears so.
			panic(http.ErrAbortHandler)
		}
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	})
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	psrv := &http.Server{Handler: proxy, ErrorLog: slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)}
	go func() { _ = psrv.Serve(pln) }()
	t.Cleanup(func() { _ = psrv.Close() })

	// The journal says the leader's API is at the proxy.
	put := func(id, addr string) {
		r, err := j1.Propose(ctx, twopc.EncodeCommand(twopc.Command{Op: twopc.OpPutMember, Key: "m-" + id + "-" + addr,
			Member: &twopc.MemberInfo{ID: id, APIAddr: addr, RaftAddr: n1.Addr(), Voter: true}}))
		if err != nil || r.Err() != nil {
			t.Fatalf("put_member %s: %v %v", id, err, r.Err())
		}
	}
	put("n1", "http://"+pln.Addr().String())
	waitFor(t, "n2 to follow n1", func() bool { return n2.Status().LeaderID == "n1" })

	p2, err := newPeers(Config{NodeID: "n2"}, "")
	if err != nil {
		t.Fatal(err)
	}
	j2 := &raftJournal{n: n2, m: m2, peers: p2}
	cmd := twopc.EncodeCommand(twopc.Command{Op: twopc.OpPutJob, Key: "job-once",
		Spec: &twopc.JobSpec{Name: "fwd", Commit: twopc.ModeAuto, Sinks: []string{"a"}}})
	r, err := j2.Propose(ctx, cmd)
	if err != nil || r.Err() != nil {
		t.Fatalf("forwarded put_job: %+v %v", r, err)
	}
	if lost.Load() != 1 || calls.Load() < 2 {
		t.Fatalf("proxy saw %d calls, lost %d answers; want the first lost and a retry", calls.Load(), lost.Load())
	}
	if !r.Duplicate || r.Index == 0 {
		t.Errorf("retry result %+v: want the stored first result (duplicate, its index)", r)
	}
	if _, ok := m2.JobSpec("fwd"); !ok {
		t.Errorf("the follower's machine lacks the job right after Propose returned")
	}
	if applied := n2.Status().AppliedIndex; applied < r.Index {
		t.Errorf("follower applied %d < result index %d", applied, r.Index)
	}
	// The same key again: the same first result.
	again, err := j2.Propose(ctx, cmd)
	if err != nil || !again.Duplicate || again.Index != r.Index {
		t.Errorf("third proposal of the key: %+v %v, want duplicate at %d", again, err, r.Index)
	}
	// A refused command comes back as the journal's code, not an error.
	bad, err := j2.Propose(ctx, twopc.EncodeCommand(twopc.Command{Op: twopc.OpOpenSession, Key: "nojob", Job: "nope", Writer: "w"}))
	if err != nil || bad.Code != "job_not_found" {
		t.Errorf("forwarded refused command: %+v %v, want code job_not_found", bad, err)
	}

	// Without a leader's API (the member entry points nowhere), Propose
	// keeps retrying and ends with its context, keeping the cause.
	put("n1", "http://127.0.0.1:1")
	waitFor(t, "n2 to apply the new address", func() bool { m, _ := m2.Member("n1"); return m.APIAddr == "http://127.0.0.1:1" })
	short, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel2()
	_, err = j2.Propose(short, twopc.EncodeCommand(twopc.Command{Op: twopc.OpRelease, Key: "unreachable"}))
	if err == nil || !errorsIsAll(err, context.DeadlineExceeded, twopc.ErrUnavailable) {
		t.Errorf("proposal with an unreachable leader API: %v, want the deadline and the cause (unavailable)", err)
	}
}

func errorsIsAll(err error, targets ...error) bool {
	for _, t := range targets {
		if !errors.Is(err, t) {
			return false
		}
	}
	return true
}

// waitFor polls cond every 10 ms for at most 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
