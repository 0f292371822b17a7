package kafka

import (
	"context"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// reapIdle closes the clients of slots that have been free for longer than
// timeout, until ctx ends (Close). A free slot holds no open or prepared
// branch (owner == nil under Sink.mu), so closing its client loses nothing:
// the next Begin on the slot opens a new client, and its InitProducerID
// aborts only what a dead session may have left open on a free slot, as
// the slot pool allows. A negative timeout keeps clients until Close.
func (s *Sink) reapIdle(ctx context.Context, timeout time.Duration) {
	defer close(s.reaped)
	if timeout < 0 {
		<-ctx.Done()
		return
	}
	tick := time.NewTicker(max(timeout/2, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			for _, cl := range s.takeIdle(now.Add(-timeout)) {
				cl.Close()
			}
		}
	}
}

// takeIdle removes from the cache every free slot freed before cutoff and
// returns their clients for the caller to close outside Sink.mu.
func (s *Sink) takeIdle(cutoff time.Time) []*kgo.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	var cls []*kgo.Client
	for id, sl := range s.slots {
		if sl.owner != nil || sl.stale || sl.freeSince.After(cutoff) {
			continue
		}
		sl.stale = true
		delete(s.slots, id)
		cls = append(cls, sl.cl)
	}
	if len(cls) > 0 {
		s.log.Debug("closed idle slot clients", "clients", len(cls), "cached", len(s.slots))
	}
	return cls
}

// CachedClients is the number of slot clients this sink holds open (a
// gauge for tests and metrics).
func (s *Sink) CachedClients() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.slots)
}
