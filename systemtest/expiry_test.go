package systemtest

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/sinks/kafka"
	"github.com/txsink/txsink/twopc"
)

// The report of issue 9 (part 1): a Kafka sink with transaction_timeout 3s,
// a write, a wait until the transaction is gone from the broker, then the
// checkpoint. It used to answer 200 data_loss and journal the checkpoint, so
// the reopened session skipped the lost input. Now the checkpoint answers
// the replayable 502 sink_failure, the reopened session restores the
// previous checkpoint, and the replay commits every record exactly once.
func TestExpiredTransactionIsNotJournaled(t *testing.T) {
	b := kafkatest.StartBrokerWith(t, t.TempDir(), kafkatest.BrokerOptions{Topics: []string{topic},
		TransactionMaxTimeout: 5 * time.Second})
	n := newNode(t, kafkaSinkYAML(b.Addr)+"    transaction_timeout: 3s\n")
	c := n.start()
	ctx := tctx(t)
	s := openJob(t, c, "j", twopc.ModeAuto, "0")
	mustWrite(t, c, "j", "0", s.Epoch, values(0, 10))
	if r, err := c.Checkpoint(ctx, "j", "0", s.Epoch, 1, []byte("offset=10"), ""); err != nil || r.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint 1: %+v %v", r, err)
	}
	mustWrite(t, c, "j", "0", s.Epoch, values(10, 20))

	// Wait (bounded) until the broker no longer has the transaction open:
	// the sidecar aborts it at expire_share (1.5s), the broker at 3s.
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	// The write may have taken slot 1: checkpoint 1 answered once its
	// commit was done, and its RESOLVED entry (which frees slot 0) may
	// have come after the write began its branch.
	txnIDs := []string{kafka.TransactionalID(kafka.DefaultTransactionalIDPrefix, "j", "0", 0),
		kafka.TransactionalID(kafka.DefaultTransactionalIDPrefix, "j", "0", 1)}
	seen := false
	deadline := time.Now().Add(20 * time.Second)
	for {
		d, err := adm.DescribeTransactions(ctx, txnIDs...)
		if err != nil {
			t.Fatalf("DescribeTransactions: %v", err)
		}
		var states []string
		ongoing := false
		for _, id := range txnIDs {
			states = append(states, id+"="+d[id].State)
			ongoing = ongoing || d[id].State == "Ongoing"
		}
		if ongoing {
			seen = true
		} else if seen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("transactions %v after 20s (seen ongoing: %v), want one ongoing and then ended", states, seen)
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}

	_, err = c.Checkpoint(ctx, "j", "0", s.Epoch, 2, []byte("offset=20"), "")
	if e, ok := errors.AsType[*client.Error](err); !ok || e.Code != "sink_failure" || e.Status != 502 || !strings.Contains(e.Detail, "transaction expired") {
		t.Fatalf("checkpoint of an expired transaction: got %v, want 502 sink_failure naming the expired transaction", err)
	}
	cps, err := c.Checkpoints(ctx, "j")
	if err != nil {
		t.Fatal(err)
	}
	for _, cp := range cps {
		if cp.Checkpoint == 2 {
			t.Fatalf("checkpoint 2 was journaled: %+v", cp)
		}
	}

	s2, err := c.OpenSession(ctx, "j", "0", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s2.Checkpoint != 1 || string(s2.State) != "offset=10" {
		t.Fatalf("reopen: got checkpoint %d state %q, want 1 %q", s2.Checkpoint, s2.State, "offset=10")
	}
	mustWrite(t, c, "j", "0", s2.Epoch, values(10, 20))
	if r, err := c.Checkpoint(ctx, "j", "0", s2.Epoch, 2, []byte("offset=20"), ""); err != nil || r.Status != twopc.StatusCommitted {
		t.Fatalf("replayed checkpoint 2: %+v %v", r, err)
	}
	wantExactly(t, b.Addr, values(0, 20))
	if got := kcatValues(t, b.Addr); got != nil && !slices.Equal(got, values(0, 20)) {
		t.Fatalf("kcat read %v, want the 20 committed records once", abbrev(got))
	}
}
