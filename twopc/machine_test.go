package twopc

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"sync/atomic"
	"testing"
)

// nextIndex numbers the commands apply applies, as a journal would.
var nextIndex atomic.Uint64

// apply applies cmd (with a fresh key unless one is given) and checks that a
// snapshot → restore round trip reproduces the state exactly.
func apply(t *testing.T, m *Machine, c Command) ApplyResult {
	t.Helper()
	if c.Key == "" {
		c.Key = fmt.Sprintf("%s-%d", t.Name(), len(m.st.KeyOrder))
	}
	c.Time++
	r := m.Apply(nextIndex.Add(1), EncodeCommand(c)).(ApplyResult)
	snap, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	m2 := NewMachine()
	if err := m2.Restore(snap); err != nil {
		t.Fatal(err)
	}
	snap2, _ := m2.Snapshot()
	if !bytes.Equal(snap, snap2) {
		t.Fatalf("snapshot round trip differs:\n got %s\nwant %s", snap2, snap)
	}
	return r
}

func jb(job, writer, sink string, epoch, seq uint64, slot int) JournalBranch {
	return JournalBranch{ID: BranchID{Job: job, Writer: writer, Sink: sink, Epoch: epoch, Seq: seq, Slot: slot}, Handle: Handle(`{"h":1}`)}
}

