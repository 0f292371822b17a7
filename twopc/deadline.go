package twopc

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Timeouts bound the coordinator's calls. Each is the whole time one call
// may take from its start to its answer, sink and journal calls included, so
// a stopped broker or database server makes a call fail (or answer
// "committing") in time instead of hanging it.
type Timeouts struct {
	// Write bounds a write call (begin and write in every sink). When it
	// passes, the session fails (its branches are aborted) and the call
	// answers ErrSinkFailure: what reached the sink is unknown, so the app
	// reopens and replays.
	Write time.Duration
	// Checkpoint bounds a checkpoint call. A prepare that does not finish in
	// time fails the session like a write (ErrSinkFailure). Once the
	// decision is journaled the call answers at the deadline with status
	// committing while the commit goes on in the background.
	Checkpoint time.Duration
	// Session bounds opening a session (journal, finishing decided branches,
	// fencing the sinks).
	Session time.Duration
	// Commit bounds an external commit or abort call; like a checkpoint, a
	// durable decision whose commit is not confirmed in time answers
	// committing (or aborting).
	Commit time.Duration
}

// DefaultTimeouts returns the timeouts used for zero fields.
func DefaultTimeouts() Timeouts {
	return Timeouts{Write: 30 * time.Second, Checkpoint: time.Minute, Session: time.Minute, Commit: time.Minute}
}

// Validate reports a negative timeout.
func (t Timeouts) Validate() error {
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"write", t.Write}, {"checkpoint", t.Checkpoint}, {"session", t.Session}, {"commit", t.Commit}} {
		if f.d < 0 {
			return fmt.Errorf("%w: timeout %s is negative (%s)", ErrInvalid, f.name, f.d)
		}
	}
	return nil
}

func (t Timeouts) withDefaults() Timeouts {
	d := DefaultTimeouts()
	if t.Write == 0 {
		t.Write = d.Write
	}
	if t.Checkpoint == 0 {
		t.Checkpoint = d.Checkpoint
	}
	if t.Session == 0 {
		t.Session = d.Session
	}
	if t.Commit == 0 {
		t.Commit = d.Commit
	}
	return t
}

// maxReserve caps the part of a call's time kept for cleaning up.
const maxReserve = 2 * time.Second

// call holds the contexts of one bounded call.
//
// The sink work must end a little before the deadline: when it fails, the
// call still has to abort the branches and answer, and an abort on a sink
// that does not answer only ends when its context does. So work ends a
// reserve (a fifth of the timeout, at most maxReserve) before the deadline,
// and cleanup runs until the deadline even when the caller has gone away,
// so that a failed session is always left with its branches aborted or at
// least tried (what an abort could not reach, Fence removes on reopen).
type call struct {
	ctx     context.Context // the whole call: the caller's, ending at the deadline
	work    context.Context // sink calls: end the reserve before the deadline
	cleanup context.Context // aborts and the journal: ignore the caller leaving; end at the deadline
	cancels []context.CancelFunc
}

func bound(ctx context.Context, d time.Duration) *call {
	cl := &call{}
	var cancel context.CancelFunc
	cl.ctx, cancel = context.WithTimeout(ctx, d)
	cl.cancels = append(cl.cancels, cancel)
	deadline, _ := cl.ctx.Deadline()
	reserve := min(time.Until(deadline)/5, maxReserve)
	cl.work, cancel = context.WithDeadline(cl.ctx, deadline.Add(-reserve))
	cl.cancels = append(cl.cancels, cancel)
	cl.cleanup, cancel = context.WithDeadline(context.WithoutCancel(ctx), deadline)
	cl.cancels = append(cl.cancels, cancel)
	return cl
}

func (cl *call) done() {
	for _, c := range cl.cancels {
		c()
	}
}

// finishWithin runs fn (finishing decided branches) in the background and
// waits for it until ctx ends, or until early (when not nil) is closed: fn
// closes it once the sinks are done and only its journal entry is left. The
// decision is durable already, so a commit that takes longer than the call
// may is left running (and, should it fail, to the recovery loop) and the
// caller answers committing.
//
// A panic in fn (a failpoint of the crash tests) surfaces in the caller
// while it still waits, as if fn had run on its goroutine; afterwards it
// panics the background goroutine.
func (c *Coordinator) finishWithin(ctx context.Context, early <-chan struct{}, fn func(ctx context.Context)) {
	var (
		mu      sync.Mutex
		waiting = true
		pv      any
	)
	done := make(chan struct{})
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer func() {
			v := recover()
			mu.Lock()
			w := waiting
			pv = v
			mu.Unlock()
			close(done)
			if v != nil && !w {
				panic(v)
			}
		}()
		fn(context.WithoutCancel(ctx))
	}()
	select {
	case <-done:
	case <-early: // nil: never
	case <-ctx.Done():
	}
	mu.Lock()
	waiting = false
	v := pv
	mu.Unlock()
	if v != nil {
		panic(v)
	}
}

// lockWithin takes mu (a session's, or the writer's opening lock), waiting at most until ctx ends: the
// writer's previous call holds it for as long as its own deadline allows,
// and the wait counts toward this call's. A call that cannot get it in time
// is ErrUnavailable: retry (a write with seq and a repeated checkpoint are
// safe to retry).
func lockWithin(ctx context.Context, mu *sync.Mutex, job, writer string) error {
	return lockWithinThen(ctx, mu, job, writer, nil)
}

// lockWithinThen is lockWithin; when the call gives up, abandoned (if not
// nil) runs after the lock it no longer wants has been handed back.
func lockWithinThen(ctx context.Context, mu *sync.Mutex, job, writer string, abandoned func()) error {
	if mu.TryLock() {
		return nil
	}
	got := make(chan struct{})
	go func() {
		mu.Lock()
		close(got)
	}()
	select {
	case <-got:
		return nil
	case <-ctx.Done():
		// Hand the lock back as soon as it comes; the holder's call is
		// bounded, so this goroutine ends.
		go func() {
			<-got
			mu.Unlock()
			if abandoned != nil {
				abandoned()
			}
		}()
		return fmt.Errorf("%w: %s/%s is busy with an earlier call that has not ended yet: %w",
			ErrUnavailable, job, writer, context.Cause(ctx))
	}
}
