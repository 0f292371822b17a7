package twopc

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// nopBranch is a held branch's connection; the registry never calls it.
type nopBranch struct{ Branch }

func bid(writer, sink string, seq uint64) BranchID {
	return BranchID{Job: "j", Writer: writer, Sink: sink, Epoch: 1, Seq: seq}
}

func pend(id BranchID) PendingBranch {
	return PendingBranch{Job: id.Job, Writer: id.Writer, Checkpoint: 1, Decision: decisionCommit, Branch: JournalBranch{ID: id}}
}

func ids(ps []PendingBranch) []BranchID {
	var out []BranchID
	for _, p := range ps {
		out = append(out, p.Branch.ID)
	}
	return out
}

func always(PendingBranch) bool { return true }

func TestInflight(t *testing.T) {
	a, b, c := bid("w", "k", 1), bid("w", "m", 2), bid("v", "k", 3)
	br := nopBranch{}
	tests := []struct {
		name       string
		do         func(f *inflight)
		claim      []BranchID
		unresolved func(PendingBranch) bool
		want       []BranchID // claimed by the last claim
		held       []BranchID // held afterwards
	}{
		{name: "claim of nothing held goes through Resolve", do: func(*inflight) {},
			claim: []BranchID{a, b}, unresolved: always, want: []BranchID{a, b}},
		{name: "hold claims for the holder", do: func(f *inflight) { f.hold([]BranchID{a, b}, []Branch{br, br}) },
			claim: []BranchID{a, b, c}, unresolved: always, want: []BranchID{c}, held: []BranchID{a, b}},
		{name: "release keeps the branch held and claimable",
			do:    func(f *inflight) { f.hold([]BranchID{a, b}, []Branch{br, br}); f.release([]BranchID{a}) },
			claim: []BranchID{a, b}, unresolved: always, want: []BranchID{a}, held: []BranchID{a, b}},
		{name: "a claim excludes a second claim",
			do:    func(f *inflight) { f.claim([]PendingBranch{pend(a)}, always) },
			claim: []BranchID{a, b}, unresolved: always, want: []BranchID{b}},
		{name: "forget drops branch and claim",
			do:    func(f *inflight) { f.hold([]BranchID{a, b}, []Branch{br, br}); f.forget(a) },
			claim: []BranchID{a}, unresolved: always, want: []BranchID{a}, held: []BranchID{b}},
		{name: "resolved in the journal is never claimed",
			do:    func(f *inflight) { f.hold([]BranchID{a}, []Branch{br}); f.release([]BranchID{a}) },
			claim: []BranchID{a, b}, unresolved: func(p PendingBranch) bool { return p.Branch.ID != a },
			want: []BranchID{b}, held: []BranchID{a}},
		{name: "forgetFenced drops the writer's unclaimed, unkept branches",
			do: func(f *inflight) {
				f.hold([]BranchID{a, b, c, bid("w", "k", 4)}, []Branch{br, br, br, br})
				f.release([]BranchID{a, b, c}) // seq 4 stays claimed
				f.forgetFenced("j", "w", map[string][]BranchID{"m": {b}})
			},
			held: []BranchID{b, c, bid("w", "k", 4)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newInflight()
			tt.do(f)
			if tt.claim != nil {
				var ps []PendingBranch
				for _, id := range tt.claim {
					ps = append(ps, pend(id))
				}
				if got := ids(f.claim(ps, tt.unresolved)); !slices.Equal(got, tt.want) {
					t.Errorf("claimed %v, want %v", got, tt.want)
				}
			}
			for _, id := range []BranchID{a, b, c, bid("w", "k", 4)} {
				if got, want := f.branch(id) != nil, slices.Contains(tt.held, id); got != want {
					t.Errorf("%s held: got %v, want %v", id, got, want)
				}
			}
		})
	}
}

// TestInflightClaimIsExclusive races claimers for the same branches: each
// branch goes to exactly one of them until it is forgotten.
func TestInflightClaimIsExclusive(t *testing.T) {
	f := newInflight()
	var ps []PendingBranch
	for i := range 50 {
		ps = append(ps, pend(bid("w", "k", uint64(i))))
	}
	var got [50]atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for _, p := range f.claim(slices.Clone(ps), always) {
				got[p.Branch.ID.Seq].Add(1)
			}
		})
	}
	wg.Wait()
	for i := range got {
		if n := got[i].Load(); n != 1 {
			t.Errorf("branch %d claimed %d times, want 1", i, n)
		}
	}
	f.forget(ps[0].Branch.ID)
	if c := f.claim(slices.Clone(ps), always); len(c) != 1 || c[0].Branch.ID != ps[0].Branch.ID {
		t.Errorf("after forget: claimed %v, want only %v", ids(c), ps[0].Branch.ID)
	}
}
