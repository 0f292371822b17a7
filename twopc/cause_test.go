package twopc_test

import (
	"context"
	"errors"
	"testing"

	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// leaderError stands for raftlog's *NotLeaderError (twopc must not import
// raftlog): a typed cause that names where to forward a command.
type leaderError struct{ addr string }

func (e *leaderError) Error() string { return "not the leader; leader at " + e.addr }

// bareJournal fails the way raftlog.Node.Propose does: with the cause
// alone, not wrapped in ErrUnavailable (the coordinator adds that).
type bareJournal struct {
	*twopctest.Journal
	fail error
}

func (j *bareJournal) Propose(ctx context.Context, cmd []byte) (twopc.ApplyResult, error) {
	if j.fail != nil {
		return twopc.ApplyResult{}, j.fail
	}
	return j.Journal.Propose(ctx, cmd)
}

// TestJournalErrorCauseKept checks that every coordinator call that
// proposes returns an error that is ErrUnavailable and still carries the
// journal's typed cause, so a caller can find the leader with errors.As.
func TestJournalErrorCauseKept(t *testing.T) {
	ctx := context.Background()
	calls := []struct {
		name string
		call func(e *env, epoch uint64) error
	}{
		{"PutJob", func(e *env, _ uint64) error {
			_, err := e.c.PutJob(ctx, twopc.JobSpec{Name: "j2", Commit: twopc.ModeAuto, Sinks: []string{"a"}})
			return err
		}},
		{"OpenSession", func(e *env, _ uint64) error {
			_, err := e.c.OpenSession(ctx, "j", "w2", nil)
			return err
		}},
		{"Checkpoint", func(e *env, epoch uint64) error {
			_, err := e.c.Checkpoint(ctx, "j", "w", epoch, 1, []byte("s"), "")
			return err
		}},
		{"Commit", func(e *env, _ uint64) error {
			_, err := e.c.Commit(ctx, "x", 1)
			return err
		}},
		{"DeleteWriter", func(e *env, _ uint64) error {
			_, err := e.c.DeleteWriter(ctx, "j", "idle")
			return err
		}},
	}
	journals := []struct {
		name string
		// setup returns fail, which makes every proposal of e.c fail with
		// cause from then on.
		setup func(e *env) (fail func(cause error))
	}{
		{"twopctest", func(e *env) func(error) { return func(cause error) { e.j.Fail = cause } }},
		{"bare", func(e *env) func(error) {
			bj := &bareJournal{Journal: e.j}
			c, err := twopc.NewCoordinator(twopc.Config{
				Node: "n1", Journal: bj, Machine: e.j.Machine(),
				Sinks: map[string]twopc.Sink{"a": e.a, "b": e.b},
			})
			if err != nil {
				e.t.Fatal(err)
			}
			e.t.Cleanup(c.Close)
			e.c = c
			return func(cause error) { bj.fail = cause }
		}},
	}
	for _, jt := range journals {
		for _, tt := range calls {
			t.Run(jt.name+"/"+tt.name, func(t *testing.T) {
				e := newEnv(t, 1)
				e.job("j", twopc.ModeAuto, "a")
				e.job("x", twopc.ModeExternal, "a")
				e.open("j", "idle", nil)
				fail := jt.setup(e)
				s := e.open("j", "w", nil)
				e.write("j", "w", s.Epoch, recs("a", "r1"))
				fail(&leaderError{addr: "127.0.0.1:7001"})

				err := tt.call(e, s.Epoch)
				if !errors.Is(err, twopc.ErrUnavailable) {
					t.Fatalf("got %v, want ErrUnavailable", err)
				}
				le, ok := errors.AsType[*leaderError](err)
				if !ok {
					t.Fatalf("errors.As found no *leaderError in %v", err)
				}
				if le.addr != "127.0.0.1:7001" {
					t.Errorf("got leader %q, want 127.0.0.1:7001", le.addr)
				}
			})
		}
	}
}
