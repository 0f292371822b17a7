package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/txsink/txsink/raftlog"
	"github.com/txsink/txsink/twopc"
)

// raftJournal connects raftlog to the coordinator (the two packages never
// import each other): a raftlog.Node replicating a twopc.Machine, seen as
// a twopc.Journal. On a follower it forwards each proposal to the leader's
// API (POST /v1/cluster/propose) and then waits until its own machine has
// applied the result's index, so a read right after sees the effect.
//
// Retries: a proposal whose outcome is unknown (no leader, the leader
// changed or stepped down, no answer, a 503, leadership lost after the
// append) is sent again with the same bytes, so the same idempotency key,
// until ctx ends; the machine answers a repeated key with the stored first
// result, so a command is never applied twice. Backoff 20 ms → 500 ms.
type raftJournal struct {
	n     *raftlog.Node
	m     *twopc.Machine
	peers *peers // nil: never forward (a single node, or a test)
	log   *slog.Logger
}

// Backoff between attempts of one proposal.
const (
	proposeBackoffMin = 20 * time.Millisecond
	proposeBackoffMax = 500 * time.Millisecond
)

// Propose proposes cmd and returns the Machine's result. Errors keep their
// cause (%w): a *raftlog.NotLeaderError, the peer's answer, the context's.
// The coordinator wraps them in ErrUnavailable.
func (j *raftJournal) Propose(ctx context.Context, cmd []byte) (twopc.ApplyResult, error) {
	backoff := proposeBackoffMin
	for attempt := 1; ; attempt++ {
		r, again, err := j.proposeOnce(ctx, cmd)
		if !again {
			return r, err
		}
		if attempt == 1 || attempt%20 == 0 {
			j.logger().Debug("journal proposal outcome unknown; retrying with the same key", "attempt", attempt, "err", err)
		}
		select {
		case <-ctx.Done():
			return twopc.ApplyResult{}, fmt.Errorf("journal: no outcome after %d attempt(s): %w (last: %w)", attempt, ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, proposeBackoffMax)
	}
}

func (j *raftJournal) logger() *slog.Logger {
	if j.log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return j.log
}

// proposeOnce makes one attempt; again says whether another may help.
func (j *raftJournal) proposeOnce(ctx context.Context, cmd []byte) (_ twopc.ApplyResult, again bool, _ error) {
	if j.n.IsLeader() || j.peers == nil {
		v, err := j.n.Propose(ctx, cmd)
		if err != nil {
			switch {
			case j.peers == nil:
				return twopc.ApplyResult{}, false, err
			case errors.Is(err, raftlog.ErrClosed) || ctx.Err() != nil:
				return twopc.ApplyResult{}, false, err
			case errors.Is(err, raftlog.ErrNotLeader), errors.Is(err, raftlog.ErrLeadershipLost), errors.Is(err, raftlog.ErrTimeout):
				return twopc.ApplyResult{}, true, err
			}
			return twopc.ApplyResult{}, false, err
		}
		r, ok := v.(twopc.ApplyResult)
		if !ok {
			// Only a Machine is ever opened under the node, so this is a bug.
			return twopc.ApplyResult{}, false, fmt.Errorf("journal: state machine returned %T, want twopc.ApplyResult", v)
		}
		return r, false, nil
	}
	st := j.n.Status()
	if st.LeaderID == "" {
		return twopc.ApplyResult{}, true, &raftlog.NotLeaderError{}
	}
	if st.LeaderID == st.ID {
		return twopc.ApplyResult{}, true, errors.New("journal: became the leader meanwhile")
	}
	leader, ok := j.m.Member(st.LeaderID)
	if !ok {
		return twopc.ApplyResult{}, true, fmt.Errorf("journal: the API address of leader %s is not in the journal yet: %w",
			st.LeaderID, &raftlog.NotLeaderError{LeaderID: st.LeaderID, LeaderAddr: st.LeaderAddr})
	}
	r, err := j.peers.forwarder(leader.APIAddr).Propose(ctx, cmd)
	if err != nil {
		err = fromPeer(leader.APIAddr, err)
		if ctx.Err() != nil {
			// The caller's deadline ended this attempt: say so, with the
			// attempt's cause, as when it ends between attempts.
			return twopc.ApplyResult{}, false, fmt.Errorf("journal: forwarded to leader %s: %w (last: %w)", st.LeaderID, ctx.Err(), err)
		}
		return twopc.ApplyResult{}, retryable(err), fmt.Errorf("journal: forwarded to leader %s: %w", st.LeaderID, err)
	}
	if err := j.n.WaitApplied(ctx, r.Index); err != nil {
		// Applied on the leader, but not here yet: the caller must not
		// read its effect from this node, so report it as unknown.
		return twopc.ApplyResult{}, false, fmt.Errorf("journal: applied at index %d by leader %s, not yet here: %w", r.Index, st.LeaderID, err)
	}
	return r, false, nil
}
