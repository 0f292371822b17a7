package raftlog

import (
	"time"

	"github.com/hashicorp/raft"
)

// HasLease reports whether this node may still act on what it last
// learned from the journal: it is the leader (which steps down by itself
// after LeaderLeaseTimeout without a quorum), or a follower that heard
// from a leader within d. A node cut off from the leader loses it after d,
// which is what lets another node take over its work safely once a longer
// wait has passed.
func (n *Node) HasLease(d time.Duration) bool {
	switch n.raft.State() {
	case raft.Leader:
		return true
	case raft.Follower:
		_, id := n.raft.LeaderWithID()
		return id != "" && time.Since(n.raft.LastContact()) < d
	default:
		return false
	}
}
