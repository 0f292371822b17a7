package main

// Cluster mode (CHAOS_NODES=3): three `sidecar run` nodes form one cluster
// (a cluster key file written here, --join of every node's API address,
// --bootstrap-expect N), the apps are spread over them (app i talks to node
// i mod N first and knows the others: pageviews-go's --sidecar takes every
// node's URL, and the Go client moves to the next node when one cannot be
// reached), and the rounds add node-kill: kill -9 of any node (the leader
// in the first node-kill round, then half of the time) and a restart on
// the same data dir after a short pause, as a StatefulSet would. A leader
// kill is measured: from the kill to the
// first checkpoint the journal decides after it (any writer), polled every
// 20 ms on the survivors; the end of the rounds prints min/median/max.
// The writers the killed node owned are followed too: when each commits a
// checkpoint again with another owner (the app moved to another node).

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/txsink/txsink/api/client"
)

// node is one `sidecar run` process of the cluster (in single mode the
// one sidecar, with id "chaos").
type node struct {
	id       string
	p        *proc
	httpAddr string
	raftAddr string
	cl       *client.Client // this node only (no other endpoints)
}

func (n *node) url() string { return "http://" + n.httpAddr }

// clustered reports whether the run has several nodes.
func (d *driver) clustered() bool { return d.cfg.nodes > 1 }

// nodeProcs is every sidecar process.
func (d *driver) nodeProcs() []*proc {
	ps := make([]*proc, 0, len(d.nodes))
	for _, n := range d.nodes {
		if n.p != nil {
			ps = append(ps, n.p)
		}
	}
	return ps
}

// isNode reports whether p is one of the sidecar processes.
func (d *driver) isNode(p *proc) bool { return slices.Contains(d.nodeProcs(), p) }

// appSidecar is app i's --sidecar: node i mod N first, then the others in
// order, so the apps start spread over the nodes and each can move.
func (d *driver) appSidecar(i int) string {
	var urls []string
	for k := range d.nodes {
		urls = append(urls, d.nodes[(i+k)%len(d.nodes)].url())
	}
	return strings.Join(urls, ",")
}

// startCluster writes the cluster key and every node's config, starts the
// nodes together (they find each other through --join and bootstrap once
// all N are there) and waits until each is ready.
func (d *driver) startCluster(ctx context.Context, addrs []string) error {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	keyFile := filepath.Join(d.dir, "cluster.key")
	if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		return err
	}
	var joins []string
	for i := range d.cfg.nodes {
		n := &node{id: fmt.Sprintf("n%d", i), httpAddr: addrs[2*i], raftAddr: addrs[2*i+1]}
		n.cl = client.New(n.url())
		d.nodes = append(d.nodes, n)
		joins = append(joins, n.url())
	}
	for _, n := range d.nodes {
		cfgPath := filepath.Join(d.dir, n.id+".yaml")
		extra := fmt.Sprintf("cluster_key_file: %s\njoin: %q\nbootstrap_expect: %d\n", keyFile, strings.Join(joins, ","), d.cfg.nodes)
		if err := d.writeNodeConfig(cfgPath, n, extra); err != nil {
			return err
		}
		n.p = newProc(n.id, filepath.Join(d.dir, n.id+".log"), filepath.Join(d.bin, "sidecar"), "run", "--config", cfgPath)
	}
	for _, n := range d.nodes {
		if err := n.p.start(); err != nil {
			return err
		}
	}
	for _, n := range d.nodes {
		if err := waitFor(ctx, 90*time.Second, n.id, n.p, func() bool { return d.nodeReady(ctx, n) }); err != nil {
			return err
		}
	}
	return nil
}

// nodeReady reports whether node n answers /readyz with 200 (a leader is
// known and its sinks answer).
func (d *driver) nodeReady(ctx context.Context, n *node) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return n.cl.Ready(ctx) == nil
}

