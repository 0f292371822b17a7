package systemtest

// Cluster system tests: 3- and 5-node clusters of real `sidecar run`
// processes (cluster_harness_test.go) with writers that keep checkpointing
// into Kafka and MySQL (cluster_app_test.go) while nodes are killed,
// partitioned (faultproxy_test.go), joined and removed. Each test prints
// what it measures and ends with the exactly-once check: every record once
// in Kafka (read_committed, franz-go and kcat) and in MySQL, nothing
// unresolved in GET /v1/jobs/{job}/checkpoints, no XA RECOVER branch of the
// job (the at_least_once test: every record at least once, nothing else).
//
// Run: go test ./systemtest -run 'TestCluster' -v   (about 2 minutes)

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

// putJob creates the test's job through n, retrying while the cluster has
// no leader (503), bounded.
func (c *tcluster) putJob(n *cnode, mode twopc.Mode) {
	c.t.Helper()
	c.putJobSpec(n, api.JobRequest{Commit: mode})
}

// putJobSpec is putJob with a whole spec (a guarantee, say).
func (c *tcluster) putJobSpec(n *cnode, spec api.JobRequest) {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := n.api.PutJobSpec(ctx, c.db.job, spec)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("PUT job %s on %s: %v", c.db.job, n.id, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestClusterKillLeader: kill -9 the leader of 3 nodes while two writers on
// the other two nodes checkpoint, in both commit modes. A new leader must
// be elected within 2 s and the writers carry on.
func TestClusterKillLeader(t *testing.T) {
	for _, mode := range []twopc.Mode{twopc.ModeAuto, twopc.ModeExternal} {
		t.Run(string(mode), func(t *testing.T) {
			c := newTCluster(t)
			ns := c.startCluster(3)
			leader := c.leader(ns)
			fs := others(ns, leader)
			c.putJob(fs[0], mode)
			apps := []*app{newApp(t, c.db.job, mode, "0", fs[0]), newApp(t, c.db.job, mode, "1", fs[1])}
			for _, a := range apps {
				a.start()
			}
			progress(t, apps, 5, 20*time.Second, "before the kill")

			t0 := time.Now()
			leader.kill()
			nl, d := c.waitNewLeader(fs, leader.id, t0, 10*time.Second)
			t.Logf("kill -9 of leader %s: %s leads after %v (polling GET /v1/cluster every 20 ms)", leader.id, nl, d.Round(time.Millisecond))
			if d >= 2*time.Second {
				t.Errorf("new leader after %v, want < 2s", d)
			}
			dp := progress(t, apps, 5, 20*time.Second, "after the kill")
			t.Logf("both writers made 5 more checkpoints %v after the new leader was seen (%v after the kill)",
				dp.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
			for _, a := range apps {
				a.halt()
			}
			c.checkExactlyOnce(fs[0], apps...)
		})
	}
}

// TestClusterKillOwnerAfterJournal: the node owning a writer dies (a
// failpoint SIGKILLs it) right after its checkpoint was journaled, before
// any commit. The leader takes the writer over and commits the checkpoint
// without any application call; the writer then reopens on the third node
// and resumes from exactly that checkpoint and state. The dead node comes
// back at the end and must change nothing.
func TestClusterKillOwnerAfterJournal(t *testing.T) {
	c := newTCluster(t)
	ns := c.startCluster(3)
	leader := c.leader(ns)
	fs := others(ns, leader)
	owner, third := fs[0], fs[1]
	// Restart the owner with the failpoint: the 4th checkpoint dies after
	// its journal entry. It rejoins with its raft state.
	owner.kill()
	owner.launch(nil, "TXSINK_FAILPOINT=after-journal:4")
	owner.waitReady()
	c.putJob(owner, twopc.ModeAuto)
	a := newApp(t, c.db.job, twopc.ModeAuto, "0", owner)
	a.start()
	if !owner.waitExit(30 * time.Second) {
		t.Fatalf("%s did not reach the failpoint within 30s (checkpoints ok: %d, errors: %s)", owner.id, a.ok.Load(), a.errSummary())
	}
	t0 := time.Now()
	if !strings.Contains(owner.logs.String(), "failpoint after-journal reached") {
		t.Fatalf("%s exited, but not at the failpoint:\n%s", owner.id, tail(owner.logs, 40))
	}
	// Checkpoints 1–3 committed, 4 journaled: positions 0..19 decided.
	const wantCP, wantPos = 4, 20
	if got := a.ok.Load(); got != wantCP-1 {
		t.Fatalf("app saw %d checkpoints answered before the failpoint, want %d", got, wantCP-1)
	}
	// The app keeps trying its dead node meanwhile (connection refused);
	// the leader must finish checkpoint 4 by itself.
	var want []string
	for i := range wantPos {
		want = append(want, a.value(i))
	}
	c.db.waitRows(want, 30*time.Second)
	dRows := time.Since(t0)
	wantExactlyTopic(t, c.broker, clusterTopic, want)
	t.Logf("owner %s killed after the journal entry of checkpoint %d: its 20 rows and 20 Kafka records committed %v later, with no app call",
		owner.id, wantCP, dRows.Round(time.Millisecond))
	if !strings.Contains(leader.logs.String(), "taking over a writer") {
		t.Errorf("leader %s's log does not show the takeover ('taking over a writer')", leader.id)
	}

	t1 := time.Now()
	a.moveTo(third)
	progress(t, []*app{a}, 3, 20*time.Second, "after the move")
	first := a.firstOpenOn(third)
	t.Logf("writer reopened on %s %v after the move: checkpoint %d, position %d, epoch %d",
		third.id, first.at.Sub(t1).Round(time.Millisecond), first.checkpoint, first.pos, first.epoch)
	if first.checkpoint != wantCP || first.pos != wantPos {
		t.Errorf("reopen on %s restored checkpoint %d position %d, want %d and %d", third.id, first.checkpoint, first.pos, wantCP, wantPos)
	}

	// The dead node comes back (no failpoint): it must not act for the
	// writer it lost.
	owner.launch(nil)
	owner.waitReady()
	progress(t, []*app{a}, 3, 20*time.Second, "after the old owner's restart")
	a.halt()
	c.checkExactlyOnce(third, a)
	c.waitNoUnresolved(owner, 10*time.Second)
}

// TestClusterAtLeastOnceKillOwner: an at_least_once job in a 3-node
// cluster. The follower that owns the writer is killed with SIGKILL while
// the app writes and checkpoints; the app reopens on the other follower and
// resumes from the state it restores. The killed node comes back and must
// change nothing. At the end every value up to the journal's committed
// position is in Kafka and MySQL at least once and nothing else is; the
// duplicates (records the killed node had written after its last journaled
// checkpoint, written again by the replay) are counted. Such a job never
// has a transaction in a sink, so nothing is unresolved and no XA branch
// is left.
func TestClusterAtLeastOnceKillOwner(t *testing.T) {
	c := newTCluster(t)
	ns := c.startCluster(3)
	leader := c.leader(ns)
	fs := others(ns, leader)
	owner, third := fs[0], fs[1]
	c.putJobSpec(owner, api.JobRequest{Commit: twopc.ModeAuto, Guarantee: twopc.GuaranteeAtLeastOnce})
	a := newApp(t, c.db.job, twopc.ModeAuto, "0", owner)
	a.start()
	progress(t, []*app{a}, 5, 20*time.Second, "before the kill")

	owner.kill()
	a.moveTo(third)
	d := progress(t, []*app{a}, 5, 20*time.Second, "after the kill")
	t.Logf("owner %s killed; the writer made 5 more checkpoints on %s within %v", owner.id, third.id, d.Round(time.Millisecond))
	reopened := a.firstOpenOn(third)
	t.Logf("reopened on %s: checkpoint %d, position %d, epoch %d", third.id, reopened.checkpoint, reopened.pos, reopened.epoch)

	owner.launch(nil)
	owner.waitReady()
	progress(t, []*app{a}, 3, 20*time.Second, "after the old owner's restart")
	a.halt()
	kDups, mDups := c.checkAtLeastOnce(third, a)
	t.Logf("at_least_once across a node kill: %d duplicates in Kafka, %d in MySQL, none missing", kDups, mDups)
	info, err := third.api.Job(tctx(t), c.db.job)
	if err != nil || info.Guarantee != twopc.GuaranteeAtLeastOnce {
		t.Fatalf("job at the end: %+v %v", info, err)
	}
}

// TestClusterPartition: a follower that owns a writer is cut off from the
// other two (raft and API traffic both ways). It must not commit anything
// the majority did not decide; the writer reopens on the majority side and
// goes on; after the partition heals the node rejoins and holds nothing.
func TestClusterPartition(t *testing.T) {
	c := newTCluster(t)
	ns := c.startCluster(3)
	leader := c.leader(ns)
	fs := others(ns, leader)
	cut, other := fs[0], fs[1]
	c.putJob(other, twopc.ModeAuto)
	w := newApp(t, c.db.job, twopc.ModeAuto, "0", cut)   // on the node to be cut off
	v := newApp(t, c.db.job, twopc.ModeAuto, "1", other) // on the majority side
	apps := []*app{w, v}
	for _, a := range apps {
		a.start()
	}
	progress(t, apps, 5, 20*time.Second, "before the partition")
	oldEpoch := w.openLog()[len(w.openLog())-1].epoch

	t0 := time.Now()
	c.net.isolate(cut.id)
	okAtCut := w.ok.Load()
	// The cut-off node loses its leader (no contact) and so its lease.
	var lost time.Duration
	for deadline := t0.Add(10 * time.Second); ; {
		vw, err := cut.view(300 * time.Millisecond)
		if err == nil && vw.Leader == "" {
			lost = time.Since(t0)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still names a leader 10s into the partition (err %v)", cut.id, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	progress(t, []*app{v}, 5, 20*time.Second, "majority side during the partition")
	time.Sleep(2*time.Second - time.Since(t0)) // past the 1.5 s lease
	okCut := w.ok.Load() - okAtCut
	t.Logf("partition of %s: it reports no leader %v later; writer 0 on it got %d checkpoints answered ok after the cut (errors so far: %s)",
		cut.id, lost.Round(time.Millisecond), okCut, w.errSummary())
	if okCut > 1 {
		t.Errorf("writer 0 got %d checkpoints answered ok on the cut-off node; at most the one in flight may finish", okCut)
	}

	t1 := time.Now()
	w.moveTo(other)
	dm := progress(t, []*app{w}, 5, 30*time.Second, "writer 0 after moving to the majority")
	var opened time.Duration
	for _, o := range w.openLog() {
		if o.node == other.id && o.at.After(t1) {
			opened = o.at.Sub(t1)
			break
		}
	}
	t.Logf("writer 0 moved to %s: session open answered %v after the move (the handover waits out the cut-off node's lease), 5 checkpoints after %v",
		other.id, opened.Round(time.Millisecond), dm.Round(time.Millisecond))

	c.net.heal(cut.id)
	t2 := time.Now()
	lv, err := leader.view(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := t2.Add(20 * time.Second); ; {
		vw, err := cut.view(300 * time.Millisecond)
		if err == nil && vw.Leader != "" && vw.Leader != cut.id && vw.Applied >= lv.LastIndex {
			t.Logf("partition healed: %s follows %s again and applied index %d ≥ %d after %v",
				cut.id, vw.Leader, vw.Applied, lv.LastIndex, time.Since(t2).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not rejoin within 20s of the heal: %+v %v", cut.id, vw, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	refused, unknown := c.net.counts()
	t.Logf("fault proxies refused %d connections during the partition (%d with an unknown sender)", refused, unknown)
	if refused == 0 {
		t.Error("the partition refused no connection: the test did not cut anything")
	}
	// The old node holds no session of writer 0: a write with the epoch
	// it held is refused, whoever answers it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_, err = cut.api.Write(ctx, c.db.job, "0", oldEpoch, nil, w.records(1_000_000, 1_000_001))
	cancel()
	if code := client.Code(err); code != "session_fenced" && code != "session_lost" {
		t.Errorf("write with the old epoch %d on the healed node: %v, want 409 session_fenced or session_lost", oldEpoch, err)
	}
	progress(t, apps, 3, 20*time.Second, "after the heal")
	for _, a := range apps {
		a.halt()
	}
	c.checkExactlyOnce(other, apps...)
	c.waitNoUnresolved(cut, 10*time.Second)
}

// TestClusterMembershipChanges: while two writers checkpoint, a 4th voter
// joins, a non-voter joins and leaves on SIGTERM, a voter is removed with
// DELETE /v1/cluster/nodes/{id}, and a writer moves to the joined node.
func TestClusterMembershipChanges(t *testing.T) {
	c := newTCluster(t)
	ns := c.startCluster(3)
	leader := c.leader(ns)
	fs := others(ns, leader)
	keep, gone := fs[0], fs[1]
	c.putJob(keep, twopc.ModeAuto)
	apps := []*app{newApp(t, c.db.job, twopc.ModeAuto, "0", leader), newApp(t, c.db.job, twopc.ModeAuto, "1", keep)}
	for _, a := range apps {
		a.start()
	}
	progress(t, apps, 3, 20*time.Second, "before the changes")

	t0 := time.Now()
	n4 := c.addNode("n4")
	n4.launch([]string{"--join", joinArg(ns...)})
	n4.waitReady()
	all4 := append(append([]*cnode{}, ns...), n4)
	c.waitMembers(all4, map[string]bool{"n1": true, "n2": true, "n3": true, "n4": true}, 20*time.Second)
	t.Logf("n4 joined as a voter: ready and seen by all 4 after %v", time.Since(t0).Round(time.Millisecond))
	progress(t, apps, 3, 20*time.Second, "after n4 joined")

	t0 = time.Now()
	n5 := c.addNode("n5")
	n5.launch([]string{"--join", joinArg(ns...), "--voter=false"})
	n5.waitReady()
	all5 := append(append([]*cnode{}, all4...), n5)
	c.waitMembers(all5, map[string]bool{"n1": true, "n2": true, "n3": true, "n4": true, "n5": false}, 20*time.Second)
	t.Logf("n5 joined as a non-voter after %v", time.Since(t0).Round(time.Millisecond))
	progress(t, apps, 3, 20*time.Second, "after n5 joined")

	t0 = time.Now()
	if err := n5.signal(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if st := n5.cmd.ProcessState; st == nil || !st.Success() {
		t.Errorf("n5 after SIGTERM: %v, want exit status 0", st)
	}
	c.waitMembers(all4, map[string]bool{"n1": true, "n2": true, "n3": true, "n4": true}, 20*time.Second)
	t.Logf("n5 left on SIGTERM: gone from the members after %v", time.Since(t0).Round(time.Millisecond))
	progress(t, apps, 3, 20*time.Second, "after n5 left")

	t0 = time.Now()
	code, body, err := n4.apiCall(http.MethodDelete, "/v1/cluster/nodes/"+gone.id, "")
	if err != nil || code != http.StatusOK {
		t.Fatalf("DELETE /v1/cluster/nodes/%s on n4: %d %s %v", gone.id, code, body, err)
	}
	rest := others(all4, gone)
	want := map[string]bool{}
	for _, n := range rest {
		want[n.id] = true
	}
	c.waitMembers(rest, want, 20*time.Second)
	t.Logf("voter %s removed through n4: members %v after %v", gone.id, want, time.Since(t0).Round(time.Millisecond))
	if err := gone.signal(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Error(err)
	}
	progress(t, apps, 3, 20*time.Second, "after the removal")

	apps[1].moveTo(n4)
	dm := progress(t, apps[1:], 3, 20*time.Second, "writer 1 on n4")
	t.Logf("writer 1 moved from %s to n4: 3 checkpoints %v later", keep.id, dm.Round(time.Millisecond))
	for _, a := range apps {
		a.halt()
	}
	c.checkExactlyOnce(n4, apps...)
}

// TestClusterFiveNodesLoseTwo: 5 voters; kill -9 the leader and another
// node at once. The 3 left keep the quorum, elect a leader and the writers
// on them finish exactly once.
func TestClusterFiveNodesLoseTwo(t *testing.T) {
	c := newTCluster(t)
	ns := c.startCluster(5)
	leader := c.leader(ns)
	fs := others(ns, leader)
	c.putJob(fs[0], twopc.ModeAuto)
	apps := []*app{newApp(t, c.db.job, twopc.ModeAuto, "0", fs[0]), newApp(t, c.db.job, twopc.ModeAuto, "1", fs[1])}
	for _, a := range apps {
		a.start()
	}
	progress(t, apps, 5, 20*time.Second, "before the kills")

	victim := fs[3]
	t0 := time.Now()
	leader.kill()
	victim.kill()
	survivors := others(ns, leader, victim)
	nl, d := c.waitNewLeader(survivors, leader.id, t0, 10*time.Second)
	t.Logf("kill -9 of leader %s and %s: %s leads after %v", leader.id, victim.id, nl, d.Round(time.Millisecond))
	if d >= 2*time.Second {
		t.Errorf("new leader after %v, want < 2s", d)
	}
	dp := progress(t, apps, 5, 20*time.Second, "after the kills")
	t.Logf("both writers made 5 more checkpoints %v after the new leader was seen", dp.Round(time.Millisecond))
	for _, a := range apps {
		a.halt()
	}
	c.checkExactlyOnce(fs[0], apps...)
}

// TestFaultProxyFindsSender checks the partition tool itself: a proxy
// tells which registered process a connection comes from, and an isolated
// sender's connections are refused while others pass.
func TestFaultProxyFindsSender(t *testing.T) {
	fn := newFaultNet(t)
	echo := freeAddr(t)
	ln, err := net.Listen("tcp", echo)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveEcho(ln)
	p := fn.proxy("echo", "echo", echo)
	fn.register(os.Getpid(), "self")
	if got := roundTrip(p.Addr()); got != "ping" {
		t.Fatalf("through the proxy: got %q, want ping", got)
	}
	fn.isolate("self")
	if got := roundTrip(p.Addr()); got != "" {
		t.Fatalf("isolated sender got %q through, want the connection refused", got)
	}
	refused, unknown := fn.counts()
	if refused != 1 || unknown != 0 {
		t.Fatalf("refused %d, unknown %d; want 1 refused with the sender found", refused, unknown)
	}
	fn.heal("self")
	if got := roundTrip(p.Addr()); got != "ping" {
		t.Fatalf("after heal: got %q, want ping", got)
	}
}

// serveEcho answers each line with itself.
func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				if _, err := c.Write(append(sc.Bytes(), '\n')); err != nil {
					return
				}
			}
		}()
	}
}

// roundTrip sends "ping" to addr and returns the answer ("" when the
// connection was refused or closed).
func roundTrip(addr string) string {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return ""
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return ""
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return ""
	}
	return strings.TrimSpace(line)
}

// TestClusterJobVisibleOnEveryNode: an application creates its job through
// one node and opens its writers' sessions on the others, as the README's
// walk-through does on one node. Every open right after the PUT must find
// the job: a 404 job_not_found for a job the cluster has (the other node's
// copy of the journal lags a few milliseconds) is not an answer an app
// retries (it is not among the README's retryable answers).
func TestClusterJobVisibleOnEveryNode(t *testing.T) {
	c := newTCluster(t)
	ns := c.startCluster(3)
	const rounds = 30
	var notFound []string
	t0 := time.Now()
	for i := range rounds {
		job := fmt.Sprintf("%s-v%02d", c.db.job, i)
		via, to := ns[i%3], ns[(i+1)%3]
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := via.api.PutJob(ctx, job, twopc.ModeAuto, []string{"events"}); err != nil {
			cancel()
			t.Fatalf("PUT %s on %s: %v", job, via.id, err)
		}
		_, err := to.api.OpenSession(ctx, job, "0", nil)
		cancel()
		switch {
		case client.Code(err) == "job_not_found":
			notFound = append(notFound, fmt.Sprintf("%s→%s", via.id, to.id))
		case err != nil:
			t.Fatalf("open %s/0 on %s right after PUT on %s: %v", job, to.id, via.id, err)
		}
	}
	t.Logf("%d job PUTs each followed by a session open on another node (%v): %d answered 404 job_not_found %v",
		rounds, time.Since(t0).Round(time.Millisecond), len(notFound), notFound)
	if len(notFound) > 0 {
		t.Errorf("%d of %d session opens right after the job's PUT on another node answered job_not_found", len(notFound), rounds)
	}
}
