package raftlog

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/raft"
)

// peerAuthFor builds the peer authentication cfg asks for: TLS, a cluster
// key, or nil (no peers at all). Warnings about the files go to logger.
func peerAuthFor(cfg Config, logger *slog.Logger) (peerAuth, error) {
	switch {
	case cfg.TLSCertFile != "":
		return loadTLS(cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSCAFile)
	case cfg.ClusterKeyFile != "":
		key, err := loadClusterKey(cfg.ClusterKeyFile, logger)
		if err != nil {
			return nil, err
		}
		return &keyAuth{key: key}, nil
	default:
		return nil, nil
	}
}

func peerAuthName(a peerAuth) string {
	switch a.(type) {
	case *tlsAuth:
		return "tls"
	case *keyAuth:
		return "cluster-key"
	default:
		return "none (single node, no peers)"
	}
}

// AddVoter makes the server id at addr a voting member. It only works on the
// leader (elsewhere a *NotLeaderError, nothing changed) and returns once the
// new configuration is committed. Adding a member that is already a voter at
// addr changes nothing; a known id with another address moves it to addr; a
// non-voter is promoted.
//
// This is the only way into the cluster: a node that is not in the
// configuration cannot add itself by talking raft to the members.
func (n *Node) AddVoter(ctx context.Context, id, addr string) error {
	return n.addServer(ctx, id, addr, true)
}

// AddNonvoter makes the server id at addr a non-voting member: it receives
// the log but does not vote or count for the quorum. Like AddVoter it only
// works on the leader and is idempotent. A voter is not demoted by it
// (ErrInvalidMember): Remove it first.
func (n *Node) AddNonvoter(ctx context.Context, id, addr string) error {
	return n.addServer(ctx, id, addr, false)
}

func (n *Node) addServer(ctx context.Context, id, addr string, voter bool) error {
	op := "add non-voter " + id
	if voter {
		op = "add voter " + id
	}
	if err := n.checkMembershipChange(ctx, op, id); err != nil {
		return err
	}
	if err := validMemberAddr(addr); err != nil {
		return fmt.Errorf("%w: %s: address %q: %v", ErrInvalidMember, op, addr, err)
	}
	if n.stream.auth == nil && id != n.cfg.NodeID {
		return fmt.Errorf("%s: %w", op, errNoPeers)
	}
	cf, err := n.configuration(ctx, op)
	if err != nil {
		return err
	}
	for _, s := range cf.Configuration().Servers {
		if string(s.ID) != id {
			continue
		}
		if !voter && s.Suffrage == raft.Voter {
			return fmt.Errorf("%w: %s: %s is a voter; remove it first", ErrInvalidMember, op, id)
		}
		if string(s.Address) == addr && (s.Suffrage == raft.Voter) == voter {
			return nil
		}
	}
	_, err = n.await(ctx, op, func() (any, error) {
		// prevIndex makes raft refuse the change if the configuration moved
		// since we looked, so the no-op check above cannot go stale.
		var f raft.IndexFuture
		if voter {
			f = n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), cf.Index(), timeoutOf(ctx))
		} else {
			f = n.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), cf.Index(), timeoutOf(ctx))
		}
		return nil, f.Error()
	})
	return err
}

// Remove takes the server id out of the configuration. It only works on the
// leader; removing an id that is not a member changes nothing. The last
// voter cannot be removed (ErrInvalidMember). A leader that removes itself
// steps down once the change commits.
func (n *Node) Remove(ctx context.Context, id string) error {
	op := "remove " + id
	if err := n.checkMembershipChange(ctx, op, id); err != nil {
		return err
	}
	cf, err := n.configuration(ctx, op)
	if err != nil {
		return err
	}
	found := false
	for _, s := range cf.Configuration().Servers {
		if string(s.ID) != id {
			continue
		}
		found = true
		if s.Suffrage == raft.Voter && countVoters(cf.Configuration()) == 1 {
			return fmt.Errorf("%w: %s: it is the last voter", ErrInvalidMember, op)
		}
	}
	if !found {
		return nil
	}
	_, err = n.await(ctx, op, func() (any, error) {
		return nil, n.raft.RemoveServer(raft.ServerID(id), cf.Index(), timeoutOf(ctx)).Error()
	})
	return err
}

// Members returns the servers of the latest configuration this node knows
// (committed or not), voters and non-voters.
func (n *Node) Members(ctx context.Context) ([]Member, error) {
	if err := n.checkOpen(); err != nil {
		return nil, err
	}
	cf, err := n.configuration(ctx, "members")
	if err != nil {
		return nil, err
	}
	var ms []Member
	for _, s := range cf.Configuration().Servers {
		ms = append(ms, Member{ID: string(s.ID), Addr: string(s.Address), Voter: s.Suffrage == raft.Voter})
	}
	return ms, nil
}

// checkMembershipChange refuses a change on a closed node, with an ended
// ctx, an empty id or on a follower, before anything is asked of raft.
func (n *Node) checkMembershipChange(ctx context.Context, op, id string) error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return contextErr(op, err)
	}
	if id == "" {
		return fmt.Errorf("%w: %s: empty server ID", ErrInvalidMember, op)
	}
	if n.raft.State() != raft.Leader {
		return n.notLeader()
	}
	return nil
}

func (n *Node) configuration(ctx context.Context, op string) (raft.ConfigurationFuture, error) {
	var cf raft.ConfigurationFuture
	_, err := n.await(ctx, op, func() (any, error) {
		cf = n.raft.GetConfiguration()
		return nil, cf.Error()
	})
	if err != nil {
		return nil, err
	}
	return cf, nil
}

func countVoters(c raft.Configuration) int {
	v := 0
	for _, s := range c.Servers {
		if s.Suffrage == raft.Voter {
			v++
		}
	}
	return v
}

// validMemberAddr accepts what a node may advertise (parseAdvertiseAddr):
// host:port with a specific IP or a DNS name, not resolved here, and a
// non-zero port — the address other nodes will dial. The address is stored
// as given: a member's canonical Addr is what it advertises itself.
func validMemberAddr(addr string) error {
	_, err := parseAdvertiseAddr(addr)
	return err
}

// timeoutOf is raft's enqueue timeout for a call bounded by ctx: the time
// left, or 0 (wait forever; ctx still bounds the caller) without a deadline.
func timeoutOf(ctx context.Context) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		return max(time.Until(dl), time.Millisecond)
	}
	return 0
}
