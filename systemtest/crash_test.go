package systemtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/twopc"
)

const topic = "crash"

func kafkaSinkYAML(broker string) string {
	return fmt.Sprintf("  events:\n    kind: kafka\n    brokers: [%q]\n    default_topic: %s\n    topics: [\"*\"]\n", broker, topic)
}

func values(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("v%04d", i))
	}
	return out
}

func records(vals []string) []*twopc.Record {
	out := make([]*twopc.Record, len(vals))
	for i, v := range vals {
		out[i] = &twopc.Record{Sink: "events", Key: []byte(`"k"`), Value: []byte(fmt.Sprintf("%q", v))}
	}
	return out
}

// startBroker runs kfake as its own process with a data dir: it outlives
// every sidecar of the test.
func startBroker(t *testing.T) string {
	b := kafkatest.StartBrokerWith(t, t.TempDir(), kafkatest.BrokerOptions{Topics: []string{topic}})
	return b.Addr
}

// wantExactly reads the topic read_committed and checks it holds exactly
// want, each once (order within the one partition is the write order).
func wantExactly(t *testing.T, broker string, want []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	recs := kafkatest.ReadCommitted(ctx, t, broker, topic, len(want))
	got := make([]string, len(recs))
	for i, r := range recs {
		got[i] = string(r.Value)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("read_committed got %d records %v, want exactly %d: %v", len(got), abbrev(got), len(want), abbrev(want))
	}
}

func abbrev(s []string) string {
	if len(s) <= 6 {
		return fmt.Sprint(s)
	}
	return fmt.Sprintf("[%s … %s]", strings.Join(s[:3], " "), strings.Join(s[len(s)-3:], " "))
}

// kcatValues reads the topic with kcat (librdkafka), an independent client.
func kcatValues(t *testing.T, broker string) []string {
	t.Helper()
	return kcatTopicValues(t, broker, topic)
}

