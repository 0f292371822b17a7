package twopc_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/txsink/txsink/twopc"
)

// gateJournal holds every RESOLVED entry back until open is closed (or the
// proposer's ctx ends): a journal whose append of that entry is slow.
type gateJournal struct {
	twopc.Journal
	open    chan struct{}
	waiting chan struct{} // gets a value each time a RESOLVED starts waiting
}

func (j *gateJournal) Propose(ctx context.Context, cmd []byte) (twopc.ApplyResult, error) {
	var c twopc.Command
	if err := json.Unmarshal(cmd, &c); err != nil {
		return twopc.ApplyResult{}, err
	}
	if c.Op == twopc.OpResolved {
		select {
		case j.waiting <- struct{}{}:
		default:
		}
		select {
		case <-j.open:
		case <-ctx.Done():
		}
	}
	return j.Journal.Propose(ctx, cmd)
}

// gatedEnv is newEnv(t, inflight) whose coordinator journals through a
// closed gateJournal; the gate opens at the end of the test at the latest.
func gatedEnv(t *testing.T, inflight int) (*env, *gateJournal) {
	t.Helper()
	e := newEnv(t, inflight)
	gj := &gateJournal{Journal: e.j, open: make(chan struct{}), waiting: make(chan struct{}, 16)}
	e.withJournal(gj)
	// Runs before the coordinator's Close (cleanups run last first), which
	// waits for the finish that is held at the gate.
	t.Cleanup(func() {
		select {
		case <-gj.open:
		default:
			close(gj.open)
		}
	})
	return e, gj
}

// checkpointWithin runs checkpoint n and returns its answer, or ok false
// when none came within d (the call goes on in the background).
func (e *env) checkpointWithin(d time.Duration, job, writer string, epoch uint64, n int64, state string) (r twopc.CheckpointResult, ok bool) {
	e.t.Helper()
	type answer struct {
		r   twopc.CheckpointResult
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		r, err := e.c.Checkpoint(context.Background(), job, writer, epoch, n, []byte(state), "")
		ch <- answer{r, err}
	}()
	select {
	case a := <-ch:
		if a.err != nil {
			e.t.Fatalf("checkpoint %d: %v", n, a.err)
		}
		return a.r, true
	case <-time.After(d):
		return twopc.CheckpointResult{}, false
	}
}

func unresolved(m *twopc.Machine, job string) int { return len(m.Pending(job)) }

// TestCheckpointAnswersBeforeResolved: an auto-mode checkpoint answers
// committed once its sinks committed, while its RESOLVED entry is still on
// its way; the branch keeps its slot until that entry applies, so the next
// checkpoint takes another slot; and nothing is left once it applies. Three
// slots: checkpoint 2 holds the second and still leaves one spare.
func TestCheckpointAnswersBeforeResolved(t *testing.T) {
	e, gj := gatedEnv(t, 3)
	e.job("j", twopc.ModeAuto, "a")
	s := e.open("j", "w", nil)
	e.write("j", "w", s.Epoch, recs("a", "x"))
	r, ok := e.checkpointWithin(10*time.Second, "j", "w", s.Epoch, 1, "s1")
	if !ok {
		t.Fatal("checkpoint 1 did not answer within 10s while its RESOLVED entry was held back")
	}
	if r.Status != twopc.StatusCommitted || len(r.Branches) != 1 || r.Branches[0].Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint 1: got %+v, want committed", r)
	}
	wantValues(t, e.a, "x")
	<-gj.waiting // the RESOLVED entry is proposed, and held
	if n := unresolved(e.j.Machine(), "j"); n != 1 {
		t.Fatalf("journal: %d unresolved branches before RESOLVED applied, want 1", n)
	}
	// A retry says committed again, though the journal still says committing.
	if r, err := e.c.Checkpoint(context.Background(), "j", "w", s.Epoch, 1, []byte("s1"), ""); err != nil || r.Status != twopc.StatusCommitted {
		t.Fatalf("repeated checkpoint 1: got %+v %v, want committed", r, err)
	}

	e.write("j", "w", s.Epoch, recs("a", "y"))
	r, ok = e.checkpointWithin(10*time.Second, "j", "w", s.Epoch, 2, "s2")
	if !ok {
		t.Fatal("checkpoint 2 did not answer within 10s")
	}
	if r.Status != twopc.StatusCommitted || len(r.Branches) != 1 || r.Branches[0].Slot != 1 {
		t.Fatalf("checkpoint 2: got %+v, want committed on slot 1 (slot 0 is held until its RESOLVED applies)", r)
	}
	wantValues(t, e.a, "x", "y")

	close(gj.open)
	waitFor(t, func() bool { return unresolved(e.j.Machine(), "j") == 0 })
	cps, _ := e.j.Machine().Checkpoints("j", time.Now())
	if len(cps) != 2 {
		t.Fatalf("journal checkpoints after RESOLVED: %+v, want 1 and 2", cps)
	}
	for _, cp := range cps {
		if cp.Status != twopc.StatusCommitted {
			t.Fatalf("journal checkpoints after RESOLVED: %+v, want all committed", cps)
		}
	}
}

