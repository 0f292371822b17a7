package twopc

import (
	"context"
	"fmt"
)

// expirer is implemented by branches that their sink ends on its own once
// they are old (Kafka's transaction timeout). Expired returns nil while the
// branch may still be prepared, and afterwards an error wrapping
// ErrSinkFailure that says so; the branch's own Write and Prepare fail with
// it too, so an expired branch is never journaled.
type expirer interface{ Expired() error }

// failExpired fails every session with an expired open branch, so its
// branches are aborted and release their slots before the sink times them
// out, and the session's next call answers the replayable ErrSinkFailure.
// A session busy with a call is skipped: that call sees the expiry itself.
func (c *Coordinator) failExpired(ctx context.Context) {
	ss := c.sessionList()
	for _, s := range ss {
		if !s.mu.TryLock() {
			continue
		}
		if s.usable() == nil {
			for _, name := range sortedKeys(s.open) {
				e, ok := s.open[name].br.(expirer)
				if !ok {
					continue
				}
				if err := e.Expired(); err != nil {
					// Bounded like a failed write's aborts: ctx is Run's,
					// and s.mu is held (what an abort cannot reach, the
					// next Fence removes).
					actx, cancel := context.WithTimeout(ctx, c.cfg.Timeouts.Write)
					_ = c.fail(actx, s, fmt.Errorf("sink %s: %w", name, err))
					cancel()
					break
				}
			}
		}
		s.mu.Unlock()
	}
}