func TestMachineCommands(t *testing.T) {
	t.Run("put job validates and is idempotent", func(t *testing.T) {
		m := NewMachine()
		for _, spec := range []*JobSpec{nil, {Name: "bad name", Commit: ModeAuto, Sinks: []string{"k"}},
			{Name: "j", Commit: "sometimes", Sinks: []string{"k"}}, {Name: "j", Commit: ModeAuto}} {
			if r := apply(t, m, Command{Op: OpPutJob, Spec: spec}); !errors.Is(r.Err(), ErrInvalid) {
				t.Errorf("spec %+v: got %v, want ErrInvalid", spec, r.Err())
			}
		}
		if got := m.JobNames(); len(got) != 0 {
			t.Fatalf("bad specs created jobs %v", got)
		}
		for range 2 {
			if r := apply(t, m, Command{Op: OpPutJob, Spec: &JobSpec{Name: "j", Commit: ModeAuto, Sinks: []string{"k"}}}); r.Err() != nil {
				t.Fatal(r.Err())
			}
		}
		if got := m.JobNames(); len(got) != 1 {
			t.Fatalf("got jobs %v, want [j]", got)
		}
	})

	t.Run("sessions fence and checkpoints order", func(t *testing.T) {
		m := NewMachine()
		if r := apply(t, m, Command{Op: OpOpenSession, Job: "nope", Writer: "0"}); !errors.Is(r.Err(), ErrJobNotFound) {
			t.Fatalf("got %v, want ErrJobNotFound", r.Err())
		}
		apply(t, m, Command{Op: OpPutJob, Spec: &JobSpec{Name: "j", Commit: ModeAuto, Sinks: []string{"k"}}})
		r1 := apply(t, m, Command{Op: OpOpenSession, Job: "j", Writer: "0", Node: "n1"})
		r2 := apply(t, m, Command{Op: OpOpenSession, Job: "j", Writer: "0", Node: "n1"})
		if r1.Session.Epoch != 1 || r2.Session.Epoch != 2 {
			t.Fatalf("got epochs %d, %d, want 1, 2", r1.Session.Epoch, r2.Session.Epoch)
		}
		if r := apply(t, m, Command{Op: OpPrepared, Job: "j", Writer: "0", Epoch: 1, Checkpoint: 1, Decide: true}); !errors.Is(r.Err(), ErrSessionFenced) {
			t.Fatalf("stale epoch: got %v, want ErrSessionFenced", r.Err())
		}
		if r := apply(t, m, Command{Op: OpPrepared, Job: "j", Writer: "0", Epoch: 2, Checkpoint: 1}); !errors.Is(r.Err(), ErrModeConflict) {
			t.Fatalf("undecided prepare in auto mode: got %v, want ErrModeConflict", r.Err())
		}
		r := apply(t, m, Command{Op: OpPrepared, Job: "j", Writer: "0", Epoch: 2, Checkpoint: 5, State: []byte("s5"), Decide: true,
			Branches: []JournalBranch{jb("j", "0", "k", 2, 1, 0)}})
		if r.Err() != nil {
			t.Fatal(r.Err())
		}
		for _, n := range []int64{5, 4} {
			if r := apply(t, m, Command{Op: OpPrepared, Job: "j", Writer: "0", Epoch: 2, Checkpoint: n, Decide: true}); !errors.Is(r.Err(), ErrCheckpointOrder) {
				t.Fatalf("checkpoint %d after 5: got %v, want ErrCheckpointOrder", n, r.Err())
			}
		}
		st, _ := m.CheckpointStatus("j", "0", 5)
		if st.Status != StatusCommitting {
			t.Fatalf("got status %s, want committing", st.Status)
		}
		if p := m.Pending("j"); len(p) != 1 || p[0].Decision != decisionCommit {
			t.Fatalf("got pending %+v, want one decided branch", p)
		}
		// A restarted writer restores the decided checkpoint even before
		// the sink confirmed: the decision is durable.
		r3 := apply(t, m, Command{Op: OpOpenSession, Job: "j", Writer: "0", Node: "n1"})
		if r3.Session.Checkpoint != 5 || string(r3.Session.State) != "s5" {
			t.Fatalf("got restore %d %q, want 5 s5", r3.Session.Checkpoint, r3.Session.State)
		}
		apply(t, m, Command{Op: OpResolved, Job: "j", Outcomes: []BranchOutcome{{Writer: "0", Checkpoint: 5, Sink: "k", Epoch: 2, Seq: 1, Outcome: OutcomeCommitted}}})
		apply(t, m, Command{Op: OpResolved, Job: "j", Outcomes: []BranchOutcome{{Writer: "0", Checkpoint: 5, Sink: "k", Epoch: 2, Seq: 1, Outcome: OutcomeCommitted}}})
		if p := m.Pending("j"); len(p) != 0 {
			t.Fatalf("got pending %+v after resolve, want none", p)
		}
		st, _ = m.CheckpointStatus("j", "0", 5)
		if st.Status != StatusCommitted {
			t.Fatalf("got status %s, want committed", st.Status)
		}
		// The order holds across sessions.
		if r := apply(t, m, Command{Op: OpPrepared, Job: "j", Writer: "0", Epoch: 3, Checkpoint: 5, Decide: true}); !errors.Is(r.Err(), ErrCheckpointOrder) {
			t.Fatalf("got %v, want ErrCheckpointOrder", r.Err())
		}
	})

	t.Run("external decide and restore", func(t *testing.T) {
		m := NewMachine()
		apply(t, m, Command{Op: OpPutJob, Spec: &JobSpec{Name: "x", Commit: ModeExternal, Sinks: []string{"k"}}})
		for _, w := range []string{"0", "1"} {
			apply(t, m, Command{Op: OpOpenSession, Job: "x", Writer: w})
			for n := int64(1); n <= 3; n++ {
				r := apply(t, m, Command{Op: OpPrepared, Job: "x", Writer: w, Epoch: 1, Checkpoint: n, State: []byte{byte(n)},
					Branches: []JournalBranch{jb("x", w, "k", 1, uint64(n), int(n))}})
				if r.Err() != nil {
					t.Fatal(r.Err())
				}
			}
		}
		if r := apply(t, m, Command{Op: OpPrepared, Job: "x", Writer: "0", Epoch: 1, Checkpoint: 9, Decide: true}); !errors.Is(r.Err(), ErrModeConflict) {
			t.Fatalf("decided prepare in external mode: got %v, want ErrModeConflict", r.Err())
		}
		if r := apply(t, m, Command{Op: OpPutJob, Spec: &JobSpec{Name: "x", Commit: ModeAuto, Sinks: []string{"k"}}}); !errors.Is(r.Err(), ErrModeConflict) {
			t.Fatalf("mode change with open checkpoints: got %v, want ErrModeConflict", r.Err())
		}
		r := apply(t, m, Command{Op: OpDecide, Job: "x", Checkpoint: 2, Commit: true})
		if got := r.Decided["0"]; len(got) != 2 || got[1] != 2 || len(r.Decided["1"]) != 2 {
			t.Fatalf("got decided %v, want 1,2 for both writers", r.Decided)
		}
		if w, _ := m.Writer("x", "1"); w.LastCommitted != 2 {
			t.Fatalf("got last committed %d, want 2", w.LastCommitted)
		}
		r = apply(t, m, Command{Op: OpDecide, Job: "x", Checkpoint: 3, Commit: false})
		if len(r.Decided["0"]) != 1 {
			t.Fatalf("abort 3: got %v", r.Decided)
		}
		st, _ := m.CheckpointStatus("x", "0", 3)
		if st.Status != StatusAborting {
			t.Fatalf("got %s, want aborting", st.Status)
		}
		// restore on open: writer 1 had 1..3; 1,2 decided; 3 aborted above.
		apply(t, m, Command{Op: OpPrepared, Job: "x", Writer: "1", Epoch: 1, Checkpoint: 4, Branches: []JournalBranch{jb("x", "1", "k", 1, 4, 0)}})
		apply(t, m, Command{Op: OpPrepared, Job: "x", Writer: "1", Epoch: 1, Checkpoint: 5, Branches: []JournalBranch{jb("x", "1", "k", 1, 5, 3)}})
		four := int64(4)
		r = apply(t, m, Command{Op: OpOpenSession, Job: "x", Writer: "1", Restore: &four})
		if r.Session.Checkpoint != 4 || r.Session.Epoch != 2 {
			t.Fatalf("got %+v, want checkpoint 4 epoch 2", r.Session)
		}
		st4, _ := m.CheckpointStatus("x", "1", 4)
		st5, _ := m.CheckpointStatus("x", "1", 5)
		if st4.Status != StatusCommitting || st5.Status != StatusAborting {
			t.Fatalf("got 4=%s 5=%s, want committing, aborting", st4.Status, st5.Status)
		}
	})

	t.Run("duplicate key changes nothing", func(t *testing.T) {
		m := NewMachine()
		apply(t, m, Command{Op: OpPutJob, Spec: &JobSpec{Name: "j", Commit: ModeAuto, Sinks: []string{"k"}}})
		apply(t, m, Command{Op: OpOpenSession, Job: "j", Writer: "0", Key: "same"})
		first := apply(t, m, Command{Op: OpOpenSession, Job: "j", Writer: "0", Key: "same"})
		r := apply(t, m, Command{Op: OpOpenSession, Job: "j", Writer: "0", Key: "same"})
		if !r.Duplicate {
			t.Fatal("got no Duplicate for a repeated key")
		}
		if w, _ := m.Writer("j", "0"); w.Epoch != 1 {
			t.Fatalf("got epoch %d, want 1", w.Epoch)
		}
		// The duplicate answers what the first answered, index included.
		first.Duplicate = true
		if !reflect.DeepEqual(r, first) {
			t.Fatalf("duplicate: got %+v, want the first result %+v", r, first)
		}
	})

	t.Run("data loss shows in status", func(t *testing.T) {
		m := NewMachine()
		apply(t, m, Command{Op: OpPutJob, Spec: &JobSpec{Name: "j", Commit: ModeAuto, Sinks: []string{"k"}}})
		apply(t, m, Command{Op: OpOpenSession, Job: "j", Writer: "0"})
		apply(t, m, Command{Op: OpPrepared, Job: "j", Writer: "0", Epoch: 1, Checkpoint: 1, Decide: true, Branches: []JournalBranch{jb("j", "0", "k", 1, 1, 0)}})
		apply(t, m, Command{Op: OpResolved, Job: "j", Outcomes: []BranchOutcome{{Writer: "0", Checkpoint: 1, Sink: "k", Epoch: 1, Seq: 1, Outcome: OutcomeDataLoss}}})
		st, _ := m.CheckpointStatus("j", "0", 1)
		if st.Status != StatusDataLoss {
			t.Fatalf("got %s, want data_loss", st.Status)
		}
		// The last committed checkpoint keeps its loss after it leaves the
		// recent list, pushed out by later aborted checkpoints.
		if got := m.CommittedStatus("j", "0", 1); got != StatusDataLoss {
			t.Fatalf("committed status of 1: got %s, want data_loss", got)
		}
		apply(t, m, Command{Op: OpPutJob, Spec: &JobSpec{Name: "x", Commit: ModeExternal, Sinks: []string{"k"}}})
		apply(t, m, Command{Op: OpOpenSession, Job: "x", Writer: "0"})
		apply(t, m, Command{Op: OpPrepared, Job: "x", Writer: "0", Epoch: 1, Checkpoint: 1, Branches: []JournalBranch{jb("x", "0", "k", 1, 1, 0)}})
		apply(t, m, Command{Op: OpDecide, Job: "x", Checkpoint: 1, Commit: true})
		apply(t, m, Command{Op: OpResolved, Job: "x", Outcomes: []BranchOutcome{{Writer: "0", Checkpoint: 1, Sink: "k", Epoch: 1, Seq: 1, Outcome: OutcomeDataLoss}}})
		for n := int64(2); n <= recentPerWriter+2; n++ {
			apply(t, m, Command{Op: OpPrepared, Job: "x", Writer: "0", Epoch: 1, Checkpoint: n, Branches: []JournalBranch{jb("x", "0", "k", 1, uint64(n), 0)}})
			apply(t, m, Command{Op: OpDecide, Job: "x", Checkpoint: n, Commit: false})
			apply(t, m, Command{Op: OpResolved, Job: "x", Outcomes: []BranchOutcome{{Writer: "0", Checkpoint: n, Sink: "k", Epoch: 1, Seq: uint64(n), Outcome: OutcomeAborted}}})
		}
		if _, ok := m.CheckpointStatus("x", "0", 1); ok {
			t.Fatal("checkpoint 1 is still in the recent list; the test needs it gone")
		}
		if got := m.CommittedStatus("x", "0", 1); got != StatusDataLoss {
			t.Fatalf("committed status of evicted 1: got %s, want data_loss", got)
		}
		// A later commit clears it: the loss belonged to checkpoint 1.
		apply(t, m, Command{Op: OpPrepared, Job: "x", Writer: "0", Epoch: 1, Checkpoint: 20, Branches: []JournalBranch{jb("x", "0", "k", 1, 20, 0)}})
		apply(t, m, Command{Op: OpDecide, Job: "x", Checkpoint: 20, Commit: true})
		apply(t, m, Command{Op: OpResolved, Job: "x", Outcomes: []BranchOutcome{{Writer: "0", Checkpoint: 20, Sink: "k", Epoch: 1, Seq: 20, Outcome: OutcomeCommitted}}})
		if got := m.CommittedStatus("x", "0", 20); got != StatusCommitted {
			t.Fatalf("committed status of 20: got %s, want committed", got)
		}
	})
}

