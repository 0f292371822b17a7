package main

import (
	"context"
	"fmt"

	"github.com/txsink/txsink/raftlog"
	"github.com/txsink/txsink/twopc"
)

// raftJournal connects raftlog to the coordinator (the two packages never
// import each other): a raftlog.Node replicating a twopc.Machine, seen as
// a twopc.Journal.
type raftJournal struct{ n *raftlog.Node }

// Propose proposes cmd and returns the Machine's result. raftlog's errors
// pass through as they are; the coordinator wraps them in ErrUnavailable
// and keeps them reachable (a *raftlog.NotLeaderError names the leader).
func (j raftJournal) Propose(ctx context.Context, cmd []byte) (twopc.ApplyResult, error) {
	v, err := j.n.Propose(ctx, cmd)
	if err != nil {
		return twopc.ApplyResult{}, err
	}
	r, ok := v.(twopc.ApplyResult)
	if !ok {
		// Only a Machine is ever opened under the node, so this is a bug.
		return twopc.ApplyResult{}, fmt.Errorf("journal: state machine returned %T, want twopc.ApplyResult", v)
	}
	return r, nil
}
