package raftlog

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
)

// Forming a cluster of several nodes (DESIGN.md, "Forming a cluster").
//
// A node opened without Bootstrap on an empty Dir is a follower with an
// empty configuration: it starts no election and waits. Two ways out:
//   - the leader of an existing cluster adds it (AddVoter/AddNonvoter; the
//     caller asks the leader over its own API);
//   - BootstrapCluster with the initial voters, called on every one of them
//     with the identical list (hashicorp/raft allows this: the nodes agree
//     on the configuration at index 1, so whoever wins the first election
//     leads a cluster all of them recognise).

// waitAppliedPoll is how often WaitApplied looks at the applied index.
const waitAppliedPoll = 5 * time.Millisecond

// HadState reports whether Dir held raft state (a term, a log or a
// snapshot) when the node was opened. A node that had state ignores
// Bootstrap and must not be bootstrapped or joined again: it restarts as
// the member it was.
func (n *Node) HadState() bool { return n.hadState }

// BootstrapCluster writes the first configuration with servers as voters
// (this node must be one of them). Call it on every initial voter with the
// same list, only on a node that had no state; it fails with
// ErrInvalidMember for a list without this node or with a bad address, and
// wraps raft's error (raft.ErrCantBootstrap) when the node already has
// state, e.g. because a leader replicated to it meanwhile.
func (n *Node) BootstrapCluster(ctx context.Context, servers []Member) error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	var cf raft.Configuration
	self := false
	ids := map[string]bool{}
	for _, m := range servers {
		if m.ID == "" || ids[m.ID] {
			return fmt.Errorf("%w: bootstrap: empty or repeated server ID %q", ErrInvalidMember, m.ID)
		}
		ids[m.ID] = true
		if err := validMemberAddr(m.Addr); err != nil {
			return fmt.Errorf("%w: bootstrap: %s address %q: %v", ErrInvalidMember, m.ID, m.Addr, err)
		}
		if !m.Voter {
			return fmt.Errorf("%w: bootstrap: %s: the initial servers are voters", ErrInvalidMember, m.ID)
		}
		self = self || m.ID == n.cfg.NodeID
		cf.Servers = append(cf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.ID), Address: raft.ServerAddress(m.Addr)})
	}
	if !self {
		return fmt.Errorf("%w: bootstrap: this node (%s) is not in the list", ErrInvalidMember, n.cfg.NodeID)
	}
	if len(cf.Servers) > 1 && n.stream.auth == nil {
		return fmt.Errorf("bootstrap: %w", errNoPeers)
	}
	// Sorted, so every node writes the same configuration whatever order
	// it learnt the servers in.
	slices.SortFunc(cf.Servers, func(a, b raft.Server) int {
		return strings.Compare(string(a.ID), string(b.ID))
	})
	_, err := n.await(ctx, "bootstrap", func() (any, error) {
		return nil, n.raft.BootstrapCluster(cf).Error()
	})
	if err != nil {
		return err
	}
	n.log.Info("raft cluster bootstrapped", "servers", fmt.Sprint(cf.Servers))
	return nil
}

// ErrCantBootstrap wraps raft's refusal to bootstrap a node that has state.
var ErrCantBootstrap = raft.ErrCantBootstrap

// WaitApplied waits until this node's StateMachine has applied the log
// entry at index (or a later one), so that a read of the local state
// machine sees the effect of a command another node proposed. index is a
// command's index (ApplyResult.Index).
//
// raft's AppliedIndex is not enough: it moves when entries are handed to
// the FSM goroutine, before StateMachine.Apply ran (a read right after saw
// the old state in tests). So this waits for the last index Apply returned
// from, or for a snapshot at or past index (restored or taken here, so its
// entries are in the state machine).
func (n *Node) WaitApplied(ctx context.Context, index uint64) error {
	t := time.NewTicker(waitAppliedPoll)
	defer t.Stop()
	for {
		if n.fsm.applied.Load() >= index || n.lastSnapshotIndex() >= index {
			return nil
		}
		if err := n.checkOpen(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return contextErr(fmt.Sprintf("wait for index %d to apply", index), ctx.Err())
		case <-n.closing:
			return ErrClosed
		case <-t.C:
		}
	}
}

// TransferLeadership hands leadership to another voter (raft picks the
// most up-to-date one) and returns once it did. On a follower it returns a
// *NotLeaderError; with no other voter raft refuses.
func (n *Node) TransferLeadership(ctx context.Context) error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	if n.raft.State() != raft.Leader {
		return n.notLeader()
	}
	if !n.hasOtherVoters() {
		return fmt.Errorf("%w: no other voter to hand leadership to", ErrInvalidMember)
	}
	_, err := n.await(ctx, "leadership transfer", func() (any, error) {
		return nil, n.raft.LeadershipTransfer().Error()
	})
	return err
}

// LastContact is how long ago this node last heard from a leader (zero on
// the leader itself and before any contact).
func (n *Node) LastContact() time.Duration {
	if n.raft.State() == raft.Leader {
		return 0
	}
	lc := n.raft.LastContact()
	if lc.IsZero() {
		return 0
	}
	return time.Since(lc)
}

// lastSnapshotIndex is the index of the newest snapshot raft knows.
func (n *Node) lastSnapshotIndex() uint64 {
	i, _ := strconv.ParseUint(n.raft.Stats()["last_snapshot_index"], 10, 64)
	return i
}