func TestMachinePanicsOnGarbage(t *testing.T) {
	for _, in := range []string{"{", `{"op":"explode"}`} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Apply(%q) did not panic", in)
				}
			}()
			NewMachine().Apply(1, []byte(in))
		}()
	}
}

func TestMachineDeleteWriter(t *testing.T) {
	m := NewMachine()
	if r := apply(t, m, Command{Op: OpDeleteWriter, Job: "j", Writer: "0"}); !errors.Is(r.Err(), ErrJobNotFound) {
		t.Fatalf("unknown job: got %v, want ErrJobNotFound", r.Err())
	}
	apply(t, m, Command{Op: OpPutJob, Spec: &JobSpec{Name: "j", Commit: ModeExternal, Sinks: []string{"k"}}})
	if r := apply(t, m, Command{Op: OpDeleteWriter, Job: "j", Writer: "0"}); r.Err() != nil {
		t.Fatalf("unknown writer: got %v, want nil (idempotent)", r.Err())
	}
	for range 3 {
		apply(t, m, Command{Op: OpOpenSession, Job: "j", Writer: "0"})
	}
	apply(t, m, Command{Op: OpPrepared, Job: "j", Writer: "0", Epoch: 3, Checkpoint: 4, State: []byte("s4"),
		Branches: []JournalBranch{jb("j", "0", "k", 3, 1, 0)}})
	if r := apply(t, m, Command{Op: OpDeleteWriter, Job: "j", Writer: "0"}); !errors.Is(r.Err(), ErrWriterInDoubt) {
		t.Fatalf("writer with a prepared checkpoint: got %v, want ErrWriterInDoubt", r.Err())
	}
	apply(t, m, Command{Op: OpDecide, Job: "j", Checkpoint: 4, Commit: true})
	if r := apply(t, m, Command{Op: OpDeleteWriter, Job: "j", Writer: "0"}); !errors.Is(r.Err(), ErrWriterInDoubt) {
		t.Fatalf("writer with a decided, unfinished checkpoint: got %v, want ErrWriterInDoubt", r.Err())
	}
	apply(t, m, Command{Op: OpResolved, Job: "j", Outcomes: []BranchOutcome{{Writer: "0", Checkpoint: 4, Sink: "k", Epoch: 3, Seq: 1, Outcome: OutcomeCommitted}}})
	if r := apply(t, m, Command{Op: OpDeleteWriter, Job: "j", Writer: "0"}); r.Err() != nil {
		t.Fatal(r.Err())
	}
	if _, ok := m.Writer("j", "0"); ok {
		t.Fatal("writer still there after delete")
	}
	// A new writer of the same name starts from checkpoint 0 and no state,
	// at an epoch above the deleted one's.
	r := apply(t, m, Command{Op: OpOpenSession, Job: "j", Writer: "0"})
	if r.Session.Epoch != 4 || r.Session.Checkpoint != 0 || r.Session.State != nil {
		t.Fatalf("reopened deleted writer: got epoch %d checkpoint %d state %q, want 4, 0, nil",
			r.Session.Epoch, r.Session.Checkpoint, r.Session.State)
	}
	if r := apply(t, m, Command{Op: OpPrepared, Job: "j", Writer: "0", Epoch: 3, Checkpoint: 1}); !errors.Is(r.Err(), ErrSessionFenced) {
		t.Fatalf("an epoch of the deleted writer: got %v, want ErrSessionFenced", r.Err())
	}
	if r := apply(t, m, Command{Op: OpPrepared, Job: "j", Writer: "0", Epoch: 4, Checkpoint: 1}); r.Err() != nil {
		t.Fatalf("checkpoint 1 after delete: %v", r.Err())
	}
}
