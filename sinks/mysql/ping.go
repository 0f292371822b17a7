package mysql

import (
	"context"
	"fmt"

	"github.com/txsink/txsink/twopc"
)

// Ping reports whether the server answers (COM_PING on a pooled
// connection, or a new one), for readiness checks. ctx bounds it: the
// driver closes the connection when ctx ends, so a stopped server cannot
// hold it.
func (s *Sink) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("%w: mysql sink %q: %w", twopc.ErrSinkFailure, s.cfg.Name, err)
	}
	return nil
}
