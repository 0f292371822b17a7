package raftlog

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"testing"

	"github.com/hashicorp/raft"
)

// memSink is a raft.SnapshotSink in memory.
type memSink struct {
	bytes.Buffer
	closed, canceled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.canceled = true; return nil }

func TestFSMSnapshotRestoreRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		cmds []string
		want map[string]int
	}{
		{"empty", nil, nil},
		{"one key", []string{"a"}, map[string]int{"a": 1}},
		{"several keys", []string{"a", "b", "a", "c", "a"}, map[string]int{"a": 3, "b": 1, "c": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := &fsm{sm: &Counters{}}
			for i, c := range tt.cmds {
				src.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: []byte(c)})
				// Entries that are not commands never reach the StateMachine.
				src.Apply(&raft.Log{Type: raft.LogNoop, Data: []byte("noop")})
			}
			snap, err := src.Snapshot()
			if err != nil {
				t.Fatalf("Snapshot: %v", err)
			}
			sink := &memSink{}
			if err := snap.Persist(sink); err != nil {
				t.Fatalf("Persist: %v", err)
			}
			snap.Release()
			if !sink.closed || sink.canceled {
				t.Fatalf("sink closed=%v canceled=%v, want closed and not canceled", sink.closed, sink.canceled)
			}

			dst := &Counters{}
			dst.Apply(1, []byte("stale")) // Restore replaces, not merges
			if err := (&fsm{sm: dst}).Restore(io.NopCloser(&sink.Buffer)); err != nil {
				t.Fatalf("Restore: %v", err)
			}
			if got := dst.State(); !maps.Equal(got, tt.want) {
				t.Errorf("restored state = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestFSMPassesLogIndex checks that the state machine learns the index of
// each command, which it returns to the proposer.
func TestFSMPassesLogIndex(t *testing.T) {
	c := &Counters{}
	f := &fsm{sm: c}
	for _, idx := range []uint64{3, 4, 9} {
		f.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: []byte("a")})
		if got := c.Index(); got != idx {
			t.Fatalf("got index %d, want %d", got, idx)
		}
	}
	f.Apply(&raft.Log{Index: 10, Type: raft.LogNoop})
	if got := c.Index(); got != 9 {
		t.Errorf("after a no-op entry: got index %d, want 9 (not a command)", got)
	}
}

type failingSM struct{ Counters }

var errBoom = errors.New("boom")

func (*failingSM) Snapshot() ([]byte, error) { return nil, errBoom }
func (*failingSM) Restore([]byte) error      { return errBoom }

func TestFSMPropagatesStateMachineErrors(t *testing.T) {
	f := &fsm{sm: &failingSM{}}
	if _, err := f.Snapshot(); !errors.Is(err, errBoom) {
		t.Errorf("Snapshot error = %v, want %v", err, errBoom)
	}
	if err := f.Restore(io.NopCloser(bytes.NewReader(nil))); !errors.Is(err, errBoom) {
		t.Errorf("Restore error = %v, want %v", err, errBoom)
	}
}
