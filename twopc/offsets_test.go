package twopc_test

import (
	"context"
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

func newOffsetsEnv(t *testing.T, inflight int) *env {
	e := &env{t: t, j: twopctest.NewJournal(twopc.NewMachine()),
		a: twopctest.NewSink("a", inflight), b: twopctest.NewSink("b", inflight),
		k: twopctest.NewOffsetSink("k", inflight)}
	e.point.Store("")
	e.start()
	return e
}

func offs(group string, topic string, parts map[int32]int64) *twopc.Offsets {
	return &twopc.Offsets{Sink: "k", Group: group, Topics: map[string]map[int32]int64{topic: parts}}
}

func wantGroup(t *testing.T, s *twopctest.OffsetSink, group string, want map[string]map[int32]int64) {
	t.Helper()
	got := s.GroupOffsets(group)
	if len(want) == 0 && len(got) == 0 {
		return
	}
	if !maps.EqualFunc(got, want, func(x, y map[int32]int64) bool { return maps.Equal(x, y) }) {
		t.Fatalf("group %s offsets %v, want %v", group, got, want)
	}
}

func TestOffsetsCommitWithCheckpoint(t *testing.T) {
	e := newOffsetsEnv(t, 2)
	e.job("j", twopc.ModeAuto, "a", "k")
	ctx := context.Background()
	e.open("j", "w", nil)

	// Records to another sink only: the offsets get a branch of their own.
	e.write("j", "w", 1, recs("a", "a1"))
	r, err := e.c.CheckpointWith(ctx, "j", "w", 1, 1, []byte("s1"), "", offs("g", "in", map[int32]int64{0: 5, 1: 7}))
	if err != nil || r.Status != twopc.StatusCommitted || len(r.Branches) != 2 {
		t.Fatalf("checkpoint 1: got %+v %v, want committed with 2 branches", r, err)
	}
	wantValues(t, e.a, "a1")
	wantGroup(t, e.k, "g", map[string]map[int32]int64{"in": {0: 5, 1: 7}})

	// Records to k and offsets share its branch.
	e.write("j", "w", 1, recs("k", "k1", "k2"))
	r, err = e.c.CheckpointWith(ctx, "j", "w", 1, 2, []byte("s2"), "", offs("g", "in", map[int32]int64{0: 9}))
	if err != nil || r.Status != twopc.StatusCommitted || len(r.Branches) != 1 {
		t.Fatalf("checkpoint 2: got %+v %v, want committed with 1 branch", r, err)
	}
	wantValues(t, e.k.Sink, "k1", "k2")
	wantGroup(t, e.k, "g", map[string]map[int32]int64{"in": {0: 9, 1: 7}})

	// A retry repeats state and offsets; other offsets are a conflict.
	again, err := e.c.CheckpointWith(ctx, "j", "w", 1, 2, []byte("s2"), "", offs("g", "in", map[int32]int64{0: 9}))
	if err != nil || again.Status != twopc.StatusCommitted {
		t.Fatalf("retry: got %+v %v", again, err)
	}
	for name, o := range map[string]*twopc.Offsets{
		"other offset": offs("g", "in", map[int32]int64{0: 10}),
		"other group":  offs("h", "in", map[int32]int64{0: 9}),
		"none":         nil,
	} {
		if _, err := e.c.CheckpointWith(ctx, "j", "w", 1, 2, []byte("s2"), "", o); !errors.Is(err, twopc.ErrCheckpointOrder) {
			t.Errorf("retry with %s: got %v, want ErrCheckpointOrder", name, err)
		}
	}
	// A checkpoint without offsets leaves the group alone.
	e.write("j", "w", 1, recs("k", "k3"))
	if r := e.checkpoint("j", "w", 1, 3, "s3"); r.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint 3: %+v", r)
	}
	wantGroup(t, e.k, "g", map[string]map[int32]int64{"in": {0: 9, 1: 7}})
}

func TestOffsetsInvalidChangeNothing(t *testing.T) {
	e := newOffsetsEnv(t, 2)
	e.job("j", twopc.ModeAuto, "a", "k")
	e.job("other", twopc.ModeAuto, "a")
	ctx := context.Background()
	e.open("j", "w", nil)
	e.open("other", "w", nil)
	e.write("j", "w", 1, recs("k", "k1"))
	e.k.BadTopic = "missing"
	neg := int32(-2)
	cases := map[string]struct {
		job  string
		o    *twopc.Offsets
		want error
	}{
		"non-offset sink":   {"j", &twopc.Offsets{Sink: "a", Group: "g", Topics: map[string]map[int32]int64{"in": {0: 1}}}, twopc.ErrInvalid},
		"unknown sink":      {"j", &twopc.Offsets{Sink: "zz", Group: "g", Topics: map[string]map[int32]int64{"in": {0: 1}}}, twopc.ErrUnknownSink},
		"sink not in job":   {"other", offs("g", "in", map[int32]int64{0: 1}), twopc.ErrUnknownSink},
		"no group":          {"j", offs("", "in", map[int32]int64{0: 1}), twopc.ErrInvalid},
		"no topics":         {"j", &twopc.Offsets{Sink: "k", Group: "g"}, twopc.ErrInvalid},
		"empty topic":       {"j", &twopc.Offsets{Sink: "k", Group: "g", Topics: map[string]map[int32]int64{"in": {}}}, twopc.ErrInvalid},
		"negative part":     {"j", offs("g", "in", map[int32]int64{-1: 1}), twopc.ErrInvalid},
		"negative offset":   {"j", offs("g", "in", map[int32]int64{0: -1}), twopc.ErrInvalid},
		"bad generation":    {"j", &twopc.Offsets{Sink: "k", Group: "g", Topics: map[string]map[int32]int64{"in": {0: 1}}, Generation: &neg}, twopc.ErrInvalid},
		"long group":        {"j", offs(strings.Repeat("g", 256), "in", map[int32]int64{0: 1}), twopc.ErrInvalid},
		"control in member": {"j", &twopc.Offsets{Sink: "k", Group: "g", MemberID: "a\nb", Topics: map[string]map[int32]int64{"in": {0: 1}}}, twopc.ErrInvalid},
		"sink refuses":      {"j", offs("g", "missing", map[int32]int64{0: 1}), twopc.ErrInvalid},
	}
	big := map[int32]int64{}
	for p := range int32(twopc.MaxOffsetPartitions + 1) {
		big[p] = 1
	}
	cases["too many partitions"] = struct {
		job  string
		o    *twopc.Offsets
		want error
	}{"j", offs("g", "in", big), twopc.ErrInvalid}
	for name, tc := range cases {
		_, err := e.c.CheckpointWith(ctx, tc.job, "w", 1, 1, nil, "", tc.o)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", name, err, tc.want)
		}
	}
	// Nothing changed: the session goes on, its record commits with the
	// next checkpoint, no group moved and no branch was begun for k twice.
	if r := e.checkpoint("j", "w", 1, 1, "s1"); r.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint after refusals: %+v", r)
	}
	wantValues(t, e.k.Sink, "k1")
	wantGroup(t, e.k, "g", nil)
	if st := e.k.States(); st[twopctest.Committed] != 1 || len(st) != 1 {
		t.Fatalf("k branches %v, want one committed", st)
	}
}

