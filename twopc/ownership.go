package twopc

import (
	"fmt"
	"time"
)

// Ownership of a writer across nodes (DESIGN.md in this folder, "Who
// finishes a branch").
//
// The journal names one owner per writer: the node whose grant is the
// writer's current epoch. A grant is a session open (OpOpenSession) or a
// takeover (OpTakeover: the node finishes and fences the writer without an
// application session, e.g. the leader for a dead owner, or a node for its
// own writers after a restart). Only the owner finishes the writer's
// decided branches and fences the writer in the sinks; a node that sees in
// its copy of the journal that it no longer owns a writer stops acting for
// it by itself. A new owner on another node first waits until the previous
// one released the writer (OpRelease) or could no longer act: the handover
// wait, longer than a node's lease (a node that lost contact with the
// leader for its lease stops acting for every writer). So two nodes never
// act for one writer at the same time, under the usual assumption that
// clocks run at about the same rate and a request is not delayed in the
// network for longer than the margin of the wait.

const (
	// OpTakeover grants a writer to Node with no application session. Epoch
	// is the writer's epoch the proposer saw; any other current epoch
	// refuses it (ErrSessionFenced), so of two racing grants only one wins.
	OpTakeover Op = "takeover"
	// OpRelease records that the owner of a writer at Epoch (and so every
	// owner before it) stopped acting for it.
	OpRelease Op = "release"
)

// Handover describes the grant a new one replaced, in ApplyResult.
type Handover struct {
	// From is the previous owner ("" for a new writer).
	From string `json:"from,omitempty"`
	// Epoch is the epoch the previous owner held.
	Epoch uint64 `json:"epoch,omitempty"`
	// Wait: From is another node that has not released Epoch, so the new
	// owner must wait for its release (or the handover wait) before it
	// touches the writer's transactions.
	Wait bool `json:"wait,omitempty"`
}

// grant makes node the owner of w at a new epoch and says which other
// node's grant it must wait for. The last grant to another node is kept
// (PrevOwner, PrevEpoch), so a node that is granted the writer again before
// that node released it (say, its first open gave up waiting) waits again.
func grant(w *writerState, node string, now int64) Handover {
	if w.Owner != "" && w.Owner != node {
		w.PrevOwner, w.PrevEpoch = w.Owner, w.Epoch
	}
	h := Handover{From: w.PrevOwner, Epoch: w.PrevEpoch}
	h.Wait = w.PrevOwner != "" && w.PrevOwner != node && w.Released < w.PrevEpoch
	w.Epoch++
	w.Owner = node
	w.GrantedAt = now
	return h
}

func (m *Machine) takeover(c Command) ApplyResult {
	_, w, bad := m.writerOf(c)
	if bad != nil {
		return *bad
	}
	if c.Epoch != w.Epoch || c.Node == "" {
		return errResult(fmt.Errorf("%w: takeover of %s/%s at epoch %d, current %d", ErrSessionFenced, c.Job, c.Writer, c.Epoch, w.Epoch))
	}
	h := grant(w, c.Node, c.Time)
	return ApplyResult{Session: SessionInfo{Epoch: w.Epoch}, Handover: &h}
}

func (m *Machine) release(c Command) ApplyResult {
	j := m.st.Jobs[c.Job]
	if j == nil {
		return ApplyResult{}
	}
	if w := j.Writers[c.Writer]; w != nil && c.Epoch <= w.Epoch && c.Epoch > w.Released {
		w.Released = c.Epoch
	}
	return ApplyResult{}
}

// Owner returns the writer's owner and epoch and the highest released
// epoch; ok is false when job or writer is unknown.
func (m *Machine) Owner(job, writer string) (owner string, epoch, released uint64, ok bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	j := m.st.Jobs[job]
	if j == nil || j.Writers[writer] == nil {
		return "", 0, 0, false
	}
	w := j.Writers[writer]
	return w.Owner, w.Epoch, w.Released, true
}

// GrantedAt returns when the writer's current owner was granted it (zero
// when unknown).
func (m *Machine) GrantedAt(job, writer string) time.Time {
	m.mu.RLock()
	defer m.mu.RUnlock()
	j := m.st.Jobs[job]
	if j == nil || j.Writers[writer] == nil || j.Writers[writer].GrantedAt == 0 {
		return time.Time{}
	}
	return time.Unix(0, j.Writers[writer].GrantedAt)
}

// Owned lists the (job, writer) pairs whose owner is node.
func (m *Machine) Owned(node string) []writerKey {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []writerKey
	for _, jn := range sortedKeys(m.st.Jobs) {
		j := m.st.Jobs[jn]
		for _, wn := range sortedKeys(j.Writers) {
			if j.Writers[wn].Owner == node {
				out = append(out, writerKey{jn, wn})
			}
		}
	}
	return out
}

// ownedBy reports whether node owns the writer now.
func (m *Machine) ownedBy(job, writer, node string) bool {
	owner, _, _, ok := m.Owner(job, writer)
	return ok && owner == node
}
