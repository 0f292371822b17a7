package api

import (
	"fmt"
	"testing"

	"github.com/txsink/txsink/twopc"
)

// TestProblemCodesMatchJournalCodes keeps the API's problem codes and
// twopc's journal error codes (which cross the network between nodes) the
// same for every sentinel error, so a forwarded error answers alike.
func TestProblemCodesMatchJournalCodes(t *testing.T) {
	for _, m := range twopcErrors {
		if twopc.ErrorCode(m.err) == twopc.CodeInternal {
			continue // not a twopc sentinel (context.DeadlineExceeded)
		}
		t.Run(m.code, func(t *testing.T) {
			err := fmt.Errorf("%w: detail", m.err)
			if got, want := toAPIErr(err).Code, twopc.ErrorCode(err); got != want {
				t.Errorf("%v: got problem code %q, want the journal code %q", m.err, got, want)
			}
			back := twopc.CodeError(twopc.ErrorCode(err), err.Error())
			if got := toAPIErr(back); got.Code != m.code || got.Status != m.status {
				t.Errorf("%v rebuilt from its code: got %d %s, want %d %s", m.err, got.Status, got.Code, m.status, m.code)
			}
		})
	}
}
