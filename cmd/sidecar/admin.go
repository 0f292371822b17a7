package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/raftlog"
	"github.com/txsink/txsink/twopc"
)

// clusterAdmin is the api.ClusterAdmin of a node: membership changes and
// forwarded proposals. A call that reaches a follower is forwarded once to
// the leader (with api.ForwardedHeader); a call that arrives forwarded and
// finds this node is not the leader (any more) answers 503, and the first
// node's caller retries.
type clusterAdmin struct {
	cfg     Config
	node    *raftlog.Node
	machine *twopc.Machine
	journal *raftJournal
	peers   *peers
}

var _ api.ClusterAdmin = (*clusterAdmin)(nil)

// memberKey is a fresh idempotency key for a membership command: a retry
// of the whole call may propose again, which the machine applies as an
// update to the same values.
func memberKey(op, id string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "member-" + op + "-" + id + "-" + hex.EncodeToString(b[:])
}

// leaderAPI returns the leader's API address, or a retryable error.
func (a *clusterAdmin) leaderAPI() (id, base string, err error) {
	st := a.node.Status()
	if st.LeaderID == "" {
		return "", "", fmt.Errorf("%w: the journal has no leader", twopc.ErrUnavailable)
	}
	m, ok := a.machine.Member(st.LeaderID)
	if !ok {
		return st.LeaderID, "", fmt.Errorf("%w: the API address of leader %s is not in the journal yet", twopc.ErrUnavailable, st.LeaderID)
	}
	return st.LeaderID, m.APIAddr, nil
}

// notLeader is the answer to a forwarded call on a node that is not the
// leader: retry (the sender's view of the leader was stale).
func notLeader(op string) error {
	return fmt.Errorf("%w: %s: this node is not the leader (forwarded call not passed on)", twopc.ErrUnavailable, op)
}

// membershipErr maps raftlog's membership errors onto the API's.
func membershipErr(err error) error {
	switch {
	case errors.Is(err, raftlog.ErrNotLeader), errors.Is(err, raftlog.ErrLeadershipLost), errors.Is(err, raftlog.ErrTimeout):
		return fmt.Errorf("%w: %w", twopc.ErrUnavailable, err)
	case errors.Is(err, raftlog.ErrInvalidMember), errors.Is(err, raftlog.ErrNoPeerAuth):
		return fmt.Errorf("%w: %w", api.ErrMembershipConflict, err)
	}
	return err
}

// onLeader runs local on the leader, or passes the call to the leader
// with remote, until it is done or fails for good. A call that came
// forwarded is never passed on: off the leader it answers 503 and the
// sender retries. Retries are bounded by peerCallTimeout (backoff as in
// raftJournal), so a leader change during the call costs the caller a
// short wait, not a 503.
func (a *clusterAdmin) onLeader(ctx context.Context, op string, local func(context.Context) error,
	remote func(ctx context.Context, base string) error) error {
	if api.Forwarded(ctx) {
		if !a.node.IsLeader() {
			return notLeader(op)
		}
		return local(ctx)
	}
	ctx, cancel := context.WithTimeout(ctx, peerCallTimeout)
	defer cancel()
	backoff := proposeBackoffMin
	for {
		var err error
		if a.node.IsLeader() {
			err = local(ctx)
		} else {
			var base string
			if _, base, err = a.leaderAPI(); err == nil {
				if err = remote(ctx, base); err != nil {
					err = fromPeer(base, err)
				}
			}
		}
		if err == nil || !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (%w)", op, err, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, proposeBackoffMax)
	}
}

// Join adds the raft server and records the member, on the leader.
func (a *clusterAdmin) Join(ctx context.Context, req api.JoinRequest) (api.Member, error) {
	apiAddr, err := api.ParseBaseURL(req.APIAddr)
	if err != nil {
		return api.Member{}, fmt.Errorf("%w: api_addr %q: %v", twopc.ErrInvalid, req.APIAddr, err)
	}
	req.APIAddr = apiAddr
	var out api.Member
	err = a.onLeader(ctx, "join "+req.ID, func(ctx context.Context) error {
		m, err := a.joinHere(ctx, req)
		out = m
		return err
	}, func(ctx context.Context, base string) (err error) {
		out, err = a.peers.forwarder(base).Join(ctx, req)
		return err
	})
	return out, err
}

func (a *clusterAdmin) joinHere(ctx context.Context, req api.JoinRequest) (api.Member, error) {
	var err error
	if req.IsVoter() {
		err = a.node.AddVoter(ctx, req.ID, req.RaftAddr)
	} else {
		err = a.node.AddNonvoter(ctx, req.ID, req.RaftAddr)
	}
	if err != nil {
		return api.Member{}, membershipErr(err)
	}
	want := twopc.MemberInfo{ID: req.ID, APIAddr: req.APIAddr, RaftAddr: req.RaftAddr, Voter: req.IsVoter()}
	if have, ok := a.machine.Member(req.ID); !ok || have != want {
		r, err := a.journal.Propose(ctx, twopc.EncodeCommand(twopc.Command{Op: twopc.OpPutMember,
			Key: memberKey("join", req.ID), Time: time.Now().UnixNano(), Member: &want}))
		if err == nil {
			err = r.Err()
		}
		if err != nil {
			return api.Member{}, fmt.Errorf("%w: join %s: the raft server is added, its member entry is not: %w", twopc.ErrUnavailable, req.ID, err)
		}
	}
	return apiMember(want, true), nil
}

