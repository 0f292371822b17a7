package raftlog

import (
	"sync/atomic"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// countingStore is the bolt log store with counts of its appends. Every
// StoreLog/StoreLogs call is one bolt transaction, whose commit (NoSync
// off) syncs the file twice: the data pages, then the meta page. So
// batches counts the log's durable writes ("fsyncs" in the metrics and the
// bench, each being one such pair), and entries ÷ batches shows how well
// raft groups the entries of concurrent proposers into one write (issue
// 12's "share fsyncs"; DESIGN.md "Batching").
type countingStore struct {
	*raftboltdb.BoltStore
	batches atomic.Uint64
	entries atomic.Uint64
}

func (s *countingStore) StoreLog(l *raft.Log) error {
	return s.StoreLogs([]*raft.Log{l})
}

func (s *countingStore) StoreLogs(logs []*raft.Log) error {
	err := s.BoltStore.StoreLogs(logs)
	if err == nil {
		s.batches.Add(1)
		s.entries.Add(uint64(len(logs)))
	}
	return err
}

// LogWrites reports how many append batches (one bolt commit, so one fsync,
// each) and how many entries this node's log store has written since Open,
// leader and follower alike. For metrics and the benchmark.
func (n *Node) LogWrites() (batches, entries uint64) {
	return n.logCount.batches.Load(), n.logCount.entries.Load()
}
