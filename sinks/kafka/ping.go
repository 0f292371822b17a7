package kafka

import (
	"context"
	"fmt"

	"github.com/txsink/txsink/twopc"
)

// Ping reports whether a broker answers (an ApiVersions request on the
// sink's admin client), for readiness checks. ctx bounds it: a broker that
// is stopped but still holds its connections open only fails by ctx.
func (s *Sink) Ping(ctx context.Context) error {
	if err := s.admin.Ping(ctx); err != nil {
		return fmt.Errorf("%w: kafka sink %q: brokers %v do not answer: %w", twopc.ErrSinkFailure, s.cfg.Name, s.cfg.Brokers, err)
	}
	return nil
}
