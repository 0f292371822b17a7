package twopc

import (
	"context"
	"fmt"
)

// DeleteWriter forgets a writer that has nothing in doubt: its in-memory
// session is fenced (open branches aborted), this node takes the writer
// over (a journaled grant, so a session elsewhere is fenced too and drops
// itself), its sinks are fenced, then the journal drops its epoch,
// checkpoints and last state, if the writer was not granted again since. A new session of the
// same name starts from checkpoint 0 with no state, at an epoch above every
// epoch the deleted writer had (so its old clients stay fenced). A writer
// with unresolved checkpoints is ErrWriterInDoubt; an unknown writer is not
// an error (DELETE is idempotent): deleted reports whether it existed.
func (c *Coordinator) DeleteWriter(ctx context.Context, job, writer string) (deleted bool, err error) {
	if err := CheckName("writer", writer); err != nil {
		return false, err
	}
	spec, ok := c.m.JobSpec(job)
	if !ok {
		return false, fmt.Errorf("%w: %s", ErrJobNotFound, job)
	}
	k := writerKey{job, writer}
	cl := bound(ctx, c.cfg.Timeouts.Session)
	defer cl.done()
	unlock, err := c.opening.lockWithin(cl.work, k)
	if err != nil {
		return false, err
	}
	defer unlock()
	ctx = cl.ctx
	if _, ok := c.m.Writer(job, writer); !ok {
		return false, nil
	}
	if err := c.inDoubt(job, writer); err != nil {
		return false, err
	}
	c.mu.Lock()
	old := c.sessions[k]
	c.mu.Unlock()
	if old != nil {
		// Waits for a call in progress, within this call's deadline; a
		// checkpoint it journals makes the delete fail as in doubt. The
		// session is fenced only once the delete goes on: a refused
		// delete changes nothing.
		if err := lockWithin(cl.work, &old.mu, job, writer); err != nil {
			return false, err
		}
		if err := c.inDoubt(job, writer); err != nil {
			old.mu.Unlock()
			return false, err
		}
		c.retire(ctx, k, old)
	}
	if err := c.inDoubt(job, writer); err != nil {
		return false, err
	}
	// Take the writer over first (ownership.go): from then on no session,
	// on this node or another, can journal a checkpoint for it (a late
	// prepared entry would be refused as fenced, not turned into data_loss
	// by the fence below), and only this node may fence it.
	_, epoch, _, _ := c.m.Owner(job, writer)
	res, err := c.propose(ctx, Command{Op: OpTakeover, Job: job, Writer: writer, Epoch: epoch, Node: c.cfg.Node})
	if err != nil {
		return false, fmt.Errorf("%w: taking over %s/%s to delete it: %w", ErrUnavailable, job, writer, err)
	}
	epoch = res.Session.Epoch
	if err := c.waitHandover(ctx, job, writer, res.Handover); err != nil {
		return false, err
	}
	if err := c.inDoubt(job, writer); err != nil {
		c.release(ctx, job, writer, epoch)
		return false, err
	}
	octx, done := c.whileOwner(ctx, job, writer, epoch)
	defer done()
	if err := c.fenceWriter(octx, job, writer, spec.Sinks); err != nil {
		return false, err
	}
	if _, err := c.propose(ctx, Command{Op: OpDeleteWriter, Job: job, Writer: writer, Epoch: epoch}); err != nil {
		return false, err
	}
	c.unfenced.done(k)
	c.log.Info("writer deleted", "job", job, "writer", writer)
	return true, nil
}

// inDoubt returns ErrWriterInDoubt when the journal holds unresolved
// checkpoints of the writer.
func (c *Coordinator) inDoubt(job, writer string) error {
	info, _ := c.m.JobInfo(job)
	for _, w := range info.Writers {
		if w.Name == writer && len(w.InDoubt) > 0 {
			return fmt.Errorf("%w: writer %s/%s has unresolved checkpoints %v; commit or abort them first",
				ErrWriterInDoubt, job, writer, w.InDoubt)
		}
	}
	return nil
}
