package main

import (
	"context"
	"errors"
	"testing"

	"github.com/txsink/txsink/raftlog"
	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// TestNotLeaderReachesCaller checks the seam follower forwarding will use:
// a *raftlog.NotLeaderError from the journal comes out of the coordinator
// as ErrUnavailable with the leader's address still reachable by errors.As.
func TestNotLeaderReachesCaller(t *testing.T) {
	j := twopctest.NewJournal(twopc.NewMachine())
	c, err := twopc.NewCoordinator(twopc.Config{Node: "n2", Journal: j, Machine: j.Machine(),
		Sinks: map[string]twopc.Sink{"a": twopctest.NewSink("a", 1)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	j.Fail = &raftlog.NotLeaderError{LeaderID: "n1", LeaderAddr: "127.0.0.1:7001"}

	_, err = c.PutJob(context.Background(), twopc.JobSpec{Name: "j", Sinks: []string{"a"}})
	if !errors.Is(err, twopc.ErrUnavailable) || !errors.Is(err, raftlog.ErrNotLeader) {
		t.Fatalf("got %v, want ErrUnavailable and ErrNotLeader", err)
	}
	nl, ok := errors.AsType[*raftlog.NotLeaderError](err)
	if !ok {
		t.Fatalf("errors.As found no *raftlog.NotLeaderError in %v", err)
	}
	if nl.LeaderID != "n1" || nl.LeaderAddr != "127.0.0.1:7001" {
		t.Errorf("got leader %s at %s, want n1 at 127.0.0.1:7001", nl.LeaderID, nl.LeaderAddr)
	}
}
