package twopc

import (
	"context"
	"errors"
	"fmt"
)

// rejected turns a sink's rejection of a record (ErrRecordRejected) into
// the write call's answer. The sink's *RecordError indexes the records of
// its own group; the answer names the record's line in the call. The
// session goes on when nothing of the call stayed written: the rejecting
// sink undid the call (no ErrSinkFailure) and no other sink had taken
// records of it (wroteOthers). Otherwise the session fails, which aborts
// its open branches, and the answer says so: the app reopens and replays
// without the record. Needs s.mu.
func (c *Coordinator) rejected(ctx context.Context, s *session, recs []*Record, sink string, wroteOthers bool, err error) error {
	if re, ok := errors.AsType[*RecordError](err); ok {
		k := 0
		for i, r := range recs {
			if r.Sink != sink {
				continue
			}
			if k++; k == re.Line {
				err = &RecordError{Line: i + 1, Err: fmt.Errorf("sink %s: %w", sink, re.Err)}
				break
			}
		}
	}
	if !wroteOthers && !errors.Is(err, ErrSinkFailure) {
		c.log.Info("record rejected; the write call changed nothing", "job", s.job, "writer", s.writer, "err", err)
		return err
	}
	why := "records of this call were already written to another sink"
	if !wroteOthers {
		why = "the sink could not undo the call"
	}
	_ = c.fail(ctx, s, err)
	return fmt.Errorf("%w; %s, so the session failed and its open branches were aborted: reopen, resume from the last checkpoint and replay without this record", err, why)
}
