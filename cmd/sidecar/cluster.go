package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/raftlog"
	"github.com/txsink/txsink/twopc"
)

// Forming a cluster at start-up (docs/DESIGN.md §5, "Forming a cluster").
// What a node does depends on its data dir and flags:
//
//	raft state in the data dir      start as the member it was; join and bootstrap_expect are ignored
//	no state, no join               bootstrap a single voter (raftlog.Config.Bootstrap; sidecar dev)
//	no state, join                  POST /v1/cluster/join to the join addresses in turn until one accepts
//	no state, join + bootstrap_expect N
//	                                GET /v1/cluster of every join address; once N distinct voters
//	                                (this one included) are known and none has a leader, each node
//	                                bootstraps the same N voters; a node that finds a leader joins instead
//
// Then, in every mode, it waits for a leader and makes sure the journal has
// its member entry (API address, raft address, voter), proposing put_member
// (forwarded to the leader on a follower) when it is missing or different.
// The whole start-up of a node that joins or forms a cluster is bounded by
// join_timeout; a single node keeps today's 30 s bound for its leader.

// Backoff between join (and discovery) attempts.
const (
	joinBackoffMin = 100 * time.Millisecond
	joinBackoffMax = 2 * time.Second
	// singleNodeLeaderWait bounds the wait for the leader of a single node
	// (it elects itself within a second).
	singleNodeLeaderWait = 30 * time.Second
	// leaveTimeout bounds a non-voter's leave at stop.
	leaveTimeout = 5 * time.Second
)

