package kafka_test

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/twopc"
)

func sized(topic string, n int, partition *int32) *twopc.Record {
	v, _ := json.Marshal(strings.Repeat("x", n))
	return &twopc.Record{Sink: "events", Topic: topic, Value: v, Partition: partition}
}

func i32(v int32) *int32 { return &v }

// Validate refuses what the broker would refuse for good: a record over the
// broker's or the topic's max.message.bytes, a partition the topic does not
// have. A topic that does not exist yet is allowed.
func TestValidateRefusesWhatTheBrokerWould(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(2, "events"),
		kfake.BrokerConfigs(map[string]string{"message.max.bytes": "4096"}))
	addr := kafkatest.Addr(c)
	ctx := ctxT(t)
	adm := kadm.NewClient(mustClient(t, addr))
	small := "1000"
	if _, err := adm.CreateTopic(ctx, 1, 1, map[string]*string{"max.message.bytes": &small}, "small"); err != nil {
		t.Fatalf("CreateTopic: %v", err)
	}
	s := newSink(t, addr)
	for _, tc := range []struct {
		name    string
		r       *twopc.Record
		mention string // "" = valid
	}{
		{"fits the broker's limit", sized("events", 3000, nil), ""},
		{"over the broker's limit", sized("events", 5000, nil), "max.message.bytes 4096"},
		{"over the topic's limit", sized("small", 1500, nil), "max.message.bytes 1000"},
		{"fits the topic's limit", sized("small", 500, nil), ""},
		{"existing partition", sized("events", 10, i32(1)), ""},
		{"missing partition", sized("events", 10, i32(2)), "no partition 2"},
		{"topic not created yet", sized("later", 10, i32(3)), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Validate(tc.r)
			if tc.mention == "" {
				if err != nil {
					t.Fatalf("got %v, want valid", err)
				}
				return
			}
			if !errors.Is(err, twopc.ErrInvalid) || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("got %v, want ErrInvalid mentioning %q", err, tc.mention)
			}
		})
	}
	// The valid ones really are accepted by the broker.
	b, err := s.Begin(ctx, bid("w0", 1, 0))
	if err != nil {
		t.Fatal(err)
	}
	ok := []*twopc.Record{sized("events", 3000, nil), sized("small", 500, nil), sized("events", 10, i32(1))}
	for _, r := range ok {
		if err := s.Validate(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Write(ctx, ok); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatalf("Prepare of valid records: %v", err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// Partitions added later are seen after a short recheck.
	if _, err := adm.CreatePartitions(ctx, 2, "events"); err != nil {
		t.Fatalf("CreatePartitions: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.Validate(sized("events", 10, i32(3)))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("partition 3 after adding partitions: still %v", err)
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
}

// A record the broker refuses at produce time (its topic's limit was lowered
// after Validate learnt it) fails the prepare as a rejected record, naming
// its topic, partition and key, and as a sink failure: a Kafka transaction
// cannot drop one record, so the session must replay without it.
func TestPrepareRejectedRecord(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(1, "events"))
	addr := kafkatest.Addr(c)
	ctx := ctxT(t)
	s := newSink(t, addr)
	// Random letters: franz-go compresses batches, and the broker checks
	// the compressed size.
	v := make([]byte, 4000)
	for i := range v {
		v[i] = 'a' + byte(rand.IntN(26))
	}
	r := &twopc.Record{Sink: "events", Topic: "events", ValueB64: v}
	r.Key = json.RawMessage(`"the-key"`)
	if err := s.Validate(r); err != nil {
		t.Fatal(err)
	}
	adm := kadm.NewClient(mustClient(t, addr))
	small := "1000"
	resp, err := adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Op: kadm.SetConfig, Name: "max.message.bytes", Value: &small}}, "events")
	if err == nil {
		for _, r := range resp {
			err = errors.Join(err, r.Err)
		}
	}
	if err != nil {
		t.Fatalf("AlterTopicConfigs: %v", err)
	}
	b, err := s.Begin(ctx, bid("w0", 1, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Write(ctx, []*twopc.Record{r}); err != nil {
		t.Fatal(err)
	}
	_, err = b.Prepare(ctx)
	if !errors.Is(err, twopc.ErrRecordRejected) || !errors.Is(err, twopc.ErrSinkFailure) || !strings.Contains(err.Error(), `"the-key"`) {
		t.Fatalf("Prepare: got %v, want ErrRecordRejected and ErrSinkFailure naming the key", err)
	}
	if err := b.Abort(ctx); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	if got := values(t, addr, "events", 0); len(got) != 0 {
		t.Fatalf("got %d records, want 0", len(got))
	}
}
