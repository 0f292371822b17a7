package twopc

import (
	"context"
	"fmt"
)

// DeleteWriter forgets a writer that has nothing in doubt: its in-memory
// session is fenced (open branches aborted), its sinks are fenced, then the
// journal drops its epoch, checkpoints and last state. A new session of the
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
	if err := c.fenceWriter(ctx, job, writer, spec.Sinks); err != nil {
		return false, err
	}
	if _, err := c.propose(ctx, Command{Op: OpDeleteWriter, Job: job, Writer: writer}); err != nil {
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
