package kafka_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/sinks/kafka"
	"github.com/txsink/txsink/twopc"
)

func TestValidate(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.SeedTopics(1, "events"))
	s := newSink(t, kafkatest.Addr(c), func(c *kafka.Config) { c.Topics = []string{"pv", "clicks"} })
	neg := int32(-1)
	zero := int32(0)
	raw := func(s string) json.RawMessage { return json.RawMessage(s) }

	bad := []struct {
		name    string
		r       twopc.Record
		mention string
	}{
		{"stmt", twopc.Record{Stmt: "insert_event"}, "MySQL"},
		{"args", twopc.Record{Args: []json.RawMessage{raw(`1`)}}, "MySQL"},
		{"unknown topic", twopc.Record{Topic: "secret"}, `"secret"`},
		{"illegal topic", twopc.Record{Topic: "a b"}, `"a b"`},
		{"key and key_b64", twopc.Record{Key: raw(`"k"`), KeyB64: []byte("k")}, "key_b64"},
		{"value and value_b64", twopc.Record{Value: raw(`"v"`), ValueB64: []byte("v")}, "value_b64"},
		{"negative partition", twopc.Record{Partition: &neg}, "partition"},
		{"invalid key JSON", twopc.Record{Key: raw(`{"a":`)}, "key"},
		{"invalid value JSON", twopc.Record{Value: raw(`tru`)}, "value"},
		{"invalid string escape", twopc.Record{Value: raw(`"\q"`)}, "value"},
		{"empty value JSON", twopc.Record{Value: raw(` `)}, "value"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.r
			err := s.Validate(&r)
			if !errors.Is(err, twopc.ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("got %q, want it to mention %s", err, tc.mention)
			}
		})
	}

	good := []struct {
		name       string
		r          twopc.Record
		topic      string
		key, value []byte
	}{
		{"defaults", twopc.Record{}, "events", nil, nil},
		{"allowed topic", twopc.Record{Topic: "pv"}, "pv", nil, nil},
		{"default topic named", twopc.Record{Topic: "events"}, "events", nil, nil},
		{"string key", twopc.Record{Key: raw(`"app1"`)}, "events", []byte("app1"), nil},
		{"escaped string", twopc.Record{Value: raw(`"a\"b\u00e9"`)}, "events", nil, []byte("a\"bé")},
		{"empty string key", twopc.Record{Key: raw(`""`)}, "events", []byte{}, nil},
		{"object value", twopc.Record{Value: raw(`{"n":1}`)}, "events", nil, []byte(`{"n":1}`)},
		{"number key", twopc.Record{Key: raw(`12`)}, "events", []byte("12"), nil},
		{"null value", twopc.Record{Value: raw(`null`)}, "events", nil, nil},
		{"b64", twopc.Record{KeyB64: []byte{1}, ValueB64: []byte{2}}, "events", []byte{1}, []byte{2}},
		{"partition 0", twopc.Record{Partition: &zero}, "events", nil, nil},
	}
	for _, tc := range good {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.r
			if err := s.Validate(&r); err != nil {
				t.Fatalf("got %v, want nil", err)
			}
			if r.Topic != tc.topic || string(r.KeyB64) != string(tc.key) || string(r.ValueB64) != string(tc.value) ||
				(r.KeyB64 == nil) != (tc.key == nil) || r.Key != nil || r.Value != nil {
				t.Fatalf("got topic %q key %q value %q (json %q %q), want %q %q %q", r.Topic, r.KeyB64, r.ValueB64, r.Key, r.Value, tc.topic, tc.key, tc.value)
			}
			// Validating a normalised record again changes nothing.
			again := r
			if err := s.Validate(&again); err != nil || string(again.KeyB64) != string(r.KeyB64) {
				t.Fatalf("second Validate: got %v / key %q, want nil / %q", err, again.KeyB64, r.KeyB64)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	ok := kafka.Config{Name: "events", Brokers: []string{"b:9092"}, DefaultTopic: "events"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("minimal config: got %v, want nil", err)
	}
	for name, mod := range map[string]func(*kafka.Config){
		"no name":       func(c *kafka.Config) { c.Name = "" },
		"no brokers":    func(c *kafka.Config) { c.Brokers = nil },
		"no topics":     func(c *kafka.Config) { c.DefaultTopic = "" },
		"bad topic":     func(c *kafka.Config) { c.Topics = []string{"a/b"} },
		"bad prefix":    func(c *kafka.Config) { c.TransactionalIDPrefix = ".x" },
		"inflight":      func(c *kafka.Config) { c.MaxInflight = -1 },
		"short timeout": func(c *kafka.Config) { c.TransactionTimeout = 10 },
		"share 1":       func(c *kafka.Config) { c.ExpireShare = 1 },
		"share < 0":     func(c *kafka.Config) { c.ExpireShare = -0.1 },
	} {
		c := ok
		mod(&c)
		if err := c.Validate(); !errors.Is(err, twopc.ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
}

func TestTransactionalID(t *testing.T) {
	if got := kafka.TransactionalID("txsink", "job", "0", 3); got != "txsink.job.0.3" {
		t.Fatalf("got %q, want txsink.job.0.3", got)
	}
	// Dots in names must not make two (job, writer) pairs collide.
	a := kafka.TransactionalID("p", "a.b", "c", 0)
	b := kafka.TransactionalID("p", "a", "b.c", 0)
	if a == b {
		t.Fatalf("job a.b/writer c and job a/writer b.c share %q", a)
	}
}
