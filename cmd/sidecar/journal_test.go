package main

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/txsink/txsink/raftlog"
	"github.com/txsink/txsink/twopc"
)

// TestRaftJournal checks the adapter over a real single raft node: results
// carry the log index, a repeated key returns the first result, and a
// domain error comes back as its code and turns into the sentinel again.
func TestRaftJournal(t *testing.T) {
	m := twopc.NewMachine()
	n := singleNode(t, m)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := n.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	j := &raftJournal{n: n, m: m}
	put := twopc.EncodeCommand(twopc.Command{Op: twopc.OpPutJob, Key: "k1",
		Spec: &twopc.JobSpec{Name: "j", Commit: twopc.ModeAuto, Sinks: []string{"a"}}})
	open := twopc.EncodeCommand(twopc.Command{Op: twopc.OpOpenSession, Key: "k2", Job: "j", Writer: "w"})

	r1, err := j.Propose(ctx, put)
	if err != nil || r1.Err() != nil {
		t.Fatalf("put_job: %v %v", err, r1.Err())
	}
	r2, err := j.Propose(ctx, open)
	if err != nil || r2.Err() != nil || r2.Session.Epoch != 1 {
		t.Fatalf("open_session: got %+v %v, want epoch 1", r2, err)
	}
	if r1.Index == 0 || r2.Index <= r1.Index {
		t.Fatalf("got indexes %d then %d, want increasing and above 0", r1.Index, r2.Index)
	}
	if last := n.Status().LastIndex; r2.Index > last {
		t.Errorf("got index %d, want at most the log's last index %d", r2.Index, last)
	}
	again, err := j.Propose(ctx, open)
	if err != nil || !again.Duplicate || again.Index != r2.Index || again.Session.Epoch != 1 {
		t.Fatalf("repeated open_session: got %+v %v, want the first result (index %d, epoch 1) marked duplicate", again, err, r2.Index)
	}
	bad, err := j.Propose(ctx, twopc.EncodeCommand(twopc.Command{Op: twopc.OpOpenSession, Key: "k3", Job: "nope", Writer: "w"}))
	if err != nil || bad.Code != "job_not_found" || !errors.Is(bad.Err(), twopc.ErrJobNotFound) {
		t.Fatalf("unknown job: got %+v %v, want code job_not_found", bad, err)
	}
}

// singleNode opens a bootstrapped one-node journal over m in a temp dir,
// closed when the test ends.
func singleNode(t *testing.T, m *twopc.Machine) *raftlog.Node {
	t.Helper()
	n, err := raftlog.Open(raftlog.Config{Dir: t.TempDir(), BindAddr: "127.0.0.1:0", Bootstrap: true,
		Logger: slog.New(slog.DiscardHandler)}, m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}