func TestOffsetsFailureFailsSession(t *testing.T) {
	e := newOffsetsEnv(t, 2)
	e.job("j", twopc.ModeAuto, "k")
	ctx := context.Background()
	e.open("j", "w", nil)
	e.write("j", "w", 1, recs("k", "k1"))
	e.k.FailOffsets = twopctest.ErrInjected
	_, err := e.c.CheckpointWith(ctx, "j", "w", 1, 1, nil, "", offs("g", "in", map[int32]int64{0: 1}))
	if !errors.Is(err, twopc.ErrSinkFailure) || !strings.Contains(err.Error(), twopctest.ErrInjected.Error()) {
		t.Fatalf("got %v, want a sink failure naming the injected one", err)
	}
	e.k.FailOffsets = nil
	// The branch was aborted with its record; the app reopens and replays.
	if st := e.k.States(); st[twopctest.Aborted] != 1 {
		t.Fatalf("k branches %v, want the failed one aborted", st)
	}
	s := e.open("j", "w", nil)
	e.write("j", "w", s.Epoch, recs("k", "k1"))
	if _, err := e.c.CheckpointWith(ctx, "j", "w", s.Epoch, 1, nil, "", offs("g", "in", map[int32]int64{0: 1})); err != nil {
		t.Fatal(err)
	}
	wantValues(t, e.k.Sink, "k1")
	wantGroup(t, e.k, "g", map[string]map[int32]int64{"in": {0: 1}})
}

func TestOffsetsExternalModeAndCrash(t *testing.T) {
	e := newOffsetsEnv(t, 4)
	e.job("x", twopc.ModeExternal, "a", "k")
	ctx := context.Background()
	e.open("x", "w", nil)

	// 1: journaled, then the process dies; the external commit after the
	// restart commits the offsets with the records.
	e.write("x", "w", 1, recs("a", "a1"))
	e.crashAt("after-journal", func() {
		e.c.CheckpointWith(ctx, "x", "w", 1, 1, []byte("s1"), twopc.WaitPrepared, offs("g", "in", map[int32]int64{0: 11}))
	})
	wantGroup(t, e.k, "g", nil)
	if r, err := e.c.Commit(ctx, "x", 1); err != nil || r.Status != twopc.StatusCommitted {
		t.Fatalf("commit 1: %+v %v", r, err)
	}
	wantValues(t, e.a, "a1")
	wantGroup(t, e.k, "g", map[string]map[int32]int64{"in": {0: 11}})

	// 2: prepared in the sinks, never journaled: the next open fences it,
	// the offsets never move.
	s := e.open("x", "w", nil)
	e.write("x", "w", s.Epoch, recs("a", "a2"))
	e.crashAt("after-prepare", func() {
		e.c.CheckpointWith(ctx, "x", "w", s.Epoch, 2, []byte("s2"), twopc.WaitPrepared, offs("g", "in", map[int32]int64{0: 22}))
	})
	s = e.open("x", "w", nil)
	if s.Checkpoint != 1 {
		t.Fatalf("restored %+v, want checkpoint 1", s)
	}
	wantGroup(t, e.k, "g", map[string]map[int32]int64{"in": {0: 11}})

	// 3: prepared and aborted by the coordinator: dropped.
	if _, err := e.c.CheckpointWith(ctx, "x", "w", s.Epoch, 3, []byte("s3"), "", offs("g", "in", map[int32]int64{0: 33})); err != nil {
		t.Fatal(err)
	}
	if r, err := e.c.Abort(ctx, "x", 3); err != nil || r.Status != twopc.StatusAborted {
		t.Fatalf("abort 3: %+v %v", r, err)
	}
	wantGroup(t, e.k, "g", map[string]map[int32]int64{"in": {0: 11}})
	wantValues(t, e.a, "a1")
	if st := e.k.States(); st[twopctest.Open]+st[twopctest.Prepared] != 0 {
		t.Fatalf("k left branches %v", st)
	}
}
