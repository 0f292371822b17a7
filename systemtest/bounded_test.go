package systemtest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/internal/mysqltest"
	"github.com/txsink/txsink/twopc"
)

// Short deadlines keep these tests to seconds; answers must come within
// the deadline plus slack for process scheduling on a busy machine.
const (
	testDeadline = 2 * time.Second
	slack        = 1500 * time.Millisecond
	timeoutsYAML = "timeouts: {write: 2s, checkpoint: 2s, session: 2s, commit: 2s, ready: 500ms}\n"
)

// appendConfig adds top-level keys to the node's config file.
func (n *node) appendConfig(yaml string) {
	n.t.Helper()
	f, err := os.OpenFile(n.cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		n.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(yaml); err != nil {
		n.t.Fatal(err)
	}
}

// timed runs f and fails the test when it takes longer than the deadline
// plus slack; it returns f's error.
func timed(t *testing.T, what string, f func(ctx context.Context) error) error {
	t.Helper()
	// The client's own bound is far beyond the server's deadline: it only
	// keeps a broken test from hanging.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Now()
	err := f(ctx)
	if d := time.Since(t0); d > testDeadline+slack {
		t.Fatalf("%s answered after %s (%v); the deadline is %s", what, d.Round(time.Millisecond), err, testDeadline)
	}
	return err
}

// waitReadiness polls /readyz until it answers ready (want "") or not
// ready with a detail containing want.
func waitReadiness(t *testing.T, c *client.Client, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := c.Ready(ctx)
		cancel()
		switch {
		case want == "" && err == nil:
			return
		case want != "" && err != nil && strings.Contains(err.Error(), want):
			if e, ok := errors.AsType[*client.Error](err); !ok || e.Status != http.StatusServiceUnavailable {
				t.Fatalf("readyz: got %v, want 503", err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("readyz after %s: got %v, want %q", within, err, map[bool]string{true: "ready", false: want}[want == ""])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stopProcess sends SIGSTOP to pid and waits until every thread of it is
// stopped: kill returns once the signal is queued, and a thread already
// running could otherwise still answer one more request.
func stopProcess(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			t.Fatal(err)
		}
		stopped := 0
		for _, task := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
			// The state follows the command name in parentheses.
			if i := strings.LastIndexByte(string(b), ')'); err == nil && i > 0 && i+2 < len(b) && b[i+2] == 'T' {
				stopped++
			}
		}
		if stopped == len(tasks) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d: %d of %d threads stopped after 10s", pid, stopped, len(tasks))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// reopen opens a new session, retrying while a sink is still reconnecting.
func reopen(t *testing.T, c *client.Client, job, writer string) twopc.SessionInfo {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, err := c.OpenSession(tctx(t), job, writer, nil)
		if err == nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("reopen %s/%s: %v", job, writer, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A broker that stops (SIGSTOP: connections stay open, nothing answers):
// before, a checkpoint blocked for as long as the broker was stopped and
// /readyz answered ready throughout. Now the checkpoint fails within its
// deadline (502 sink_failure: the prepare did not finish, so its branches
// are aborted and the app reopens and replays), a session open answers in
// time, /readyz names the sink, and the log stays quiet; after the broker
// resumes, the replay commits everything exactly once.
func TestBrokerStoppedCallsAnswerInTime(t *testing.T) {
	b := kafkatest.StartBrokerWith(t, t.TempDir(), kafkatest.BrokerOptions{Topics: []string{topic}})
	n := newNode(t, kafkaSinkYAML(b.Addr))
	n.appendConfig(timeoutsYAML)
	c := n.start()
	s := openJob(t, c, "j", twopc.ModeAuto, "0")
	mustWrite(t, c, "j", "0", s.Epoch, values(0, 10))
	mustCheckpoint(t, c, "j", "0", s.Epoch, 1, twopc.StatusCommitted)

	// Checkpoint numbers above 2^53-1 are refused, and change nothing.
	for _, cp := range []int64{twopc.MaxCheckpoint + 1, 1<<63 - 1} {
		_, err := c.Checkpoint(tctx(t), "j", "0", s.Epoch, cp, nil, "")
		wantProblem(t, fmt.Sprintf("checkpoint %d", cp), err, http.StatusBadRequest, "invalid_request")
	}

	mustWrite(t, c, "j", "0", s.Epoch, values(10, 20))
	t.Cleanup(func() { _ = b.Signal(syscall.SIGCONT) })
	stopProcess(t, b.Pid())
	linesBefore := strings.Count(n.logs.String(), "\n")
	t0 := time.Now()

	err := timed(t, "checkpoint with the broker stopped", func(ctx context.Context) error {
		_, err := c.Checkpoint(ctx, "j", "0", s.Epoch, 2, []byte("s2"), "")
		return err
	})
	wantProblem(t, "checkpoint with the broker stopped", err, http.StatusBadGateway, "sink_failure")
	err = timed(t, "session open with the broker stopped", func(ctx context.Context) error {
		_, err := c.OpenSession(ctx, "j", "0", nil)
		return err
	})
	if err == nil {
		t.Fatal("session open with the broker stopped: got a session, want an error (the sink cannot be fenced)")
	}
	waitReadiness(t, c, "sink events not reachable", 10*time.Second)

	// The outage so far must not have flooded the log (it logged about
	// 28,000 lines a second before).
	lines := strings.Count(n.logs.String(), "\n") - linesBefore
	if perSec := float64(lines) / time.Since(t0).Seconds(); perSec > 100 {
		t.Fatalf("%d log lines in %s of outage (%.0f/s), want a quiet log", lines, time.Since(t0).Round(time.Millisecond), perSec)
	}

	if err := b.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitReadiness(t, c, "", 30*time.Second)
	s2 := reopen(t, c, "j", "0")
	if s2.Checkpoint != 1 {
		t.Fatalf("reopen restored checkpoint %d, want 1", s2.Checkpoint)
	}
	mustWrite(t, c, "j", "0", s2.Epoch, values(10, 20))
	mustCheckpoint(t, c, "j", "0", s2.Epoch, 2, twopc.StatusCommitted)
	wantExactly(t, b.Addr, values(0, 20))
}

// A MariaDB server that stops (SIGSTOP) while a branch is open: before, a
// write and a session open hung for as long as the server was stopped.
// Now the write fails within its deadline (502 sink_failure, the session is
// failed), a session open answers in time, /readyz names the sink; after
// the server resumes, the replay commits every row exactly once and no XA
// branch is left behind.
func TestMariaDBStoppedWriteAnswersInTime(t *testing.T) {
	srv := mysqltest.PrivateServer(t)
	m := newMDB(t, srv.Database(t), tableT)
	n := newNode(t, m.sinkYAML("db", 0, insStmts))
	n.appendConfig(timeoutsYAML)
	c := n.start()
	if _, err := c.PutJob(tctx(t), m.job, twopc.ModeAuto, nil); err != nil {
		t.Fatal(err)
	}
	s := mustSession(t, c, m.job, "0", nil)
	mustWriteRecs(t, c, m.job, "0", s.Epoch, insRecords("db", values(0, 10)))
	mustCheckpoint(t, c, m.job, "0", s.Epoch, 1, twopc.StatusCommitted)
	mustWriteRecs(t, c, m.job, "0", s.Epoch, insRecords("db", values(10, 12))) // an open XA branch

	cont := func() { _ = syscall.Kill(srv.Pid(), syscall.SIGCONT) }
	t.Cleanup(cont)
	stopProcess(t, srv.Pid())

	err := timed(t, "write with mariadbd stopped", func(ctx context.Context) error {
		_, err := c.Write(ctx, m.job, "0", s.Epoch, nil, insRecords("db", values(12, 14)))
		return err
	})
	wantProblem(t, "write with mariadbd stopped", err, http.StatusBadGateway, "sink_failure")
	err = timed(t, "session open with mariadbd stopped", func(ctx context.Context) error {
		_, err := c.OpenSession(ctx, m.job, "0", nil)
		return err
	})
	if err == nil {
		t.Fatal("session open with mariadbd stopped: got a session, want an error (the sink cannot be fenced)")
	}
	waitReadiness(t, c, "sink db not reachable", 10*time.Second)

	cont()
	waitReadiness(t, c, "", 30*time.Second)
	s2 := reopen(t, c, m.job, "0")
	if s2.Checkpoint != 1 {
		t.Fatalf("reopen restored checkpoint %d, want 1", s2.Checkpoint)
	}
	mustWriteRecs(t, c, m.job, "0", s2.Epoch, insRecords("db", values(10, 20)))
	mustCheckpoint(t, c, m.job, "0", s2.Epoch, 2, twopc.StatusCommitted)
	m.wantRows(values(0, 20))
}

// A commit whose decision is durable while the sink's server is stopped:
// the external commit call answers 202 committing within its deadline, the
// commit goes on in the background, and once the server resumes the records
// are visible exactly once.
func TestStoppedSinkCommitAnswersCommitting(t *testing.T) {
	t.Run("kafka", func(t *testing.T) {
		b := kafkatest.StartBrokerWith(t, t.TempDir(), kafkatest.BrokerOptions{Topics: []string{topic}})
		n := newNode(t, kafkaSinkYAML(b.Addr))
		n.appendConfig(timeoutsYAML)
		c := n.start()
		s := openJob(t, c, "x", twopc.ModeExternal, "0")
		mustWrite(t, c, "x", "0", s.Epoch, values(0, 10))
		mustCheckpoint(t, c, "x", "0", s.Epoch, 1, twopc.StatusPrepared)
		t.Cleanup(func() { _ = b.Signal(syscall.SIGCONT) })
		stopProcess(t, b.Pid())
		commitAnswersCommitting(t, c, "x")
		// The next write begins a transaction on a new slot client, whose
		// InitProducerID (inside kgo's BeginTransaction, which takes no
		// context) waited out kgo's retries: 40s.
		err := timed(t, "write on a new slot with the broker stopped", func(ctx context.Context) error {
			_, err := c.Write(ctx, "x", "0", s.Epoch, nil, records(values(10, 20)))
			return err
		})
		wantProblem(t, "write on a new slot with the broker stopped", err, http.StatusBadGateway, "sink_failure")
		if err := b.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		wantExactly(t, b.Addr, values(0, 10))
	})
	t.Run("mysql", func(t *testing.T) {
		srv := mysqltest.PrivateServer(t)
		m := newMDB(t, srv.Database(t), tableT)
		n := newNode(t, m.sinkYAML("db", 0, insStmts))
		n.appendConfig(timeoutsYAML)
		c := n.start()
		if _, err := c.PutJob(tctx(t), m.job, twopc.ModeExternal, nil); err != nil {
			t.Fatal(err)
		}
		s := mustSession(t, c, m.job, "0", nil)
		mustWriteRecs(t, c, m.job, "0", s.Epoch, insRecords("db", values(0, 10)))
		mustCheckpoint(t, c, m.job, "0", s.Epoch, 1, twopc.StatusPrepared)
		cont := func() { _ = syscall.Kill(srv.Pid(), syscall.SIGCONT) }
		t.Cleanup(cont)
		stopProcess(t, srv.Pid())
		commitAnswersCommitting(t, c, m.job)
		cont()
		m.waitRows(values(0, 10), 30*time.Second)
	})
}

func commitAnswersCommitting(t *testing.T, c *client.Client, job string) {
	t.Helper()
	var r twopc.CommitResult
	err := timed(t, "commit with the sink stopped", func(ctx context.Context) error {
		var err error
		r, err = c.Commit(ctx, job, 1)
		return err
	})
	if err != nil || r.Status != twopc.StatusCommitting {
		t.Fatalf("commit with the sink stopped: %+v %v, want status committing (202)", r, err)
	}
}
