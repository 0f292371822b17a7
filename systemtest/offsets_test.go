package systemtest

import (
	"context"
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/twopc"
)

// inputTopic is the topic whose consumer-group offsets the checkpoints
// commit; the app is pretend-reading it.
const inputTopic = "input"

// groupOffsets reads a group's committed offsets of inputTopic from the
// broker (kadm FetchOffsets, as a consumer of the group would on start).
func groupOffsets(t *testing.T, broker, group string) map[int32]int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := kadm.NewClient(cl).FetchOffsets(ctx, group)
	out := map[int32]int64{}
	if errors.Is(err, kerr.GroupIDNotFound) {
		return out // nothing ever committed
	}
	if err != nil {
		t.Fatalf("FetchOffsets %s: %v", group, err)
	}
	for p, o := range resp[inputTopic] {
		if o.Err != nil {
			t.Fatalf("FetchOffsets %s %d: %v", group, p, o.Err)
		}
		out[p] = o.At
	}
	return out
}

func wantGroup(t *testing.T, broker, group string, want map[int32]int64) {
	t.Helper()
	if got := groupOffsets(t, broker, group); !maps.Equal(got, want) && len(got)+len(want) > 0 {
		t.Fatalf("group %s offsets %v, want %v", group, got, want)
	}
}

func wantOutput(t *testing.T, broker string, want []string) {
	t.Helper()
	wantExactly(t, broker, want)
	if got := kcatValues(t, broker); got != nil && !slices.Equal(got, want) {
		t.Fatalf("kcat read %v, want %v", abbrev(got), abbrev(want))
	}
}

