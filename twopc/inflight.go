package twopc

import (
	"slices"
	"sync"
)

// inflight is the registry of prepared branches this process still holds a
// connection for (held) and of the branches some goroutine is finishing
// right now (claimed).
//
// Invariant (invariant 9 of DESIGN.md in this folder): a branch is finished by at most one
// goroutine at a time — the one that claimed it — and a claim is granted
// only while the journal still shows the branch unresolved, checked under
// mu. The finisher journals RESOLVED before it forgets the branch. So a
// goroutine that read the journal's pending list earlier can never claim a
// branch that was resolved meanwhile, whose slot may already carry the next
// branch: with Kafka's EndTxn v4 the next transaction on a slot has the same
// producer id and epoch, and a late commit of the old one would commit it.
//
// A held branch is finished on its own connection; a branch that is not
// held (another process prepared it, or its connection failed) through the
// sink's Resolve with its journaled handle.
type inflight struct {
	mu      sync.Mutex
	held    map[branchKey]Branch
	claimed map[branchKey]bool
}

type branchKey struct {
	job, writer, sink string
	epoch, seq        uint64
}

func keyOf(id BranchID) branchKey {
	return branchKey{id.Job, id.Writer, id.Sink, id.Epoch, id.Seq}
}

func newInflight() *inflight {
	return &inflight{held: map[branchKey]Branch{}, claimed: map[branchKey]bool{}}
}

// hold registers branches the caller has just prepared, claimed by the
// caller: nobody else may finish them before the caller journals them and
// either finishes them or releases them.
func (f *inflight) hold(ids []BranchID, brs []Branch) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, id := range ids {
		k := keyOf(id)
		f.held[k] = brs[i]
		f.claimed[k] = true
	}
}

// claim claims for the caller the branches of ps that nobody has claimed
// and that unresolved (the journal's view, read under mu) still shows
// unresolved, and returns them. unresolved must not call back into f.
func (f *inflight) claim(ps []PendingBranch, unresolved func(PendingBranch) bool) []PendingBranch {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := ps[:0:0]
	for _, p := range ps {
		k := keyOf(p.Branch.ID)
		if f.claimed[k] || !unresolved(p) {
			continue
		}
		f.claimed[k] = true
		out = append(out, p)
	}
	return out
}

// release ends the caller's claims and keeps the branches held: their
// connections finish them later (external commit), or the recovery loop
// claims them.
func (f *inflight) release(ids []BranchID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		delete(f.claimed, keyOf(id))
	}
}

// forget drops a branch: finished and journaled, aborted, or its connection
// is no use any more (a retry goes through Resolve with the handle). It
// also ends the caller's claim on it.
func (f *inflight) forget(id BranchID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := keyOf(id)
	delete(f.held, k)
	delete(f.claimed, k)
}

// forgetFenced drops the held, unclaimed branches of a writer that are not
// in keep (by sink): the writer's sinks were just fenced, which aborted
// them. Claimed ones are being finished and stay.
func (f *inflight) forgetFenced(job, writer string, keep map[string][]BranchID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k := range f.held {
		if k.job == job && k.writer == writer && !f.claimed[k] &&
			!slices.ContainsFunc(keep[k.sink], func(id BranchID) bool { return keyOf(id) == k }) {
			delete(f.held, k)
		}
	}
}

// detachWriter removes and returns the held, unclaimed branches of a
// writer: it moved to another node, which finishes them from their handles.
func (f *inflight) detachWriter(job, writer string) []Branch {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Branch
	for k, br := range f.held {
		if k.job == job && k.writer == writer && !f.claimed[k] {
			out = append(out, br)
			delete(f.held, k)
		}
	}
	return out
}

// isClaimed reports whether some goroutine is finishing id now.
func (f *inflight) isClaimed(id BranchID) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.claimed[keyOf(id)]
}

// claimedFor reports whether some goroutine is finishing a branch of the
// writer now.
func (f *inflight) claimedFor(job, writer string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k := range f.claimed {
		if k.job == job && k.writer == writer {
			return true
		}
	}
	return false
}

// heldWriters lists the writers with held branches.
func (f *inflight) heldWriters() []writerKey {
	f.mu.Lock()
	defer f.mu.Unlock()
	seen := map[writerKey]bool{}
	var out []writerKey
	for k := range f.held {
		if w := (writerKey{k.job, k.writer}); !seen[w] {
			seen[w] = true
			out = append(out, w)
		}
	}
	return out
}

// branch returns the held branch of id, or nil.
func (f *inflight) branch(id BranchID) Branch {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.held[keyOf(id)]
}
