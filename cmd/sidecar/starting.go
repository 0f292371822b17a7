package main

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/twopc"
)

// The API is served from the start of start-up, before the coordinator
// exists: a node that forms a cluster (bootstrap_expect) must answer the
// other nodes' GET /v1/cluster while it waits for them, and a joining
// node's own API must answer the probes of GET /v1/cluster elsewhere.
// Until start-up is done every application call answers 503 unavailable
// (retry), exactly as a node without a journal leader does.

// lateService is the api.Service of a node still starting: it passes calls
// to the coordinator once set, and refuses them with ErrUnavailable before.
type lateService struct {
	c atomic.Pointer[twopc.Coordinator]
}

var _ api.Service = (*lateService)(nil)

var errStarting = fmt.Errorf("%w: the sidecar is starting (joining the cluster or recovering); retry", twopc.ErrUnavailable)

func (l *lateService) get() (*twopc.Coordinator, error) {
	if c := l.c.Load(); c != nil {
		return c, nil
	}
	return nil, errStarting
}

func (l *lateService) PutJob(ctx context.Context, spec twopc.JobSpec) (twopc.JobInfo, error) {
	c, err := l.get()
	if err != nil {
		return twopc.JobInfo{}, err
	}
	return c.PutJob(ctx, spec)
}

func (l *lateService) Jobs() []twopc.JobInfo {
	c, err := l.get()
	if err != nil {
		return nil
	}
	return c.Jobs()
}

func (l *lateService) Job(name string) (twopc.JobInfo, error) {
	c, err := l.get()
	if err != nil {
		return twopc.JobInfo{}, err
	}
	return c.Job(name)
}

func (l *lateService) OpenSession(ctx context.Context, job, writer string, restore *int64) (twopc.SessionInfo, error) {
	c, err := l.get()
	if err != nil {
		return twopc.SessionInfo{}, err
	}
	return c.OpenSession(ctx, job, writer, restore)
}

func (l *lateService) Write(ctx context.Context, job, writer string, epoch uint64, seq *twopc.Seq, recs []*twopc.Record) (twopc.WriteResult, error) {
	c, err := l.get()
	if err != nil {
		return twopc.WriteResult{}, err
	}
	return c.Write(ctx, job, writer, epoch, seq, recs)
}

func (l *lateService) CheckpointWith(ctx context.Context, job, writer string, epoch uint64, n int64, state []byte, wait twopc.Wait, offsets *twopc.Offsets) (twopc.CheckpointResult, error) {
	c, err := l.get()
	if err != nil {
		return twopc.CheckpointResult{}, err
	}
	return c.CheckpointWith(ctx, job, writer, epoch, n, state, wait, offsets)
}

func (l *lateService) Commit(ctx context.Context, job string, n int64) (twopc.CommitResult, error) {
	c, err := l.get()
	if err != nil {
		return twopc.CommitResult{}, err
	}
	return c.Commit(ctx, job, n)
}

func (l *lateService) Abort(ctx context.Context, job string, n int64) (twopc.CommitResult, error) {
	c, err := l.get()
	if err != nil {
		return twopc.CommitResult{}, err
	}
	return c.Abort(ctx, job, n)
}

func (l *lateService) Checkpoints(job string) ([]twopc.CheckpointInfo, error) {
	c, err := l.get()
	if err != nil {
		return nil, err
	}
	return c.Checkpoints(job)
}

func (l *lateService) DeleteWriter(ctx context.Context, job, writer string) (bool, error) {
	c, err := l.get()
	if err != nil {
		return false, err
	}
	return c.DeleteWriter(ctx, job, writer)
}
