package systemtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/internal/mysqltest"
	"github.com/txsink/txsink/twopc"
)

// tableDup is table t without the UNIQUE key on v: at-least-once may write
// a row twice, and the test counts that instead of having it refused.
const tableDup = "CREATE TABLE t(id BIGINT AUTO_INCREMENT PRIMARY KEY, k VARCHAR(64), v VARCHAR(255))"

// TestAtLeastOnceKill9 is the evidence for guarantee at_least_once: an app
// writes numbered records to Kafka and MySQL with a checkpoint (state = the
// next number) every few calls; the sidecar is killed with SIGKILL once
// exactly between a checkpoint's flush and its journal entry (failpoint
// after-flush, where a replay must duplicate), then several times at random
// moments. After each kill the app restarts the sidecar, reopens, and
// resumes from the restored state. At the end every number is in the topic
// (franz-go read_committed and kcat) and in the table at least once, and
// nothing else is; the duplicates are counted and logged.
func TestAtLeastOnceKill9(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	const (
		total    = 1500
		batch    = 25 // records per write call, in each sink
		perCP    = 3  // write calls per checkpoint
		randKill = 4  // kills at random moments after the failpoint's
	)
	broker := startBroker(t)
	m := newMDB(t, mysqltest.DSN(t), tableDup)
	n := newNode(t, m.sinkYAML("db", 0, insStmts)+kafkaSinkYAML(broker))
	// The 3rd flush: checkpoint 3's records are in both sinks, the entry
	// is not journaled.
	c := n.start("TXSINK_FAILPOINT=after-flush:3")
	job := m.job
	if info, err := c.PutJobSpec(tctx(t), job, api.JobRequest{Guarantee: twopc.GuaranteeAtLeastOnce}); err != nil || info.Guarantee != twopc.GuaranteeAtLeastOnce {
		t.Fatalf("put job: %+v %v", info, err)
	}

	kills, replayed := 0, 0
	for round := 0; ; round++ {
		if round > 20 {
			t.Fatal("more than 20 rounds: the app makes no progress")
		}
		s := mustSession(t, c, job, "0", nil)
		pos := 0
		if s.Checkpoint > 0 {
			var err error
			if pos, err = strconv.Atoi(string(s.State)); err != nil {
				t.Fatalf("restored state %q: %v", s.State, err)
			}
		}
		cmd := n.cmd
		var killer *time.Timer
		var progress func(int)
		if round >= 1 && round <= randKill {
			// Armed at a random record number within the first half of
			// what is left, so the app cannot finish before it however
			// fast the machine is, then fired after a random delay of up
			// to 5 ms, so it lands inside a write, a flush or a journal
			// entry as it happens.
			target := pos + 1 + rng.IntN(max(1, (total-pos)/2))
			delay := time.Duration(rng.IntN(5000)) * time.Microsecond
			progress = func(at int) {
				if killer == nil && at >= target {
					killer = time.AfterFunc(delay, func() { _ = cmd.Process.Signal(syscall.SIGKILL) })
				}
			}
		}
		done, err := runApp(c, job, s, pos, total, batch, perCP, progress)
		replayed += done
		if killer != nil && !killer.Stop() && err == nil {
			// The timer fired after the app finished: the data is durable;
			// restart for the checks below.
			n.waitExit()
			kills++
			c = n.start()
			t.Logf("round %d: killed after the app finished", round)
			break
		}
		if err == nil {
			if killer != nil {
				t.Logf("round %d: finished before the random kill", round)
			}
			break
		}
		n.waitExit() // a call failed: the process must be dead, not merely failing
		if !n.exitedBySIGKILL(cmd) {
			t.Fatalf("round %d: call failed (%v) and the sidecar exited with %v, want SIGKILL", round, err, cmd.ProcessState)
		}
		kills++
		t.Logf("round %d: restored checkpoint %d at %d, killed after %d records (%v)", round, s.Checkpoint, pos, done, err)
		c = n.start()
	}
	if kills < 1+randKill/2 {
		t.Fatalf("only %d kills; the test did not exercise what it claims", kills)
	}

	want := values(0, total)
	rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var kafka []string
	for _, r := range kafkatest.ReadCommittedWith(rctx, t, broker, topic, total, kafkatest.ReadOptions{Linger: time.Second}) {
		kafka = append(kafka, string(r.Value))
	}
	slices.Sort(kafka)
	kDup := checkAtLeastOnce(t, "kafka read_committed", kafka, want)
	if kc := kcatValues(t, broker); kc != nil {
		slices.Sort(kc)
		if d := checkAtLeastOnce(t, "kcat", kc, want); d != kDup {
			t.Fatalf("kcat counts %d duplicates, franz-go %d", d, kDup)
		}
	}
	rows, err := m.rowsOf()
	if err != nil {
		t.Fatal(err)
	}
	mDup := checkAtLeastOnce(t, "mysql", rows, want)
	t.Logf("at_least_once: %d records, %d kills (1 at after-flush, seed %d): %d duplicates in Kafka, %d in MySQL, none missing",
		total, kills, seed, kDup, mDup)
	// The after-flush kill left checkpoint 3's records in both sinks
	// unjournaled; the replay wrote them again.
	if kDup < batch*perCP || mDup < batch*perCP {
		t.Fatalf("duplicates: kafka %d, mysql %d; the kill after the 3rd flush must leave at least %d in each",
			kDup, mDup, batch*perCP)
	}
	info, err := c.Job(tctx(t), job)
	if err != nil || info.Guarantee != twopc.GuaranteeAtLeastOnce || len(info.Writers) != 1 || len(info.Writers[0].InDoubt) != 0 {
		t.Fatalf("job at the end: %+v %v", info, err)
	}
}

