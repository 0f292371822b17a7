package main

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// timeoutSink is a fake sink with a transaction timeout, like Kafka's.
type timeoutSink struct{ *twopctest.Sink }

func (timeoutSink) TransactionTimeout() time.Duration { return 42 * time.Second }

// The coordinator learns of a sink's transaction timeout (for its warning)
// and of a branch's expiry (to fail the session early) through optional
// methods; the metered wrappers the sidecar hands it must keep them.
func TestMeteredSinkKeepsOptionalMethods(t *testing.T) {
	x := newMetrics(twopc.NewMachine(), nil)
	s := x.wrapSinks(map[string]twopc.Sink{"events": timeoutSink{twopctest.NewSink("events", 2)}})["events"]
	to, ok := s.(interface{ TransactionTimeout() time.Duration })
	if !ok || to.TransactionTimeout() != 42*time.Second {
		t.Fatalf("wrapped sink: TransactionTimeout missing or changed (ok=%v)", ok)
	}
	b, err := s.Begin(context.Background(), twopc.BranchID{Job: "j", Writer: "w", Sink: "events", Epoch: 1, Seq: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.(interface{ Expired() error }); !ok {
		t.Fatal("wrapped branch: Expired missing")
	}
}

// End to end: a coordinator over metered sinks fails a session whose open
// branch expired, in its background loop, as it does over the bare sink.
func TestMeteredSinkExpiryFailsSession(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	x := newMetrics(twopc.NewMachine(), nil)
	fake := twopctest.NewSink("a", 2)
	j := twopctest.NewJournal(twopc.NewMachine())
	c, err := twopc.NewCoordinator(twopc.Config{Node: "n1", Journal: j, Machine: j.Machine(),
		Sinks: x.wrapSinks(map[string]twopc.Sink{"a": fake}), RetryInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if _, err := c.PutJob(ctx, twopc.JobSpec{Name: "j", Commit: twopc.ModeAuto}); err != nil {
		t.Fatal(err)
	}
	s, err := c.OpenSession(ctx, "j", "w", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(ctx, "j", "w", s.Epoch, nil, []*twopc.Record{{Sink: "a", Value: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	fake.ExpireOpen(fmt.Errorf("%w: fake: open too long", twopc.ErrSinkFailure))
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		// No records: the call answers from the session's state only.
		_, err := c.Write(ctx, "j", "w", s.Epoch, nil, nil)
		if errors.Is(err, twopc.ErrSinkFailure) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("session with an expired branch not failed by the loop (last answer %v)", err)
		}
		time.Sleep(time.Millisecond)
	}
	if got := fake.Branches(twopctest.Aborted); len(got) != 1 {
		t.Fatalf("aborted branches: got %v, want the expired one", got)
	}
	cancel()
	<-done
}

// detachSink is a fake sink whose branches count Detach calls, like the
// Kafka and MySQL sinks' branches (twopc.Detacher).
type detachSink struct {
	*twopctest.Sink
	detached *int
}

type detachBranch struct {
	twopc.Branch
	detached *int
}

func (b detachBranch) Detach() { *b.detached++ }

func (s detachSink) Begin(ctx context.Context, id twopc.BranchID) (twopc.Branch, error) {
	b, err := s.Sink.Begin(ctx, id)
	if err != nil {
		return nil, err
	}
	return detachBranch{b, s.detached}, nil
}

// A node that lost a writer detaches the prepared branches it holds, so the
// new owner can finish them (a MySQL branch cannot be finished elsewhere
// while its preparing connection lives). The coordinator finds Detach by a
// type assertion on the branch it got from the sink: the metered wrapper
// must keep it, or the real binary never detaches (the cluster partition
// test in systemtest found exactly that).
func TestMeteredBranchKeepsDetach(t *testing.T) {
	x := newMetrics(twopc.NewMachine(), nil)
	var n int
	s := x.wrapSinks(map[string]twopc.Sink{"db": detachSink{twopctest.NewSink("db", 2), &n}})["db"]
	b, err := s.Begin(context.Background(), twopc.BranchID{Job: "j", Writer: "w", Sink: "db", Epoch: 1, Seq: 1})
	if err != nil {
		t.Fatal(err)
	}
	d, ok := b.(twopc.Detacher)
	if !ok {
		t.Fatal("wrapped branch: Detach missing")
	}
	d.Detach()
	if n != 1 {
		t.Fatalf("Detach reached the sink's branch %d times, want 1", n)
	}
}

// A checkpoint's offsets reach the Kafka sink through twopc.OffsetSink
// (validation) and twopc.OffsetBranch (the branch's transaction), found by
// type assertions: the metered wrappers must pass both on, and refuse
// offsets for a sink that cannot take them (MySQL) as the coordinator does.
func TestMeteredSinkKeepsOffsets(t *testing.T) {
	x := newMetrics(twopc.NewMachine(), nil)
	fake := twopctest.NewOffsetSink("events", 2)
	fake.BadTopic = "nosuch"
	sinks := x.wrapSinks(map[string]twopc.Sink{"events": fake, "db": twopctest.NewSink("db", 2)})
	o := &twopc.Offsets{Sink: "events", Group: "g", Topics: map[string]map[int32]int64{"clicks": {0: 5}}}

	vs, ok := sinks["events"].(twopc.OffsetSink)
	if !ok {
		t.Fatal("wrapped Kafka-like sink: ValidateOffsets missing")
	}
	if err := vs.ValidateOffsets(o); err != nil {
		t.Fatalf("ValidateOffsets: %v", err)
	}
	bad := &twopc.Offsets{Sink: "events", Group: "g", Topics: map[string]map[int32]int64{"nosuch": {0: 1}}}
	if err := vs.ValidateOffsets(bad); !errors.Is(err, twopc.ErrInvalid) {
		t.Fatalf("ValidateOffsets of the sink's bad topic: %v, want the sink's ErrInvalid", err)
	}
	if err := sinks["db"].(twopc.OffsetSink).ValidateOffsets(o); !errors.Is(err, twopc.ErrInvalid) {
		t.Fatalf("ValidateOffsets on a sink without offsets: %v, want ErrInvalid", err)
	}

	id := twopc.BranchID{Job: "j", Writer: "w", Sink: "events", Epoch: 1, Seq: 1}
	b, err := sinks["events"].Begin(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	ob, ok := b.(twopc.OffsetBranch)
	if !ok {
		t.Fatal("wrapped branch: AddOffsets missing")
	}
	if err := ob.AddOffsets(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if got := fake.Offsets(id); got == nil || got.Group != "g" {
		t.Fatalf("the sink's branch holds offsets %+v, want group g's", got)
	}
	if _, err := b.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := fake.GroupOffsets("g"); got["clicks"][0] != 5 {
		t.Fatalf("after the commit group g has %v, want clicks/0 = 5", got)
	}

	dbb, err := sinks["db"].Begin(context.Background(), twopc.BranchID{Job: "j", Writer: "w", Sink: "db", Epoch: 1, Seq: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := dbb.(twopc.OffsetBranch).AddOffsets(context.Background(), o); err == nil {
		t.Fatal("AddOffsets on a branch that cannot carry offsets succeeded")
	}
}
