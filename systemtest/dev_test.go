package systemtest

import (
	"context"
	"testing"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/twopc"
)

// TestDevKill9KeepsCommittedRecords: kill -9 of `sidecar dev` kills its
// embedded broker too; records committed to a topic the sink created on
// first use (not one of the dev mode's seeded topics) must survive it. kfake
// persists auto-created topics only on a clean stop, so the dev sink creates
// topics with CreateTopics (kafka.Config.CreateTopics).
func TestDevKill9KeepsCommittedRecords(t *testing.T) {
	d := startDev(t)
	c := client.New("http://" + d.httpAddr)
	ctx := context.Background()
	s := openJob(t, c, "devkill", twopc.ModeAuto, "0")
	recs := records([]string{"a", "b", "c"})
	for _, r := range recs {
		r.Topic = "fresh-topic"
	}
	if _, err := c.Write(ctx, "devkill", "0", s.Epoch, nil, recs); err != nil {
		t.Fatal(err)
	}
	if res, err := c.Checkpoint(ctx, "devkill", "0", s.Epoch, 1, []byte("pos=3"), twopc.WaitCommitted); err != nil || res.Status != "committed" {
		t.Fatalf("checkpoint 1: got %+v, %v; want committed", res, err)
	}
	if got := kafkatest.ReadCommitted(ctx, t, d.kafkaAddr, "fresh-topic", 3); len(got) != 3 {
		t.Fatalf("before the kill: got %d records, want 3", len(got))
	}
	d.kill9()
	d.start(t)
	if got := kafkatest.ReadCommitted(ctx, t, d.kafkaAddr, "fresh-topic", 3); len(got) != 3 {
		t.Fatalf("after kill -9 and restart: got %d committed records, want 3", len(got))
	}
	s2, err := c.OpenSession(ctx, "devkill", "0", nil)
	if err != nil || s2.Checkpoint != 1 || string(s2.State) != "pos=3" {
		t.Fatalf("reopen: got %+v, %v; want checkpoint 1 with state pos=3", s2, err)
	}
}
