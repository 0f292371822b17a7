package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

// checkpoint completes checkpoint n of a sidecar writer and checks its
// status: committed, or with wait=prepared committing (decided, committed
// in the background). A 429 (too many checkpoints in flight, possible
// with wait=prepared) is waited out and the call repeated, which the API
// makes safe. Errors say whether the sidecar is still alive.
func checkpoint(ctx context.Context, e *env, cl *client.Client, job, writer string, epoch uint64, n int64, wait twopc.Wait) error {
	res, err := cl.Checkpoint(ctx, job, writer, epoch, n, nil, wait)
	for tries := 0; client.Code(err) == "backpressure" && tries < 5000; tries++ {
		time.Sleep(time.Millisecond)
		res, err = cl.Checkpoint(ctx, job, writer, epoch, n, nil, wait)
	}
	if err != nil {
		return errors.Join(fmt.Errorf("checkpoint %d: %w", n, err), e.sidecarAlive())
	}
	if res.Status != twopc.StatusCommitted && !(wait == twopc.WaitPrepared && res.Status == twopc.StatusCommitting) {
		return fmt.Errorf("checkpoint %d: status %q, want committed", n, res.Status)
	}
	return nil
}
