package twopc_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// nodes are coordinators of several nodes over one journal (a replicated
// log whose every copy is up to date at once) and shared sinks (one Kafka,
// one database): what differs per node is its sessions, its held branches
// and whether it runs.
type nodes struct {
	t     *testing.T
	j     *twopctest.Journal
	s     *twopctest.Sink
	c     map[string]*twopc.Coordinator
	lease map[string]*atomic.Bool
	stop  map[string]context.CancelFunc
}

const (
	testHandover = 300 * time.Millisecond
	testTakeover = 200 * time.Millisecond
)

func newNodes(t *testing.T, ids ...string) *nodes {
	return newNodesTakeover(t, testTakeover, ids...)
}

// newNodesTakeover is newNodes with another TakeoverAfter.
func newNodesTakeover(t *testing.T, takeover time.Duration, ids ...string) *nodes {
	n := &nodes{t: t, j: twopctest.NewJournal(twopc.NewMachine()), s: twopctest.NewSink("s", 4),
		c: map[string]*twopc.Coordinator{}, lease: map[string]*atomic.Bool{}, stop: map[string]context.CancelFunc{}}
	leader := ids[0]
	for _, id := range ids {
		lease := &atomic.Bool{}
		lease.Store(true)
		c, err := twopc.NewCoordinator(twopc.Config{
			Node: id, Journal: n.j, Machine: n.j.Machine(), Sinks: map[string]twopc.Sink{"s": n.s},
			RetryInterval: 10 * time.Millisecond, IsLeader: func() bool { return id == leader },
			Lease: lease.Load, HandoverWait: testHandover, TakeoverAfter: takeover,
		})
		if err != nil {
			t.Fatal(err)
		}
		n.c[id], n.lease[id] = c, lease
	}
	if _, err := n.c[leader].PutJob(context.Background(), twopc.JobSpec{Name: "j", Commit: twopc.ModeExternal, Sinks: []string{"s"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.c[leader].PutJob(context.Background(), twopc.JobSpec{Name: "auto", Commit: twopc.ModeAuto, Sinks: []string{"s"}}); err != nil {
		t.Fatal(err)
	}
	return n
}

// run starts a node's background loop (a live node); kill stops it (a dead
// node keeps its memory here but does nothing by itself).
func (n *nodes) run(id string) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.c[id].Run(ctx); close(done) }()
	n.stop[id] = func() { cancel(); <-done }
	n.t.Cleanup(func() { n.kill(id) })
}

func (n *nodes) kill(id string) {
	if stop := n.stop[id]; stop != nil {
		stop()
		delete(n.stop, id)
	}
}

// openWrite opens writer w of job on node id and writes one record v.
func (n *nodes) openWrite(id, job, v string) twopc.SessionInfo {
	n.t.Helper()
	ctx := context.Background()
	s, err := n.c[id].OpenSession(ctx, job, "w", nil)
	if err != nil {
		n.t.Fatal(err)
	}
	if _, err := n.c[id].Write(ctx, job, "w", s.Epoch, nil, recs("s", v)); err != nil {
		n.t.Fatal(err)
	}
	return s
}

func (n *nodes) owner(job, writer string) (string, uint64, uint64) {
	o, e, r, _ := n.j.Machine().Owner(job, writer)
	return o, e, r
}

// TestSessionMovesAndOldOwnerLetsGo: an app reopens its writer on node b
// while node a holds a session with an open branch. Node a learns it from
// the journal by itself: it aborts the open branch (no call of the app
// needed) and releases the writer, so b proceeds without waiting out the
// lease; a's old session answers session_fenced.
func TestSessionMovesAndOldOwnerLetsGo(t *testing.T) {
	n := newNodes(t, "a", "b")
	n.run("a")
	ctx := context.Background()
	sa := n.openWrite("a", "auto", "x1")
	if got := len(n.s.Branches(twopctest.Open)); got != 1 {
		t.Fatalf("open branches: %d, want 1", got)
	}
	t0 := time.Now()
	sb, err := n.c["b"].OpenSession(ctx, "auto", "w", nil)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	if took >= testHandover {
		t.Errorf("open on b took %v: a live owner releases, so b must not wait out the handover (%v)", took, testHandover)
	}
	if owner, epoch, released := n.owner("auto", "w"); owner != "b" || epoch != sb.Epoch || released < sa.Epoch {
		t.Fatalf("journal: owner %s epoch %d released %d; want b, %d, ≥ %d", owner, epoch, released, sb.Epoch, sa.Epoch)
	}
	if got := len(n.s.Branches(twopctest.Open)); got != 0 {
		t.Fatalf("a's open branch not aborted: %d open", got)
	}
	_, err = n.c["a"].Write(ctx, "auto", "w", sa.Epoch, nil, recs("s", "x2"))
	if !errors.Is(err, twopc.ErrSessionFenced) {
		t.Fatalf("old session's write on a: %v, want session_fenced", err)
	}
	if _, err := n.c["b"].Write(ctx, "auto", "w", sb.Epoch, nil, recs("s", "y1")); err != nil {
		t.Fatal(err)
	}
	if _, err := n.c["b"].Checkpoint(ctx, "auto", "w", sb.Epoch, 1, nil, ""); err != nil {
		t.Fatal(err)
	}
	wantValues(t, n.s, "y1")
}

// TestHandoverWaitsForASilentOwner: the old owner does not run (dead or cut
// off): the new owner acts only after the handover wait, which exceeds the
// old owner's lease.
func TestHandoverWaitsForASilentOwner(t *testing.T) {
	n := newNodes(t, "a", "b")
	ctx := context.Background()
	if _, err := n.c["a"].OpenSession(ctx, "auto", "w", nil); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if _, err := n.c["b"].OpenSession(ctx, "auto", "w", nil); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took < testHandover {
		t.Fatalf("open on b took %v; it must wait %v for the silent owner", took, testHandover)
	}
	// Opening on b again waits again: a never released, and the second
	// grant's previous owner on another node is still a.
	t0 = time.Now()
	if _, err := n.c["b"].OpenSession(ctx, "auto", "w", nil); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took < testHandover {
		t.Fatalf("second open on b took %v; a has still not released", took)
	}
}

// TestLeaderFinishesDeadOwnersDecision: node b prepares a checkpoint of an
// external job and dies before the commit. The commit is decided on node a
// (the leader), which takes the writer over after TakeoverAfter, finishes
// the branch from its journaled handle and answers committed. When b comes
// back, its word about the branch no longer counts.
func TestLeaderFinishesDeadOwnersDecision(t *testing.T) {
	n := newNodes(t, "a", "b", "c")
	n.run("a")
	ctx := context.Background()
	sb := n.openWrite("b", "j", "v1")
	if _, err := n.c["b"].Checkpoint(ctx, "j", "w", sb.Epoch, 1, []byte("st1"), twopc.WaitPrepared); err != nil {
		t.Fatal(err)
	}
	// b is dead from here on: it never runs, never finishes.
	t0 := time.Now()
	res, err := n.c["a"].Commit(ctx, "j", 1)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != twopc.StatusCommitted {
		t.Fatalf("commit: %+v, want committed (a takes over the dead owner's writer)", res)
	}
	if took := time.Since(t0); took < testTakeover {
		t.Fatalf("commit took %v: a took over before TakeoverAfter (%v)", took, testTakeover)
	}
	wantValues(t, n.s, "v1")
	if owner, _, _ := n.owner("j", "w"); owner != "a" {
		t.Fatalf("owner after takeover: %s, want a", owner)
	}
	// b's finishing loop, if it ever ran, finds nothing it may finish.
	n.c["b"].RecoverDecided(ctx)
	wantValues(t, n.s, "v1")
	// The writer reopens on c and resumes from checkpoint 1.
	sc, err := n.c["c"].OpenSession(ctx, "j", "w", nil)
	if err != nil {
		t.Fatal(err)
	}
	if sc.Checkpoint != 1 || string(sc.State) != "st1" || sc.Status != twopc.StatusCommitted {
		t.Fatalf("reopen on c: %+v, want checkpoint 1 committed with state st1", sc)
	}
}

// TestOnlyTheOwnersOutcomeCounts is the finishing rule in the journal: a
// RESOLVED entry from a node that does not own the writer changes nothing.
func TestOnlyTheOwnersOutcomeCounts(t *testing.T) {
	n := newNodes(t, "a", "b")
	ctx := context.Background()
	sa := n.openWrite("a", "j", "v1")
	cp, err := n.c["a"].Checkpoint(ctx, "j", "w", sa.Epoch, 1, nil, twopc.WaitPrepared)
	if err != nil {
		t.Fatal(err)
	}
	p := n.j.Machine().Pending("j")
	if len(p) != 1 || cp.Status != twopc.StatusPrepared {
		t.Fatalf("pending %v, checkpoint %+v", p, cp)
	}
	id := p[0].Branch.ID
	cmd := twopc.Command{Op: twopc.OpResolved, Key: "forged-1", Job: "j", Node: "b", Outcomes: []twopc.BranchOutcome{{
		Writer: "w", Checkpoint: 1, Sink: id.Sink, Seq: id.Seq, Epoch: id.Epoch, Outcome: twopc.OutcomeAborted}}}
	r, err := n.j.Propose(ctx, twopc.EncodeCommand(cmd))
	if err != nil {
		t.Fatal(err)
	}
	if r.Ignored != 1 || len(n.j.Machine().Pending("j")) != 1 {
		t.Fatalf("resolved from a non-owner: result %+v, pending %d; want ignored and still pending", r, len(n.j.Machine().Pending("j")))
	}
	cmd.Key, cmd.Node = "owner-1", "a"
	if r, err = n.j.Propose(ctx, twopc.EncodeCommand(cmd)); err != nil || r.Ignored != 0 || len(n.j.Machine().Pending("j")) != 0 {
		t.Fatalf("resolved from the owner: %+v, %v; pending %d", r, err, len(n.j.Machine().Pending("j")))
	}
}

// TestLostLeaseStopsSessions: a node that lost contact with the leader
// stops its sessions by itself (open branches aborted) and takes no call.
func TestLostLeaseStopsSessions(t *testing.T) {
	n := newNodes(t, "a", "b")
	n.run("b")
	ctx := context.Background()
	sb := n.openWrite("b", "auto", "x1")
	n.lease["b"].Store(false)
	waitFor(t, func() bool { return len(n.s.Branches(twopctest.Open)) == 0 })
	if _, err := n.c["b"].Write(ctx, "auto", "w", sb.Epoch, nil, recs("s", "x2")); !errors.Is(err, twopc.ErrUnavailable) {
		t.Fatalf("write without lease: %v, want unavailable", err)
	}
	n.lease["b"].Store(true)
	if _, err := n.c["b"].Write(ctx, "auto", "w", sb.Epoch, nil, recs("s", "x3")); !errors.Is(err, twopc.ErrSessionFenced) && !errors.Is(err, twopc.ErrSessionLost) {
		t.Fatalf("write after the lease came back: %v, want the dropped session refused", err)
	}
}

// TestCommitOnAnotherNodeIsFinishedByTheOwner: an external commit decided
// on node b is finished by node a, the live owner, on its own connection
// (no takeover), and b's call waits for it and answers committed.
func TestCommitOnAnotherNodeIsFinishedByTheOwner(t *testing.T) {
	n := newNodes(t, "a", "b")
	n.run("a")
	n.run("b")
	ctx := context.Background()
	sa := n.openWrite("a", "j", "v1")
	if _, err := n.c["a"].Checkpoint(ctx, "j", "w", sa.Epoch, 1, nil, twopc.WaitPrepared); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	res, err := n.c["b"].Commit(ctx, "j", 1)
	if err != nil || res.Status != twopc.StatusCommitted {
		t.Fatalf("commit on b: %+v, %v", res, err)
	}
	if took := time.Since(t0); took >= testTakeover {
		t.Fatalf("commit took %v: the live owner should finish it without a takeover (%v)", took, testTakeover)
	}
	if owner, epoch, _ := n.owner("j", "w"); owner != "a" || epoch != sa.Epoch {
		t.Fatalf("owner %s epoch %d; want a still owning epoch %d", owner, epoch, sa.Epoch)
	}
	wantValues(t, n.s, "v1")
	// a's session goes on.
	if _, err := n.c["a"].Write(ctx, "j", "w", sa.Epoch, nil, recs("s", "v2")); err != nil {
		t.Fatal(err)
	}
}

// TestDeleteOnAnotherNodeTakesTheWriterFirst: deleting a writer through a
// node that does not own it takes it over first, so the owner's session
// (with an open branch) is fenced and drops by itself, and only then are
// the sinks fenced and the writer forgotten. The old session's checkpoint
// is refused; nothing it wrote commits.
func TestDeleteOnAnotherNodeTakesTheWriterFirst(t *testing.T) {
	n := newNodes(t, "a", "b")
	n.run("a")
	ctx := context.Background()
	sa := n.openWrite("a", "auto", "x1")
	deleted, err := n.c["b"].DeleteWriter(ctx, "auto", "w")
	if err != nil || !deleted {
		t.Fatalf("delete on b: %v, %v", deleted, err)
	}
	if _, ok := n.j.Machine().Writer("auto", "w"); ok {
		t.Fatal("the writer is still in the journal")
	}
	if got := len(n.s.Branches(twopctest.Open)); got != 0 {
		t.Fatalf("a's open branch survived the delete: %d open", got)
	}
	if _, err := n.c["a"].Checkpoint(ctx, "auto", "w", sa.Epoch, 1, nil, ""); err == nil {
		t.Fatal("the deleted writer's old session checkpointed")
	}
	wantValues(t, n.s)
}

// TestTakeoverGivesANewOwnerItsTime: a decided branch nobody can finish
// (the sink fails every commit) makes the leader take the writer over from its
// live owner after TakeoverAfter. When the app then reopens on that node,
// the new grant gets TakeoverAfter of its own: the leader must not take the
// writer back at once because the decision is old, which fenced the app's
// every new session (a CI failure: epoch 17 in 20 s).
func TestTakeoverGivesANewOwnerItsTime(t *testing.T) {
	// TakeoverAfter longer than the handover wait, as in production (5 s
	// and 2.5 s): counted from the decision, the leader took the writer
	// back as soon as its previous takeover's handover wait ended.
	const takeover = 2 * testHandover
	n := newNodesTakeover(t, takeover, "a", "b")
	n.run("a")
	n.run("b")
	ctx := context.Background()
	sb := n.openWrite("b", "j", "v1")
	if _, err := n.c["b"].Checkpoint(ctx, "j", "w", sb.Epoch, 1, nil, twopc.WaitPrepared); err != nil {
		t.Fatal(err)
	}
	n.s.SetFailFinish(twopctest.ErrInjected)
	t.Cleanup(func() { n.s.SetFailFinish(nil) })
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, _ = n.c["a"].Commit(cctx, "j", 1) // decided; finishing fails
	cancel()
	waitOwner := func(want string, within time.Duration) {
		t.Helper()
		for deadline := time.Now().Add(within); ; time.Sleep(5 * time.Millisecond) {
			if o, _, _ := n.owner("j", "w"); o == want {
				return
			}
			if time.Now().After(deadline) {
				o, e, _ := n.owner("j", "w")
				t.Fatalf("owner %s (epoch %d) after %v, want %s", o, e, within, want)
			}
		}
	}
	waitOwner("a", 5*time.Second) // the leader took over b's stuck writer

	// The app reopens on b: b is granted the writer and waits for a.
	opened := make(chan error, 1)
	go func() {
		_, err := n.c["b"].OpenSession(ctx, "j", "w", nil)
		opened <- err
	}()
	waitOwner("b", 5*time.Second)
	granted := time.Now()
	for time.Since(granted) < takeover*3/4 {
		if o, e, _ := n.owner("j", "w"); o != "b" {
			t.Fatalf("the leader took the writer back %v after b's grant (owner %s, epoch %d); TakeoverAfter is %v",
				time.Since(granted).Round(time.Millisecond), o, e, takeover)
		}
		time.Sleep(5 * time.Millisecond)
	}
	n.s.SetFailFinish(nil)
	select {
	case <-opened:
	case <-time.After(10 * time.Second):
		t.Fatal("open on b did not end within 10s after the sink recovered")
	}
	for deadline := time.Now().Add(5 * time.Second); len(n.j.Machine().Pending("j")) > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("branch still pending 5s after the sink recovered: %+v", n.j.Machine().Pending("j"))
		}
	}
	wantValues(t, n.s, "v1")
}