// TestCheckpointWaitsForResolvedWithoutSpareSlot: with one slot per writer
// the next checkpoint could not begin before RESOLVED, so the answer waits
// for it as before.
func TestCheckpointWaitsForResolvedWithoutSpareSlot(t *testing.T) {
	e, gj := gatedEnv(t, 1)
	e.job("j", twopc.ModeAuto, "a")
	s := e.open("j", "w", nil)
	e.write("j", "w", s.Epoch, recs("a", "x"))
	type answer struct {
		r   twopc.CheckpointResult
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		r, err := e.c.Checkpoint(context.Background(), "j", "w", s.Epoch, 1, []byte("s1"), "")
		ch <- answer{r, err}
	}()
	<-gj.waiting
	select {
	case a := <-ch:
		t.Fatalf("checkpoint answered %+v %v while RESOLVED was held and no slot was spare", a.r, a.err)
	case <-time.After(200 * time.Millisecond):
	}
	close(gj.open)
	a := <-ch
	if a.err != nil || a.r.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint 1: got %+v %v, want committed", a.r, a.err)
	}
	if n := unresolved(e.j.Machine(), "j"); n != 0 {
		t.Fatalf("%d unresolved branches after the answer, want 0", n)
	}
}

// TestCrashAfterCommittedAnswerBeforeResolved: the process dies after
// answering committed and before RESOLVED is journaled. The restart finishes
// the decided branch again (the sink answers "already committed"), the
// writer restores that checkpoint, and nothing is lost, doubled or counted
// as data loss.
func TestCrashAfterCommittedAnswerBeforeResolved(t *testing.T) {
	e, gj := gatedEnv(t, 2)
	e.job("j", twopc.ModeAuto, "a", "b")
	s := e.open("j", "w", nil)
	e.write("j", "w", s.Epoch, append(recs("a", "a1"), recs("b", "b1")...))
	if r, ok := e.checkpointWithin(10*time.Second, "j", "w", s.Epoch, 1, "s1"); !ok || r.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint 1: got %+v (answered: %v), want committed", r, ok)
	}
	<-gj.waiting
	// The crash: a new process over the journal as it is (no RESOLVED).
	e.j = e.j.Reopen()
	if n := unresolved(e.j.Machine(), "j"); n != 2 {
		t.Fatalf("journal after the crash: %d unresolved branches, want 2", n)
	}
	e.start()
	s2 := e.open("j", "w", nil)
	if s2.Checkpoint != 1 || string(s2.State) != "s1" || s2.Status != twopc.StatusCommitted || len(s2.DataLoss) != 0 {
		t.Fatalf("reopen: got %+v, want checkpoint 1 s1 committed, no data loss", s2)
	}
	if n := unresolved(e.j.Machine(), "j"); n != 0 {
		t.Fatalf("%d unresolved branches after the restart, want 0", n)
	}
	if n := e.lost.Load(); n != 0 {
		t.Fatalf("%d data-loss events, want 0", n)
	}
	wantValues(t, e.a, "a1")
	wantValues(t, e.b, "b1")
}