func apiMember(m twopc.MemberInfo, reachable bool) api.Member {
	return api.Member{ID: m.ID, Address: m.RaftAddr, RaftAddr: m.RaftAddr, APIAddr: m.APIAddr, Voter: m.Voter, Reachable: reachable}
}

// RemoveNode removes the raft server and the member entry, on the leader.
// Removing the leader itself: it first hands leadership to another voter,
// and the new leader removes it (the call retries there). A leader that
// removed itself directly would keep answering until the change commits,
// then step down with a cluster electing without it.
func (a *clusterAdmin) RemoveNode(ctx context.Context, id string) error {
	return a.onLeader(ctx, "remove "+id, func(ctx context.Context) error {
		return a.removeHere(ctx, id)
	}, func(ctx context.Context, base string) error {
		return a.peers.forwarder(base).RemoveNode(ctx, id)
	})
}

func (a *clusterAdmin) removeHere(ctx context.Context, id string) error {
	ms, err := a.node.Members(ctx)
	if err != nil {
		return membershipErr(err)
	}
	inRaft, voters := false, 0
	for _, m := range ms {
		inRaft = inRaft || m.ID == id
		if m.Voter {
			voters++
		}
	}
	_, inJournal := a.machine.Member(id)
	if !inRaft && !inJournal {
		return fmt.Errorf("%w: %s is not a member", api.ErrNodeNotFound, id)
	}
	if inRaft && id == a.cfg.NodeID {
		if voters == 1 {
			return fmt.Errorf("%w: %s is the last voter; a cluster cannot remove its last voter", api.ErrMembershipConflict, id)
		}
		if err := a.node.TransferLeadership(ctx); err != nil {
			return membershipErr(err)
		}
		return fmt.Errorf("%w: remove %s: handed leadership over; the new leader removes it", twopc.ErrUnavailable, id)
	}
	if inRaft {
		if err := a.node.Remove(ctx, id); err != nil {
			return membershipErr(err)
		}
	}
	r, err := a.journal.Propose(ctx, twopc.EncodeCommand(twopc.Command{Op: twopc.OpRemoveMember,
		Key: memberKey("remove", id), Time: time.Now().UnixNano(), Node: id}))
	if err == nil {
		err = r.Err()
	}
	if err != nil {
		return fmt.Errorf("%w: remove %s: the raft server is removed, its member entry is not: %w", twopc.ErrUnavailable, id, err)
	}
	return nil
}

// Propose appends a forwarded command; only the leader does, never
// forwarding it again.
func (a *clusterAdmin) Propose(ctx context.Context, cmd []byte) (twopc.ApplyResult, error) {
	if !a.node.IsLeader() {
		return twopc.ApplyResult{}, notLeader("propose")
	}
	v, err := a.node.Propose(ctx, cmd)
	if err != nil {
		// Not appended (not leader) or unknown (leadership lost, timeout):
		// both are a retry of the same bytes for the sender.
		return twopc.ApplyResult{}, fmt.Errorf("%w: %w", twopc.ErrUnavailable, err)
	}
	r, ok := v.(twopc.ApplyResult)
	if !ok {
		return twopc.ApplyResult{}, fmt.Errorf("journal: state machine returned %T, want twopc.ApplyResult", v)
	}
	return r, nil
}

// probeTimeout bounds the /healthz probe behind a member's "reachable".
const probeTimeout = 300 * time.Millisecond

// status is GET /v1/cluster: raft's view of the members, the journal's API
// addresses, and a /healthz probe of each other member (in parallel, 300 ms
// each) for "reachable".
func (a *clusterAdmin) status(ctx context.Context, selfAPI string) api.ClusterStatus {
	st := a.node.Status()
	out := api.ClusterStatus{Node: st.ID, Role: st.Role, RaftAddr: st.Addr, APIAddr: selfAPI, Voter: a.cfg.Voter,
		Leader: st.LeaderID, LeaderAddr: st.LeaderAddr, LastIndex: st.LastIndex, AppliedIndex: st.AppliedIndex,
		Members: make([]api.Member, len(st.Members))}
	if m, ok := a.machine.Member(st.LeaderID); ok && st.LeaderID != "" {
		out.LeaderAPIAddr = m.APIAddr
	}
	var wg sync.WaitGroup
	for i, rm := range st.Members {
		m := api.Member{ID: rm.ID, Address: rm.Addr, RaftAddr: rm.Addr, Voter: rm.Voter}
		if rm.ID == st.ID {
			out.Voter = rm.Voter
		}
		if jm, ok := a.machine.Member(rm.ID); ok {
			m.APIAddr = jm.APIAddr
		}
		m.Reachable = rm.ID == st.ID
		out.Members[i] = m
		if rm.ID != st.ID && m.APIAddr != "" {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out.Members[i].Reachable = a.probe(ctx, m.APIAddr)
			}()
		}
	}
	wg.Wait()
	return out
}

// probe: GET base/healthz answers 200 within probeTimeout.
func (a *clusterAdmin) probe(ctx context.Context, base string) bool {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/healthz", nil)
	if err != nil {
		return false
	}
	resp, err := a.peers.hc.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
