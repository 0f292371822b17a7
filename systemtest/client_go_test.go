package systemtest

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

// The Go client's Writer under the crash contract: an app that writes its
// input in batches of 50 and checkpoints every 100 records with its input
// position as state. The sidecar is killed with SIGKILL between a write and
// the checkpoint, three times. Each time the app sees an error matching
// client.ErrReopen, waits for the restarted sidecar, reopens, resumes from
// the restored state and replays. Every value is then in Kafka exactly once
// (franz-go read_committed and kcat).
func TestGoClientWriterCrashContract(t *testing.T) {
	broker := startBroker(t)
	n := newNode(t, kafkaSinkYAML(broker))
	c := n.start()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	job, err := c.UseJob(ctx, "goclient", twopc.ModeAuto, nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := job.OpenWriter(ctx, "w1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if w.Restored != 0 || w.State != nil {
		t.Fatalf("first open restored %d %q, want nothing", w.Restored, w.State)
	}

	const total, batch, every = 600, 50, 100
	killAt := map[int]bool{150: true, 350: true, 550: true} // positions after a write, before the checkpoint
	killed, reopened := 0, 0
	pos := 0 // the app's input position: the next value to send
	for pos < total {
		_, err := w.Write(ctx, records(values(pos, pos+batch))...)
		if err == nil {
			pos += batch
			if killAt[pos] {
				delete(killAt, pos)
				n.kill()
				killed++
				n.start() // same data dir and address: the Writer's Client reaches it
			}
			if pos%every == 0 {
				_, err = w.Checkpoint(ctx, int64(pos/every), []byte(strconv.Itoa(pos)))
			}
		}
		if err == nil {
			continue
		}
		if !errors.Is(err, client.ErrReopen) {
			t.Fatalf("at %d: %v, want nil or an error matching ErrReopen", pos, err)
		}
		if err := w.Reopen(ctx, nil); err != nil {
			t.Fatalf("reopen at %d: %v", pos, err)
		}
		reopened++
		// Resume the input from the restored state.
		restored := 0
		if w.State != nil {
			if restored, err = strconv.Atoi(string(w.State)); err != nil {
				t.Fatalf("restored state %q: %v", w.State, err)
			}
		}
		if restored > pos || int64(restored/every) != w.Restored {
			t.Fatalf("reopen at %d restored checkpoint %d state %d: want the last checkpoint at or before %d", pos, w.Restored, restored, pos)
		}
		pos = restored
	}
	if killed != 3 || reopened < 3 {
		t.Fatalf("killed %d times, reopened %d times; want 3 and at least 3", killed, reopened)
	}
	want := values(0, total)
	wantExactly(t, broker, want)
	if got := kcatValues(t, broker); got != nil && !slices.Equal(got, want) {
		t.Fatalf("kcat read %d records, want the %d committed ones once", len(got), total)
	}
}