// Offsets ride in the checkpoint's Kafka transaction: after a kill -9 of
// the sidecar between prepare and commit, the group's offsets and the
// output move together (commit), or neither does (never journaled).
func TestOffsetsKill(t *testing.T) {
	in := func(off int64) *twopc.Offsets {
		return &twopc.Offsets{Sink: "events", Group: "app", Topics: map[string]map[int32]int64{inputTopic: {0: off, 1: off + 1}}}
	}
	startBrokerIn := func(t *testing.T) string {
		b := kafkatest.StartBrokerWith(t, t.TempDir(), kafkatest.BrokerOptions{Topics: []string{topic, inputTopic}, Partitions: 2})
		return b.Addr
	}
	// Every record of the output goes to partition 0 of topic (key "k"),
	// so order is checked too.
	t.Run("external-commit-after-kill", func(t *testing.T) {
		broker := startBrokerIn(t)
		n := newNode(t, kafkaSinkYAML(broker))
		c := n.start()
		ctx := context.Background()
		s := openJob(t, c, "x", twopc.ModeExternal, "w")
		mustWrite(t, c, "x", "w", s.Epoch, values(0, 40))
		r, err := c.CheckpointWith(ctx, "x", "w", s.Epoch, 1, api.CheckpointRequest{State: []byte("s1"), Wait: twopc.WaitPrepared, Offsets: in(40)})
		if err != nil || r.Status != twopc.StatusPrepared {
			t.Fatalf("prepare 1: %+v %v", r, err)
		}
		wantGroup(t, broker, "app", nil)
		n.kill()

		c = n.start()
		wantOutput(t, broker, nil) // in doubt: the restart decides nothing
		wantGroup(t, broker, "app", nil)
		if r, err := c.Commit(ctx, "x", 1); err != nil || r.Status != twopc.StatusCommitted {
			t.Fatalf("commit 1: %+v %v", r, err)
		}
		wantOutput(t, broker, values(0, 40))
		wantGroup(t, broker, "app", map[int32]int64{0: 40, 1: 41})

		// An offsets-only checkpoint (nothing written) commits too.
		s, err = c.OpenSession(ctx, "x", "w", nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.CheckpointWith(ctx, "x", "w", s.Epoch, 2, api.CheckpointRequest{Offsets: in(45)}); err != nil {
			t.Fatal(err)
		}
		if r, err := c.Commit(ctx, "x", 2); err != nil || r.Status != twopc.StatusCommitted {
			t.Fatalf("commit 2: %+v %v", r, err)
		}
		wantGroup(t, broker, "app", map[int32]int64{0: 45, 1: 46})
		wantOutput(t, broker, values(0, 40))
	})
	t.Run("auto-journaled-then-killed", func(t *testing.T) {
		// The sidecar kills itself right after the journal entry that
		// decides the commit; recovery alone commits output and offsets.
		broker := startBrokerIn(t)
		n := newNode(t, kafkaSinkYAML(broker))
		c := n.start("TXSINK_FAILPOINT=after-journal:1")
		ctx := context.Background()
		s := openJob(t, c, "j", twopc.ModeAuto, "w")
		mustWrite(t, c, "j", "w", s.Epoch, values(0, 20))
		cmd := n.cmd
		if _, err := c.CheckpointWith(ctx, "j", "w", s.Epoch, 1, api.CheckpointRequest{State: []byte("s1"), Offsets: in(20)}); err == nil {
			t.Fatal("the checkpoint at the failpoint succeeded; want the process killed")
		}
		n.waitExit()
		if !n.exitedBySIGKILL(cmd) {
			t.Fatalf("sidecar exited with %v, want SIGKILL", cmd.ProcessState)
		}
		c = n.start()
		wantOutput(t, broker, values(0, 20))
		wantGroup(t, broker, "app", map[int32]int64{0: 20, 1: 21})
		if s, err := c.OpenSession(ctx, "j", "w", nil); err != nil || s.Checkpoint != 1 {
			t.Fatalf("reopen: %+v %v, want checkpoint 1 restored", s, err)
		}
	})
	t.Run("external-never-journaled", func(t *testing.T) {
		// Killed after the sinks prepared, before the journal entry: the
		// reopen fences the transaction; output and offsets never move.
		broker := startBrokerIn(t)
		n := newNode(t, kafkaSinkYAML(broker))
		c := n.start("TXSINK_FAILPOINT=after-prepare:2")
		ctx := context.Background()
		s := openJob(t, c, "x", twopc.ModeExternal, "w")
		mustWrite(t, c, "x", "w", s.Epoch, values(0, 10))
		if _, err := c.CheckpointWith(ctx, "x", "w", s.Epoch, 1, api.CheckpointRequest{Offsets: in(10)}); err != nil {
			t.Fatal(err)
		}
		if r, err := c.Commit(ctx, "x", 1); err != nil || r.Status != twopc.StatusCommitted {
			t.Fatalf("commit 1: %+v %v", r, err)
		}
		mustWrite(t, c, "x", "w", s.Epoch, values(10, 30))
		cmd := n.cmd
		if _, err := c.CheckpointWith(ctx, "x", "w", s.Epoch, 2, api.CheckpointRequest{Offsets: in(30)}); err == nil {
			t.Fatal("the checkpoint at the failpoint succeeded; want the process killed")
		}
		n.waitExit()
		if !n.exitedBySIGKILL(cmd) {
			t.Fatalf("sidecar exited with %v, want SIGKILL", cmd.ProcessState)
		}
		c = n.start()
		s, err := c.OpenSession(ctx, "x", "w", nil)
		if err != nil || s.Checkpoint != 1 {
			t.Fatalf("reopen: %+v %v, want checkpoint 1 restored", s, err)
		}
		wantOutput(t, broker, values(0, 10))
		wantGroup(t, broker, "app", map[int32]int64{0: 10, 1: 11})
		// The replay commits with its offsets, exactly once.
		mustWrite(t, c, "x", "w", s.Epoch, values(10, 30))
		if _, err := c.CheckpointWith(ctx, "x", "w", s.Epoch, 2, api.CheckpointRequest{Offsets: in(30)}); err != nil {
			t.Fatal(err)
		}
		if r, err := c.Commit(ctx, "x", 2); err != nil || r.Status != twopc.StatusCommitted {
			t.Fatalf("commit 2: %+v %v", r, err)
		}
		wantOutput(t, broker, values(0, 30))
		wantGroup(t, broker, "app", map[int32]int64{0: 30, 1: 31})
	})
}