// runApp writes records [pos, total) in calls of batch, each value to both
// sinks, with a checkpoint every perCP calls and at the end; the state is
// the next number. progress (may be nil) gets the next number after each
// write call. It returns how many records it wrote and the first error.
func runApp(c *client.Client, job string, s twopc.SessionInfo, pos, total, batch, perCP int, progress func(int)) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cp, calls, start := s.Checkpoint, 0, pos
	for pos < total {
		end := min(pos+batch, total)
		if _, err := c.Write(ctx, job, "0", s.Epoch, nil, bothSinks(values(pos, end))); err != nil {
			return pos - start, fmt.Errorf("write %d..%d: %w", pos, end, err)
		}
		pos = end
		if progress != nil {
			progress(pos)
		}
		if calls++; calls%perCP == 0 || pos == total {
			cp++
			r, err := c.Checkpoint(ctx, job, "0", s.Epoch, cp, []byte(strconv.Itoa(pos)), "")
			if err != nil {
				return pos - start, fmt.Errorf("checkpoint %d: %w", cp, err)
			}
			if r.Status != twopc.StatusCommitted {
				return pos - start, errors.New("checkpoint " + strconv.FormatInt(cp, 10) + ": status " + r.Status)
			}
		}
	}
	return pos - start, nil
}

// checkAtLeastOnce checks that sorted got holds every value of want at
// least once and nothing else, and returns how many extra copies it holds.
func checkAtLeastOnce(t *testing.T, what string, got, want []string) int {
	t.Helper()
	uniq := slices.Compact(slices.Clone(got))
	if !slices.Equal(uniq, want) {
		var missing, extra []string
		for _, w := range want {
			if _, ok := slices.BinarySearch(uniq, w); !ok {
				missing = append(missing, w)
			}
		}
		for _, g := range uniq {
			if _, ok := slices.BinarySearch(want, g); !ok {
				extra = append(extra, g)
			}
		}
		t.Fatalf("%s: %d records; missing %d %s, unexpected %d %s", what, len(got), len(missing), abbrev(missing), len(extra), abbrev(extra))
	}
	return len(got) - len(uniq)
}

// TestNoneCountsDroppedRecords: a job with guarantee none keeps answering
// while the broker is down; its records fail after direct_delivery_timeout
// and are counted in txsink_records_failed_total, and checkpoints go on.
func TestNoneCountsDroppedRecords(t *testing.T) {
	b := kafkatest.StartBrokerWith(t, t.TempDir(), kafkatest.BrokerOptions{Topics: []string{topic}})
	n := newNode(t, kafkaSinkYAML(b.Addr)+"    direct_delivery_timeout: 1s\n")
	c := n.start()
	ctx := tctx(t)
	if _, err := c.PutJobSpec(ctx, "nj", api.JobRequest{Guarantee: twopc.GuaranteeNone}); err != nil {
		t.Fatal(err)
	}
	s := mustSession(t, c, "nj", "0", nil)
	mustWrite(t, c, "nj", "0", s.Epoch, values(0, 10))
	if r, err := c.Checkpoint(ctx, "nj", "0", s.Epoch, 1, []byte("10"), ""); err != nil || r.Status != twopc.StatusCommitted || r.Guarantee != twopc.GuaranteeNone {
		t.Fatalf("checkpoint 1: %+v %v", r, err)
	}
	wantExactly(t, b.Addr, values(0, 10))
	b.Kill()
	t0 := time.Now()
	mustWrite(t, c, "nj", "0", s.Epoch, values(10, 20))
	if r, err := c.Checkpoint(ctx, "nj", "0", s.Epoch, 2, []byte("20"), ""); err != nil || r.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint 2 with the broker down: %+v %v", r, err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Fatalf("write and checkpoint with the broker down took %v; none must not wait", d)
	}
	want := `txsink_records_failed_total{guarantee="none",job="nj",sink="events"} 10`
	deadline := time.Now().Add(20 * time.Second)
	for {
		m := metricsText(t, n.httpAddr)
		if strings.Contains(m, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never showed %q; failed-records lines:\n%s", want, grepLines(m, "records_failed"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(n.logs.String(), "records failed and were dropped") {
		t.Fatal("no log line about the dropped records")
	}
}

func metricsText(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}
