package raftlog

import (
	"encoding/json"
	"maps"
	"sync"
)

// Counters is the StateMachine the tests replicate: each command is a key
// whose counter Apply increments, returning the new value. It is exported
// only to this package's tests (raftlog_test uses it too).
type Counters struct {
	// Block, if set, makes Apply of the command "block" wait until it is
	// closed, to hold up the FSM.
	Block chan struct{}
	// Blocking, if set, is closed when Apply starts waiting on Block.
	Blocking chan struct{}

	mu       sync.Mutex
	m        map[string]int
	applies  int
	restores int
	index    uint64 // of the last command applied
}

func (c *Counters) Apply(index uint64, cmd []byte) any {
	if string(cmd) == "block" && c.Block != nil {
		if c.Blocking != nil {
			close(c.Blocking)
		}
		<-c.Block
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]int{}
	}
	c.m[string(cmd)]++
	c.applies++
	c.index = index
	return c.m[string(cmd)]
}

func (c *Counters) Snapshot() ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return json.Marshal(c.m)
}

func (c *Counters) Restore(b []byte) error {
	var m map[string]int
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = m
	c.restores++
	return nil
}

// State returns a copy of the counters.
func (c *Counters) State() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.m)
}

// Index returns the log index of the last command applied.
func (c *Counters) Index() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.index
}

// Calls returns how many commands were applied and snapshots restored.
func (c *Counters) Calls() (applies, restores int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applies, c.restores
}