// formCluster runs the start-up of the journal's cluster as above.
func (sc *sidecar) formCluster(ctx context.Context) error {
	cfg := sc.cfg
	joins, err := cfg.joinAddrs()
	if err != nil {
		return err
	}
	budget := singleNodeLeaderWait
	if len(joins) > 0 || len(sc.node.Status().Members) > 1 {
		budget = cfg.JoinTimeout
		if budget == 0 {
			budget = DefaultJoinTimeout
		}
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	switch {
	case sc.node.HadState():
		if len(joins) > 0 {
			sc.log.Info("raft state exists in the data dir: starting as the member it is; join and bootstrap_expect are ignored",
				"join", cfg.Join)
		}
	case len(joins) == 0:
		// Bootstrapped by raftlog.Open (Config.Bootstrap).
	case cfg.BootstrapExpect > 0:
		if err := sc.bootstrapTogether(ctx, joins); err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
	default:
		if err := sc.join(ctx, joins); err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
	}
	if err := sc.waitLeader(ctx, budget); err != nil {
		return err
	}
	if err := sc.ensureSelfMember(ctx); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	return nil
}

// joinRequest is what this node asks to be: its id, advertised addresses
// and suffrage.
func (sc *sidecar) joinRequest() api.JoinRequest {
	voter := sc.cfg.Voter
	return api.JoinRequest{ID: sc.cfg.NodeID, RaftAddr: sc.node.Addr(), APIAddr: sc.apiAddr, Voter: &voter}
}

// join asks the join addresses in turn to add this node, retrying with
// backoff until one accepts or ctx ends; then it waits until its member
// entry (proposed by the leader before it answered) is applied here.
func (sc *sidecar) join(ctx context.Context, joins []string) error {
	req := sc.joinRequest()
	backoff := joinBackoffMin
	for attempt := 1; ; attempt++ {
		var last error
		for _, base := range joins {
			m, err := sc.peers.client(base).Join(ctx, req)
			if err == nil {
				sc.log.Info("joined the cluster", "via", base, "raft_addr", m.RaftAddr, "api_addr", m.APIAddr, "voter", m.Voter)
				return sc.waitOwnEntry(ctx)
			}
			err = fromPeer(base, err)
			if !retryable(err) {
				return fmt.Errorf("join via %s refused: %w", base, err)
			}
			last = err
		}
		sc.log.Warn("no member accepted the join yet; retrying", "attempt", attempt, "retry_in", backoff, "err", last)
		select {
		case <-ctx.Done():
			return fmt.Errorf("could not join through %v within join_timeout: %w", joins, last)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, joinBackoffMax)
	}
}

// waitOwnEntry waits until this node's machine has its member entry.
func (sc *sidecar) waitOwnEntry(ctx context.Context) error {
	for {
		if _, ok := sc.machine.Member(sc.cfg.NodeID); ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("joined, but this node's member entry did not arrive within join_timeout: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// bootstrapTogether finds bootstrap_expect voters through the join
// addresses and bootstraps them, or joins a cluster that already has a
// leader.
func (sc *sidecar) bootstrapTogether(ctx context.Context, joins []string) error {
	want := sc.cfg.BootstrapExpect
	self := sc.cfg.NodeID
	backoff := joinBackoffMin
	for attempt := 1; ; attempt++ {
		found := map[string]string{self: sc.node.Addr()}
		var errs []error
		for _, base := range joins {
			st, err := sc.peers.client(base).Cluster(ctx)
			if err != nil {
				err = fromPeer(base, err)
				if !retryable(err) {
					return fmt.Errorf("asking %s for its id: %w", base, err)
				}
				errs = append(errs, err)
				continue
			}
			if st.Leader != "" {
				sc.log.Info("a cluster with a leader exists; joining it instead of bootstrapping", "via", base, "leader", st.Leader)
				return sc.join(ctx, joins)
			}
			if st.Node == "" || st.RaftAddr == "" || !st.Voter {
				continue // a non-voter does not count for bootstrap_expect
			}
			if prev, ok := found[st.Node]; ok && prev != st.RaftAddr {
				return fmt.Errorf("two nodes answer as %s (raft %s and %s): node ids must be distinct", st.Node, prev, st.RaftAddr)
			}
			found[st.Node] = st.RaftAddr
		}
		if len(found) > want {
			return fmt.Errorf("found %d voters %v through join, more than bootstrap_expect %d: list exactly the nodes that form the cluster",
				len(found), slices.Sorted(maps.Keys(found)), want)
		}
		if len(found) == want {
			servers := make([]raftlog.Member, 0, want)
			for _, id := range slices.Sorted(maps.Keys(found)) {
				servers = append(servers, raftlog.Member{ID: id, Addr: found[id], Voter: true})
			}
			err := sc.node.BootstrapCluster(ctx, servers)
			if errors.Is(err, raftlog.ErrCantBootstrap) {
				// A leader reached this node first: it is a member already.
				sc.log.Info("raft state arrived from a leader before this node bootstrapped; not bootstrapping")
				return nil
			}
			if err != nil {
				return err
			}
			sc.log.Info("bootstrapped the cluster with the nodes found", "voters", fmt.Sprint(servers))
			return nil
		}
		sc.log.Info("waiting for the nodes that form the cluster", "found", len(found), "bootstrap_expect", want,
			"nodes", slices.Sorted(maps.Keys(found)), "retry_in", backoff, "err", errors.Join(errs...))
		select {
		case <-ctx.Done():
			return fmt.Errorf("found %d of bootstrap_expect %d voters %v within join_timeout (errors: %v)",
				len(found), want, slices.Sorted(maps.Keys(found)), errors.Join(errs...))
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, joinBackoffMax)
	}
}

// waitLeader waits for a leader within ctx, logging every 5 s while it
// waits, so a joining node's wait is visible.
func (sc *sidecar) waitLeader(ctx context.Context, budget time.Duration) error {
	start := time.Now()
	for {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := sc.node.WaitLeader(wctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || errors.Is(err, raftlog.ErrClosed) {
			return fmt.Errorf("journal: no leader within %s: %w", budget, err)
		}
		sc.log.Warn("journal: still no leader; waiting", "waited", time.Since(start).Round(time.Second), "budget", budget)
	}
}

// ensureSelfMember proposes this node's member entry when the journal
// lacks it or has other addresses (e.g. a restart with new ports).
func (sc *sidecar) ensureSelfMember(ctx context.Context) error {
	want := twopc.MemberInfo{ID: sc.cfg.NodeID, APIAddr: sc.apiAddr, RaftAddr: sc.node.Addr(), Voter: sc.cfg.Voter}
	for _, m := range sc.node.Status().Members {
		if m.ID == want.ID {
			want.Voter = m.Voter // raft's configuration says what it is
		}
	}
	if have, ok := sc.machine.Member(want.ID); ok && have == want {
		return nil
	}
	r, err := sc.journal.Propose(ctx, twopc.EncodeCommand(twopc.Command{Op: twopc.OpPutMember,
		Key: memberKey("self", want.ID), Time: time.Now().UnixNano(), Member: &want}))
	if err == nil {
		err = r.Err()
	}
	if err != nil {
		return fmt.Errorf("recording this node's addresses in the journal: %w", err)
	}
	sc.log.Info("this node's addresses are in the journal", "api_addr", want.APIAddr, "raft_addr", want.RaftAddr, "voter", want.Voter)
	return nil
}

// leave runs at a graceful stop: a non-voter removes itself through the
// leader; a voter stays a member, because removing it would shrink the
// quorum the others need (remove it with DELETE /v1/cluster/nodes/{id}).
func (sc *sidecar) leave() {
	if sc.admin == nil || sc.node == nil {
		return
	}
	st := sc.node.Status()
	if len(st.Members) <= 1 {
		return
	}
	i := slices.IndexFunc(st.Members, func(m raftlog.Member) bool { return m.ID == st.ID })
	if i < 0 {
		return
	}
	if st.Members[i].Voter {
		sc.log.Info("stopping a voter: it stays a member of the cluster (leaving would shrink the quorum); "+
			"remove it with DELETE /v1/cluster/nodes/"+st.ID+" if it is not coming back", "members", len(st.Members))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
	defer cancel()
	if err := sc.admin.RemoveNode(ctx, st.ID); err != nil {
		sc.log.Warn("non-voter could not leave the cluster before stopping; remove it with DELETE /v1/cluster/nodes/"+st.ID, "err", err)
		return
	}
	sc.log.Info("non-voter left the cluster before stopping")
}
