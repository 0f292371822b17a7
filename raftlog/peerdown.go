package raftlog

import (
	"sync"

	"github.com/hashicorp/raft"
)

// peerHealth tracks, on the leader, which peers fail their heartbeats:
// raft reports a failed heartbeat (FailedHeartbeatObservation) and its
// recovery (ResumedHeartbeatObservation) to observers. It answers PeerDown;
// it decides nothing about safety, only how soon the leader takes over the
// work of a node that is gone.
type peerHealth struct {
	mu   sync.Mutex
	down map[string]bool
	obs  *raft.Observer
	ch   chan raft.Observation
}

func newPeerHealth(r *raft.Raft) *peerHealth {
	p := &peerHealth{down: map[string]bool{}, ch: make(chan raft.Observation, 64)}
	p.obs = raft.NewObserver(p.ch, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation:
			return true
		}
		return false
	})
	r.RegisterObserver(p.obs)
	return p
}

// run consumes observations until stop is closed.
func (p *peerHealth) run(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case o := <-p.ch:
			p.mu.Lock()
			switch d := o.Data.(type) {
			case raft.FailedHeartbeatObservation:
				p.down[string(d.PeerID)] = true
			case raft.ResumedHeartbeatObservation:
				delete(p.down, string(d.PeerID))
			}
			p.mu.Unlock()
		}
	}
}

// PeerDown reports whether this node, as the leader, sees peer id failing
// its heartbeats now. On a follower it is always false (only the leader
// sends heartbeats), and so is it for a peer the leader has not yet tried.
func (n *Node) PeerDown(id string) bool {
	if n.health == nil || !n.IsLeader() {
		return false
	}
	n.health.mu.Lock()
	defer n.health.mu.Unlock()
	return n.health.down[id]
}
