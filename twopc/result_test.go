package twopc

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"
)

func TestErrorCodesRoundTrip(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range errorCodes {
		t.Run(c.code, func(t *testing.T) {
			if seen[c.code] {
				t.Fatalf("code %s appears twice", c.code)
			}
			seen[c.code] = true
			err := fmt.Errorf("%w: details", c.err)
			if got := ErrorCode(err); got != c.code {
				t.Fatalf("got code %q, want %q", got, c.code)
			}
			back := CodeError(ErrorCode(err), err.Error())
			if !errors.Is(back, c.err) || back.Error() != err.Error() {
				t.Fatalf("got %q (is %v: %v), want %q wrapping it", back, c.err, errors.Is(back, c.err), err)
			}
		})
	}
	if ErrorCode(nil) != "" || CodeError("", "x") != nil {
		t.Error("nil error and empty code must map to each other")
	}
	if got := ErrorCode(errors.New("other")); got != CodeInternal {
		t.Errorf("plain error: got code %q, want %q", got, CodeInternal)
	}
	// Most specific first: an unknown sink that is also invalid input.
	if got := ErrorCode(fmt.Errorf("%w: %w", ErrUnknownSink, ErrInvalid)); got != "unknown_sink" {
		t.Errorf("unknown sink and invalid: got code %q, want unknown_sink", got)
	}
	// A code this node does not know keeps its message and wraps nothing.
	e := CodeError("from_the_future", "msg")
	for _, c := range errorCodes {
		if errors.Is(e, c.err) {
			t.Errorf("unknown code wraps %v", c.err)
		}
	}
	if e.Error() != `twopc: error code "from_the_future": msg` {
		t.Errorf("unknown code: got %q", e)
	}
}

// TestApplyResultJSONRoundTrip checks that a result survives the trip a
// forwarded command's answer takes: JSON over the network.
func TestApplyResultJSONRoundTrip(t *testing.T) {
	for _, r := range []ApplyResult{
		{Index: 7},
		{Index: 8, Duplicate: true, Session: SessionInfo{Epoch: 3, Checkpoint: 5, State: []byte{0, 1, 0xff}}},
		{Index: 9, Decided: map[string][]int64{"w1": {1, 2}, "w2": {4}}},
		errResult(fmt.Errorf("%w: epoch 1, current 2", ErrSessionFenced)),
	} {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var got ApplyResult
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Errorf("round trip of %s: got %+v, want %+v", b, got, r)
		}
	}
	r := errResult(fmt.Errorf("%w: epoch 1, current 2", ErrSessionFenced))
	b, _ := json.Marshal(r)
	var got ApplyResult
	_ = json.Unmarshal(b, &got)
	if err := got.Err(); !errors.Is(err, ErrSessionFenced) || err.Error() != "twopc: session fenced: epoch 1, current 2" {
		t.Errorf("error after the round trip: got %v, want ErrSessionFenced with its message", err)
	}
}

// TestMachineResultsSurviveSnapshot checks that a key remembered before a
// snapshot still returns its first result after restore.
func TestMachineResultsSurviveSnapshot(t *testing.T) {
	m := NewMachine()
	apply(t, m, Command{Op: OpPutJob, Spec: &JobSpec{Name: "x", Commit: ModeExternal, Sinks: []string{"k"}}})
	apply(t, m, Command{Op: OpOpenSession, Job: "x", Writer: "0"})
	apply(t, m, Command{Op: OpPrepared, Job: "x", Writer: "0", Epoch: 1, Checkpoint: 1, State: []byte("s1"),
		Branches: []JournalBranch{jb("x", "0", "k", 1, 1, 0)}})
	one := int64(1)
	open := Command{Op: OpOpenSession, Job: "x", Writer: "0", Key: "reopen", Restore: &one}
	first := apply(t, m, open)
	if first.Session.Epoch != 2 || string(first.Session.State) != "s1" || len(first.Decided["0"]) != 1 {
		t.Fatalf("got %+v, want epoch 2, state s1, checkpoint 1 decided", first)
	}
	snap, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	m2 := NewMachine()
	if err := m2.Restore(snap); err != nil {
		t.Fatal(err)
	}
	got := m2.Apply(99, EncodeCommand(open)).(ApplyResult)
	first.Duplicate = true
	if !reflect.DeepEqual(got, first) {
		t.Fatalf("after restore: got %+v, want the first result %+v", got, first)
	}
	// What a proposer does with its result does not reach the kept one.
	got.Decided["0"][0] = 42
	got.Session.State[0] = 'X'
	again := m2.Apply(100, EncodeCommand(open)).(ApplyResult)
	if !reflect.DeepEqual(again, first) {
		t.Fatalf("after changing a returned result: got %+v, want %+v", again, first)
	}
	if w, _ := m2.Writer("x", "0"); w.Epoch != 2 {
		t.Fatalf("duplicate changed the epoch to %d, want 2", w.Epoch)
	}
}

