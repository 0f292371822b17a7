package twopc

import (
	"context"
	"fmt"
	"time"
)

// Defaults of the limits in Config. They are generous but finite: what the
// coordinator holds in memory is bounded by configuration, not by load.
const (
	DefaultMaxSessions        = 1_000
	DefaultMaxWritersPerJob   = 10_000
	DefaultSessionIdleTimeout = 10 * time.Minute
)

// limits are the coordinator's resource bounds, filled from Config. A
// negative value in Config means "no limit" (held here as 0).
type limits struct {
	maxSessions      int
	maxWritersPerJob int
	sessionIdle      time.Duration
}

func limitsOf(cfg Config) limits {
	pick := func(v, def int) int {
		switch {
		case v == 0:
			return def
		case v < 0:
			return 0
		}
		return v
	}
	l := limits{
		maxSessions:      pick(cfg.MaxSessions, DefaultMaxSessions),
		maxWritersPerJob: pick(cfg.MaxWritersPerJob, DefaultMaxWritersPerJob),
		sessionIdle:      cfg.SessionIdleTimeout,
	}
	switch {
	case l.sessionIdle == 0:
		l.sessionIdle = DefaultSessionIdleTimeout
	case l.sessionIdle < 0:
		l.sessionIdle = 0
	}
	return l
}

// admitSession reports whether a session for k may be opened on this node:
// a writer that has one already replaces it; otherwise the node must hold
// fewer than max_sessions. At the limit it first forgets idle sessions.
// Checked at open, so concurrent opens may pass the limit by the number of
// writers opening at that moment.
func (c *Coordinator) admitSession(k writerKey) error {
	if c.lim.maxSessions == 0 {
		return nil
	}
	full := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, replacing := c.sessions[k]
		return !replacing && len(c.sessions) >= c.lim.maxSessions
	}
	if !full() {
		return nil
	}
	c.forgetIdle()
	if full() {
		return fmt.Errorf("%w: %d sessions are open on this node (limit max_sessions); close idle writers or raise the limit",
			ErrBackpressure, c.lim.maxSessions)
	}
	return nil
}

// touch records that s took a call now (for the idle timeout).
func (c *Coordinator) touch(s *session) { s.used.Store(c.now().UnixNano()) }

// forgetIdle drops the in-memory state of sessions that took no call for
// the idle timeout and hold no open branch. The writer's journal state is
// untouched; its next call answers ErrSessionLost and the application
// reopens (and restores), as after a restart. Sessions whose mutex is held
// are busy, not idle.
func (c *Coordinator) forgetIdle() int {
	if c.lim.sessionIdle == 0 {
		return 0
	}
	cutoff := c.now().Add(-c.lim.sessionIdle).UnixNano()
	c.mu.Lock()
	var idle []*session
	for _, s := range c.sessions {
		if s.used.Load() < cutoff {
			idle = append(idle, s)
		}
	}
	c.mu.Unlock()
	n := 0
	for _, s := range idle {
		if !s.mu.TryLock() {
			continue
		}
		if len(s.open) == 0 && s.used.Load() < cutoff {
			s.lost = true
			// A direct branch pins a connection for the session's life;
			// what it holds unflushed was never acknowledged.
			if len(s.direct) > 0 {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				c.closeDirect(ctx, s)
				cancel()
			}
			k := writerKey{s.job, s.writer}
			c.mu.Lock()
			if c.sessions[k] == s {
				delete(c.sessions, k)
				n++
			}
			c.mu.Unlock()
		}
		s.mu.Unlock()
	}
	if n > 0 {
		c.log.Info("forgot idle sessions", "sessions", n, "idle_timeout", c.lim.sessionIdle)
	}
	return n
}

// Sessions is the number of sessions this node holds in memory (a gauge).
func (c *Coordinator) Sessions() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.sessions)
}
