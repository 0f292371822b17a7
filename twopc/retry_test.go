package twopc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// TestLargeStatesDoNotEvictSmallKeys: remembered open_session results hold
// up to 1 MiB of state each; past the byte bound those go first, so the key
// of a small command remembered before them still answers a retry with
// its stored result instead of being applied again.
func TestLargeStatesDoNotEvictSmallKeys(t *testing.T) {
	m := twopc.NewMachine()
	idx := uint64(0)
	apply := func(c twopc.Command) twopc.ApplyResult {
		idx++
		return m.Apply(idx, twopc.EncodeCommand(c)).(twopc.ApplyResult)
	}
	apply(twopc.Command{Op: twopc.OpPutJob, Key: "job", Spec: &twopc.JobSpec{Name: "j", Commit: twopc.ModeAuto, Sinks: []string{"s"}}})
	first := apply(twopc.Command{Op: twopc.OpOpenSession, Key: "open-w", Job: "j", Writer: "w", Node: "n"})
	small := twopc.Command{Op: twopc.OpPrepared, Key: "small", Job: "j", Writer: "w", Epoch: first.Session.Epoch,
		Checkpoint: 1, Decide: true, State: bytes.Repeat([]byte("s"), twopc.MaxStateBytes)}
	if r := apply(small); r.Code != "" {
		t.Fatal(r.Message)
	}
	// Nine writers whose sessions restore about 1 MiB each: more than the
	// bound on remembered state.
	for i := range 9 {
		wr := "big" + string(rune('a'+i))
		o := apply(twopc.Command{Op: twopc.OpOpenSession, Key: "open-" + wr, Job: "j", Writer: wr, Node: "n"})
		big := twopc.Command{Op: twopc.OpPrepared, Key: "prep-" + wr, Job: "j", Writer: wr, Epoch: o.Session.Epoch,
			Checkpoint: 1, Decide: true, State: bytes.Repeat([]byte("x"), twopc.MaxStateBytes)}
		apply(big)
		apply(twopc.Command{Op: twopc.OpOpenSession, Key: "reopen-" + wr, Job: "j", Writer: wr, Node: "n"})
	}
	r := apply(small)
	if !r.Duplicate || r.Code != "" {
		t.Fatalf("retry of the small prepared entry: %+v; want the stored result (a duplicate), not a second apply", r)
	}
}

// reapplyJournal applies a prepared entry twice, the second time under a
// fresh key, as a retry whose first key was forgotten would be, and
// returns the second answer (checkpoint out of order).
type reapplyJournal struct{ *twopctest.Journal }

func (j reapplyJournal) Propose(ctx context.Context, cmd []byte) (twopc.ApplyResult, error) {
	r, err := j.Journal.Propose(ctx, cmd)
	if err != nil || !strings.Contains(string(cmd), `"op":"prepared"`) {
		return r, err
	}
	var c twopc.Command
	if err := json.Unmarshal(cmd, &c); err != nil {
		return r, err
	}
	c.Key += "-again"
	return j.Journal.Propose(ctx, twopc.EncodeCommand(c))
}

// TestCheckpointAppliedTwiceIsNotAborted: when the answer the checkpoint
// gets is a refusal, but the journal holds the checkpoint of this very
// session, the entry did apply: the branches commit, nothing is aborted.
func TestCheckpointAppliedTwiceIsNotAborted(t *testing.T) {
	j := twopctest.NewJournal(twopc.NewMachine())
	s := twopctest.NewSink("s", 2)
	c, err := twopc.NewCoordinator(twopc.Config{Node: "n", Journal: reapplyJournal{j}, Machine: j.Machine(),
		Sinks: map[string]twopc.Sink{"s": s}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.PutJob(ctx, twopc.JobSpec{Name: "j", Commit: twopc.ModeAuto, Sinks: []string{"s"}}); err != nil {
		t.Fatal(err)
	}
	ss, err := c.OpenSession(ctx, "j", "w", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(ctx, "j", "w", ss.Epoch, nil, recs("s", "v1")); err != nil {
		t.Fatal(err)
	}
	r, err := c.Checkpoint(ctx, "j", "w", ss.Epoch, 1, nil, "")
	if err != nil || r.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint: %+v, %v; want committed", r, err)
	}
	wantValues(t, s, "v1")
}
