package raftlog

import (
	"time"

	"github.com/hashicorp/raft"
)

// HasLease reports whether this node may still act on what it last
// learned from the journal: it is the leader (which steps down by itself
// after LeaderLeaseTimeout without a quorum), or a follower that heard
// from a leader within d; and either way its state machine caught up with
// the commit index it knows within d. A node cut off from the leader, or
// whose copy of the journal lags (a slow disk or apply: heartbeats are
// answered on a fast path that waits for neither), loses it after d, which
// is what lets another node take over its work safely once a longer wait
// has passed. Callers ask often (the coordinator at least every 200 ms),
// which keeps the caught-up time fresh.
func (n *Node) HasLease(d time.Duration) bool {
	now := time.Now()
	if n.raft.AppliedIndex() >= n.raft.CommitIndex() {
		n.caughtUp.Store(now.UnixNano())
	}
	if now.Sub(time.Unix(0, n.caughtUp.Load())) >= d {
		return false
	}
	switch n.raft.State() {
	case raft.Leader:
		return true
	case raft.Follower:
		_, id := n.raft.LeaderWithID()
		return id != "" && now.Sub(n.raft.LastContact()) < d
	default:
		return false
	}
}