// leader returns the index of the node that reports itself leader (-1:
// none does), asking every running node.
func (d *driver) leader(ctx context.Context) int {
	for i, n := range d.nodes {
		if !n.p.running() {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		st, err := n.cl.Cluster(cctx)
		cancel()
		if err == nil && st.Role == "leader" {
			return i
		}
	}
	return -1
}

// newLeader is the leader elected after the leader, node killed, was
// killed ("" while there is none): another node that a running node names
// leader, or the killed node itself once restarted and leading again (it
// starts as a follower, so leading means it won a later election). Another
// node naming the killed one may be stale (it has not noticed the death
// yet), so that does not count.
func (d *driver) newLeader(ctx context.Context, killed int) string {
	for i, n := range d.nodes {
		if !n.p.running() {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		st, err := n.cl.Cluster(cctx)
		cancel()
		switch {
		case err != nil:
		case i == killed && st.Role == "leader":
			return n.id
		case i != killed && st.Leader != "" && st.Leader != d.nodes[killed].id:
			return st.Leader
		}
	}
	return ""
}

// lastCommitted is every writer's last checkpoint decided to commit, the
// highest any of the given nodes reports (a follower's copy may lag), the
// writer's owner as the node reporting that checkpoint sees it, and
// whether any node answered.
func (d *driver) lastCommitted(ctx context.Context, idx []int) (map[string]int64, map[string]string, bool) {
	out, owner, ok := map[string]int64{}, map[string]string{}, false
	for _, i := range idx {
		n := d.nodes[i]
		if !n.p.running() {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		info, err := n.cl.Job(cctx, job)
		cancel()
		if err != nil {
			continue
		}
		ok = true
		for _, w := range info.Writers {
			if c, seen := out[w.Name]; !seen || w.LastCommitted > c {
				out[w.Name], owner[w.Name] = w.LastCommitted, w.Owner
			}
		}
	}
	return out, owner, ok
}

// owners maps each writer to the node that owns its session (as node i
// sees it).
func (d *driver) owners(ctx context.Context) map[string]string {
	out := map[string]string{}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if info, err := d.cl.Job(ctx, job); err == nil {
		for _, w := range info.Writers {
			out[w.Name] = w.Owner
		}
	}
	return out
}

// nodeKillRound kills one node with SIGKILL: the leader in the first
// node-kill round (so that even a short run measures a failover) and half
// of the time after that (when one is known), else any node.
func (d *driver) nodeKillRound(ctx context.Context) (string, error) {
	pause := time.Duration(500+d.rng.IntN(2000)) * time.Millisecond
	wantLeader := d.rng.IntN(2) == 0 || d.faultsOf[faultNodeKill] == 1
	pick := d.rng.IntN(len(d.nodes))
	target := pick
	if wantLeader {
		if l := d.leader(ctx); l >= 0 {
			target = l
		}
	}
	return d.killNode(ctx, target, pause)
}

// failoverLimit bounds the wait for the first checkpoint after a node
// kill; a leader kill with input pending and no checkpoint by then is a
// hang, reported as a problem of the run.
const failoverLimit = 30 * time.Second

// killNode kills node i with SIGKILL, starts it again on the same data dir
// after pause, and measures (polling the other nodes every 20 ms) when a
// new leader is known and when the journal decides the first checkpoint
// after the kill, and when each writer the node owned commits again on
// another node. A leader kill's time to the first checkpoint is a failover
// sample (d.failovers).
func (d *driver) killNode(ctx context.Context, i int, pause time.Duration) (string, error) {
	n := d.nodes[i]
	if !n.p.running() {
		if err := n.p.start(); err != nil {
			return "", err
		}
		return n.id + " was not running; started it again", nil
	}
	wasLeader := d.leader(ctx) == i
	others := make([]int, 0, len(d.nodes)-1)
	for k := range d.nodes {
		if k != i {
			others = append(others, k)
		}
	}
	owned := []string{}
	for w, o := range d.owners(ctx) {
		if o == n.id {
			owned = append(owned, w)
		}
	}
	slices.Sort(owned)
	before, _, _ := d.lastCommitted(ctx, append(slices.Clone(others), i))
	generating := d.generator.running()
	pid := n.p.pid()
	n.p.kill9()
	t0 := time.Now()
	d.countKill("node")

	var newLeader string
	var leaderAt, firstAt, restartAt, readyAt time.Duration
	movedAt := map[string]time.Duration{}
	restarted := false
	for {
		el := time.Since(t0)
		if !restarted && el >= pause {
			if err := n.p.start(); err != nil {
				return "", err
			}
			restarted, restartAt = true, el
		}
		if restarted && readyAt == 0 && d.nodeReady(ctx, n) {
			readyAt = time.Since(t0)
		}
		if wasLeader && newLeader == "" {
			if l := d.newLeader(ctx, i); l != "" {
				newLeader, leaderAt = l, time.Since(t0)
			}
		}
		// A leader kill's first checkpoint needs the new leader: entries
		// the old leader decided and the others apply late are not it.
		if !wasLeader || newLeader != "" {
			if now, owner, ok := d.lastCommitted(ctx, others); ok {
				for w, c := range now {
					if c > before[w] {
						if firstAt == 0 {
							firstAt = time.Since(t0)
						}
						// A checkpoint the dead node had sent to the leader
						// may still be decided; moved means another owner.
						if _, seen := movedAt[w]; !seen && slices.Contains(owned, w) && owner[w] != n.id {
							movedAt[w] = time.Since(t0)
						}
					}
				}
			}
		}
		done := readyAt > 0 && firstAt > 0 && len(movedAt) == len(owned) && (!wasLeader || newLeader != "")
		// Without new input the apps may rightly have nothing to commit.
		limit := failoverLimit
		if !d.generator.running() {
			limit = 5 * time.Second
		}
		if done || el > limit+pause {
			break
		}
		if err := d.sleepSupervised(ctx, 20*time.Millisecond); err != nil {
			return "", err
		}
	}
	if !restarted {
		if err := n.p.start(); err != nil {
			return "", err
		}
		restartAt = time.Since(t0)
	}
	var readyErr error
	if readyAt == 0 {
		readyErr = waitFor(ctx, 60*time.Second, n.id, nil, func() bool { return d.nodeReady(ctx, n) || !n.p.running() })
		readyAt = time.Since(t0)
	}
	readyIn := readyAt - restartAt

	role := "follower"
	if wasLeader {
		role = "leader"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "kill -9 %s (%s, pid %d), restarted after %s", n.id, role, pid, restartAt.Round(time.Millisecond))
	if readyErr != nil || !n.p.running() {
		fmt.Fprintf(&b, ", NOT ready within 60s")
		d.unexpected = append(d.unexpected, fmt.Sprintf("%s: not ready within 60s of its restart after a kill -9; log tail:\n%s", n.id, tailFile(n.p.logPath, 15)))
	} else {
		fmt.Fprintf(&b, ", ready %s later", readyIn.Round(time.Millisecond))
	}
	if wasLeader {
		if newLeader != "" {
			fmt.Fprintf(&b, "; new leader %s after %s", newLeader, leaderAt.Round(time.Millisecond))
			d.elections = append(d.elections, leaderAt)
		} else {
			fmt.Fprintf(&b, "; no new leader seen")
		}
	}
	switch {
	case firstAt > 0:
		fmt.Fprintf(&b, "; first checkpoint after the kill %s later", firstAt.Round(time.Millisecond))
		if wasLeader {
			d.failovers = append(d.failovers, firstAt)
			fmt.Fprintf(&b, " (FAILOVER %s)", firstAt.Round(time.Millisecond))
		}
	case generating:
		fmt.Fprintf(&b, "; NO checkpoint within %s", failoverLimit)
		d.unexpected = append(d.unexpected, fmt.Sprintf("kill -9 of %s (%s) while input was coming: no checkpoint decided within %s (a hang?)", n.id, role, failoverLimit))
		if wasLeader {
			d.noFailover++
		}
	default:
		fmt.Fprintf(&b, "; no checkpoint after the kill (input done)")
	}
	if len(owned) > 0 {
		var moved []string
		for _, w := range owned {
			if at, ok := movedAt[w]; ok {
				moved = append(moved, fmt.Sprintf("%s after %s", w, at.Round(time.Millisecond)))
			} else {
				moved = append(moved, w+" not yet")
			}
		}
		fmt.Fprintf(&b, "; its writers commit again: %s", strings.Join(moved, ", "))
	}
	return b.String(), nil
}

// failoverSummary is the summary line of the leader kills' failover
// times (kill → first checkpoint decided after it) and election times.
func (d *driver) failoverSummary() string {
	if len(d.failovers) == 0 && d.noFailover == 0 {
		return "no leader was killed"
	}
	s := fmt.Sprintf("%d leader kills: failover (kill → first checkpoint after it) %s", len(d.failovers)+d.noFailover, minMedMax(d.failovers))
	if d.noFailover > 0 {
		s += fmt.Sprintf(", %d without a checkpoint within %s", d.noFailover, failoverLimit)
	}
	return s + "; new leader " + minMedMax(d.elections)
}

// minMedMax formats min/median/max of ds ("-" when empty).
func minMedMax(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	r := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	return fmt.Sprintf("min %s, median %s, max %s (n=%d)", r(s[0]), r(med), r(s[len(s)-1]), len(s))
}
