package raftlog

import (
	"fmt"
	"io"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// fsm adapts a StateMachine to raft.FSM. raft calls all three methods from
// its FSM goroutine, so they are serialized with each other.
type fsm struct {
	sm StateMachine
	// applied is the index of the last command StateMachine.Apply returned
	// from. raft's own AppliedIndex moves when entries are handed to the
	// FSM goroutine, before they are applied, so WaitApplied needs this.
	applied atomic.Uint64
}

var _ raft.FSM = (*fsm)(nil)

// Apply hands command entries to the StateMachine. raft only delivers
// LogCommand entries here (this fsm does not implement ConfigurationStore);
// the check guards against that changing.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	r := f.sm.Apply(l.Index, l.Data)
	f.applied.Store(l.Index)
	return r
}

// Snapshot captures the state now, while Apply is not running; Persist then
// writes the bytes on another goroutine while Apply continues.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	b, err := f.sm.Snapshot()
	if err != nil {
		return nil, fmt.Errorf("raftlog: state machine snapshot: %w", err)
	}
	return snapshot(b), nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("raftlog: read snapshot: %w", err)
	}
	if err := f.sm.Restore(b); err != nil {
		return fmt.Errorf("raftlog: state machine restore: %w", err)
	}
	return nil
}

// snapshot is the state machine's bytes, written as is.
type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("raftlog: write snapshot: %w", err)
	}
	return sink.Close()
}

func (snapshot) Release() {}
