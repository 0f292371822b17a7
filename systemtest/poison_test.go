package systemtest

import (
	"errors"
	"strings"
	"testing"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

// Issue 9, part 4 through the real binary: a Kafka record the broker would
// refuse on every replay (over message.max.bytes, a partition the topic
// lacks) is 400 naming its line; the call writes nothing and the session
// goes on without it.
func TestKafkaPoisonRecordIsNamed(t *testing.T) {
	broker := startBroker(t)
	n := newNode(t, kafkaSinkYAML(broker))
	c := n.start()
	ctx := tctx(t)
	s := openJob(t, c, "j", twopc.ModeAuto, "0")
	big := records([]string{strings.Repeat("x", 1100000)})[0]
	p := int32(5)
	wrongPart := records([]string{"v0001"})[0]
	wrongPart.Partition = &p
	for _, tc := range []struct {
		name    string
		call    []*twopc.Record
		line    int
		mention string
	}{
		{"too large", append(append(records(values(0, 1)), big), records(values(1, 2))...), 2, "max.message.bytes"},
		{"no such partition", append(records(values(0, 2)), wrongPart), 3, "no partition 5"},
	} {
		_, err := c.Write(ctx, "j", "0", s.Epoch, nil, tc.call)
		if e, ok := errors.AsType[*client.Error](err); !ok || e.Status != 400 || e.Record != tc.line || !strings.Contains(e.Detail, tc.mention) {
			t.Fatalf("%s: got %v, want 400 naming record %d (%s)", tc.name, err, tc.line, tc.mention)
		}
	}
	mustWrite(t, c, "j", "0", s.Epoch, values(0, 2))
	if r, err := c.Checkpoint(ctx, "j", "0", s.Epoch, 1, []byte("offset=2"), ""); err != nil || r.Status != twopc.StatusCommitted {
		t.Fatalf("checkpoint 1: %+v %v", r, err)
	}
	wantExactly(t, broker, values(0, 2))
}