// kcatTopicValues reads topic with kcat, read_committed: one value per line.
func kcatTopicValues(t *testing.T, broker, topic string) []string {
	t.Helper()
	if _, err := exec.LookPath("kcat"); err != nil {
		if os.Getenv("TXSINK_TEST_SKIP_KCAT") == "1" {
			t.Log("kcat check skipped: TXSINK_TEST_SKIP_KCAT=1")
			return nil
		}
		t.Fatal("kcat is needed as an independent Kafka client: apt-get install kcat (or set TXSINK_TEST_SKIP_KCAT=1)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "kcat", "-C", "-b", broker, "-t", topic, "-X", "isolation.level=read_committed",
		"-e", "-q", "-f", "%s\n").Output()
	if err != nil {
		t.Fatalf("kcat: %v", err)
	}
	return strings.Fields(string(out))
}

// openJob creates the job and opens a session for writer.
func openJob(t *testing.T, c *client.Client, job string, mode twopc.Mode, writer string) twopc.SessionInfo {
	t.Helper()
	ctx := context.Background()
	if _, err := c.PutJob(ctx, job, mode, nil); err != nil {
		t.Fatal(err)
	}
	s, err := c.OpenSession(ctx, job, writer, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustWrite(t *testing.T, c *client.Client, job, writer string, epoch uint64, vals []string) {
	t.Helper()
	if _, err := c.Write(context.Background(), job, writer, epoch, nil, records(vals)); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// (a) kill -9 after writes, before a checkpoint: the reopened session
// restores the previous checkpoint and the lost records never show.
func TestKillAfterWritesBeforeCheckpoint(t *testing.T) {
	broker := startBroker(t)
	n := newNode(t, kafkaSinkYAML(broker))
	c := n.start()
	ctx := context.Background()
	s := openJob(t, c, "j", twopc.ModeAuto, "0")
	mustWrite(t, c, "j", "0", s.Epoch, values(0, 100))
	if r, err := c.Checkpoint(ctx, "j", "0", s.Epoch, 1, []byte("offset=100"), ""); err != nil || r.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint 1: %+v %v", r, err)
	}
	mustWrite(t, c, "j", "0", s.Epoch, values(100, 200))
	n.kill()

	c = n.start()
	if _, err := c.Write(ctx, "j", "0", s.Epoch, nil, records(values(100, 101))); client.Code(err) != "session_lost" {
		t.Fatalf("old epoch after restart: got %v, want session_lost", err)
	}
	s2, err := c.OpenSession(ctx, "j", "0", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s2.Checkpoint != 1 || string(s2.State) != "offset=100" || s2.Epoch <= s.Epoch {
		t.Fatalf("reopen: got %+v, want checkpoint 1 with its state and a newer epoch", s2)
	}
	wantExactly(t, broker, (values(0, 100)))
	// the app replays from its restored offset
	mustWrite(t, c, "j", "0", s2.Epoch, values(100, 200))
	if _, err := c.Checkpoint(ctx, "j", "0", s2.Epoch, 2, []byte("offset=200"), ""); err != nil {
		t.Fatal(err)
	}
	wantExactly(t, broker, (values(0, 200)))
	if got := kcatValues(t, broker); got != nil && !slices.Equal(got, (values(0, 200))) {
		t.Fatalf("kcat read %d records, want the 200 committed ones once", len(got))
	}
}

// (b) external mode, kill -9 after prepare, before the commit: after the
// restart the commit (or a session restoring n) makes the records visible once.
func TestKillExternalAfterPrepare(t *testing.T) {
	for _, how := range []string{"commit", "restore"} {
		t.Run(how, func(t *testing.T) {
			broker := startBroker(t)
			n := newNode(t, kafkaSinkYAML(broker))
			c := n.start()
			ctx := context.Background()
			if _, err := c.PutJob(ctx, "x", twopc.ModeExternal, nil); err != nil {
				t.Fatal(err)
			}
			var want []string
			for w, writer := range []string{"0", "1"} {
				s, err := c.OpenSession(ctx, "x", writer, nil)
				if err != nil {
					t.Fatal(err)
				}
				vals := values(w*1000, w*1000+50)
				want = append(want, vals...)
				mustWrite(t, c, "x", writer, s.Epoch, vals)
				r, err := c.Checkpoint(ctx, "x", writer, s.Epoch, 7, []byte("s7"), "")
				if err != nil || r.Status != twopc.StatusPrepared {
					t.Fatalf("checkpoint 7 of writer %s: %+v %v", writer, r, err)
				}
			}
			wantExactly(t, broker, nil) // prepared, not visible
			n.kill()

			c = n.start()
			wantExactly(t, broker, nil) // still in doubt: recovery must not decide for the app
			switch how {
			case "commit":
				r, err := c.Commit(ctx, "x", 7)
				if err != nil || r.Status != twopc.StatusCommitted {
					t.Fatalf("commit 7: %+v %v", r, err)
				}
			case "restore":
				seven := int64(7)
				for _, writer := range []string{"0", "1"} {
					s, err := c.OpenSession(ctx, "x", writer, &seven)
					if err != nil || s.Checkpoint != 7 || string(s.State) != "s7" {
						t.Fatalf("restore 7 for %s: %+v %v", writer, s, err)
					}
				}
			}
			slices.Sort(want)
			got := readSorted(t, broker, len(want))
			if !slices.Equal(got, want) {
				t.Fatalf("got %d records, want %d exactly once", len(got), len(want))
			}
		})
	}
}

func readSorted(t *testing.T, broker string, want int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got []string
	for _, r := range kafkatest.ReadCommitted(ctx, t, broker, topic, want) {
		got = append(got, string(r.Value))
	}
	slices.Sort(got)
	return got
}

// (c) and every other step: the sidecar kills itself (SIGKILL) at a
// failpoint; after a restart, recovery alone must make the records visible
// exactly when the journal had decided to commit them.
func TestKillAtEachStepAutoMode(t *testing.T) {
	for _, tc := range []struct {
		point   string
		visible bool
	}{
		{"after-write", false},
		{"after-prepare", false},
		{"after-journal", true},
	} {
		t.Run(tc.point, func(t *testing.T) {
			broker := startBroker(t)
			n := newNode(t, kafkaSinkYAML(broker))
			c := n.start("TXSINK_FAILPOINT=" + tc.point + ":2")
			ctx := context.Background()
			s := openJob(t, c, "j", twopc.ModeAuto, "0")
			// checkpoint 1 passes every point once; the second pass dies.
			mustWrite(t, c, "j", "0", s.Epoch, values(0, 10))
			if _, err := c.Checkpoint(ctx, "j", "0", s.Epoch, 1, []byte("s1"), ""); err != nil {
				t.Fatal(err)
			}
			cmd := n.cmd
			_, werr := c.Write(ctx, "j", "0", s.Epoch, nil, records(values(10, 20)))
			if werr == nil {
				_, werr = c.Checkpoint(ctx, "j", "0", s.Epoch, 2, []byte("s2"), "")
			}
			if werr == nil {
				t.Fatal("the call at the failpoint succeeded; want the process killed")
			}
			n.waitExit()
			if !n.exitedBySIGKILL(cmd) {
				t.Fatalf("sidecar exited with %v, want SIGKILL at %s", cmd.ProcessState, tc.point)
			}

			c = n.start() // no failpoint; no call from the app
			want := (values(0, 10))
			if tc.visible {
				want = (values(0, 20))
			}
			wantExactly(t, broker, want)
			if got := kcatValues(t, broker); got != nil && !slices.Equal(got, want) {
				t.Fatalf("kcat read %v, want %v", abbrev(got), abbrev(want))
			}
			s2, err := c.OpenSession(ctx, "j", "0", nil)
			if err != nil {
				t.Fatal(err)
			}
			wantCP, wantState := int64(1), "s1"
			if tc.visible {
				wantCP, wantState = 2, "s2"
			}
			if s2.Checkpoint != wantCP || string(s2.State) != wantState {
				t.Fatalf("reopen: got checkpoint %d state %q, want %d %q", s2.Checkpoint, s2.State, wantCP, wantState)
			}
		})
	}
}