// TestMachineForgetsOldResults checks both bounds on remembered keys: their
// count, and the bytes of session states their results hold, also after a
// restore (the byte count is derived again from the snapshot).
func TestMachineForgetsOldResults(t *testing.T) {
	t.Run("count", func(t *testing.T) {
		m := NewMachine()
		m.Apply(1, EncodeCommand(Command{Op: OpPutJob, Key: "job", Spec: &JobSpec{Name: "j", Commit: ModeAuto, Sinks: []string{"k"}}}))
		for i := range dedupeKeys {
			m.Apply(uint64(i+2), EncodeCommand(Command{Op: OpPutJob, Key: fmt.Sprint("k", i), Spec: &JobSpec{Name: "j", Commit: ModeAuto, Sinks: []string{"k"}}}))
		}
		if len(m.st.Keys) != dedupeKeys || len(m.st.Results) != dedupeKeys || len(m.st.KeyOrder) != dedupeKeys {
			t.Fatalf("got %d keys, %d results, %d in order, want %d each", len(m.st.Keys), len(m.st.Results), len(m.st.KeyOrder), dedupeKeys)
		}
		if m.st.Keys["job"] {
			t.Fatal("the oldest key is still remembered")
		}
	})
	t.Run("state bytes", func(t *testing.T) {
		m := NewMachine()
		m.Apply(1, EncodeCommand(Command{Op: OpPutJob, Key: "job", Spec: &JobSpec{Name: "j", Commit: ModeAuto, Sinks: []string{"k"}}}))
		m.Apply(2, EncodeCommand(Command{Op: OpOpenSession, Key: "o0", Job: "j", Writer: "w"}))
		state := make([]byte, MaxStateBytes)
		m.Apply(3, EncodeCommand(Command{Op: OpPrepared, Key: "p", Job: "j", Writer: "w", Epoch: 1, Checkpoint: 1, Decide: true, State: state}))
		perState := dedupeStateBytes / MaxStateBytes
		for i := range perState + 2 {
			r := m.Apply(uint64(i+4), EncodeCommand(Command{Op: OpOpenSession, Key: fmt.Sprint("o", i+1), Job: "j", Writer: "w"})).(ApplyResult)
			if len(r.Session.State) != MaxStateBytes {
				t.Fatalf("open %d: got %d state bytes, want %d", i, len(r.Session.State), MaxStateBytes)
			}
		}
		if m.resultBytes > dedupeStateBytes {
			t.Fatalf("results hold %d state bytes, want at most %d", m.resultBytes, dedupeStateBytes)
		}
		newest := fmt.Sprint("o", perState+2)
		if !m.st.Keys[newest] || m.st.Keys["o2"] {
			t.Fatalf("want the newest key %s kept and o2 forgotten; keys %v", newest, m.st.KeyOrder)
		}
		snap, err := m.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		m2 := NewMachine()
		if err := m2.Restore(snap); err != nil {
			t.Fatal(err)
		}
		if m2.resultBytes != m.resultBytes {
			t.Fatalf("after restore: %d state bytes counted, want %d", m2.resultBytes, m.resultBytes)
		}
	})
}

// TestMachineRestoresOldSnapshot checks a snapshot from before results were
// kept: its keys still make commands duplicates.
func TestMachineRestoresOldSnapshot(t *testing.T) {
	m := NewMachine()
	old := `{"jobs":{"j":{"spec":{"name":"j","commit":"auto","sinks":["k"]},"writers":{}}},"keys":{"k1":true},"key_order":["k1"]}`
	if err := m.Restore([]byte(old)); err != nil {
		t.Fatal(err)
	}
	r := m.Apply(5, EncodeCommand(Command{Op: OpOpenSession, Key: "k1", Job: "j", Writer: "w"})).(ApplyResult)
	if !r.Duplicate {
		t.Fatalf("got %+v, want a duplicate", r)
	}
	if _, ok := m.Writer("j", "w"); ok {
		t.Fatal("a remembered key applied again")
	}
	r = m.Apply(6, EncodeCommand(Command{Op: OpOpenSession, Key: "k2", Job: "j", Writer: "w"})).(ApplyResult)
	if r.Err() != nil || r.Index != 6 || m.st.Results["k2"].Index != 6 {
		t.Fatalf("new key after an old snapshot: got %+v", r)
	}
}
