package kafka

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/twopc"
)

// Validate checks one record and normalises it in place so that Write has
// nothing left to decide: Topic is filled with the default topic, Key and
// Value are converted to bytes in KeyB64 and ValueB64 (and cleared).
// Validating a normalised record again is a no-op. It also refuses what the
// broker would refuse for good (too large, a partition the topic lacks),
// asking the broker about a topic the first time it sees it.
func (s *Sink) Validate(r *twopc.Record) error {
	if r.Stmt != "" || len(r.Args) > 0 {
		return fmt.Errorf("%w: kafka sink %q: stmt/args are MySQL fields", twopc.ErrInvalid, s.cfg.Name)
	}
	if r.Topic == "" {
		if s.cfg.DefaultTopic == "" {
			return fmt.Errorf("%w: kafka sink %q: record has no topic and the sink no default topic", twopc.ErrInvalid, s.cfg.Name)
		}
		r.Topic = s.cfg.DefaultTopic
	} else if !s.topicAllowed(r.Topic) {
		return fmt.Errorf("%w: kafka sink %q: topic %q is not allowed", twopc.ErrInvalid, s.cfg.Name, r.Topic)
	}
	if r.Partition != nil && *r.Partition < 0 {
		return fmt.Errorf("%w: kafka sink %q: partition %d must be >= 0", twopc.ErrInvalid, s.cfg.Name, *r.Partition)
	}
	if r.Key != nil {
		if r.KeyB64 != nil {
			return fmt.Errorf("%w: kafka sink %q: key and key_b64 are both set", twopc.ErrInvalid, s.cfg.Name)
		}
		b, err := jsonBytes(r.Key, r.JSONChecked, r.KeyPlain)
		if err != nil {
			return fmt.Errorf("%w: kafka sink %q: key: %w", twopc.ErrInvalid, s.cfg.Name, err)
		}
		r.Key, r.KeyB64, r.KeyPlain = nil, b, false
	}
	if r.Value != nil {
		if r.ValueB64 != nil {
			return fmt.Errorf("%w: kafka sink %q: value and value_b64 are both set", twopc.ErrInvalid, s.cfg.Name)
		}
		b, err := jsonBytes(r.Value, r.JSONChecked, r.ValuePlain)
		if err != nil {
			return fmt.Errorf("%w: kafka sink %q: value: %w", twopc.ErrInvalid, s.cfg.Name, err)
		}
		r.Value, r.ValueB64, r.ValuePlain = nil, b, false
	}
	return s.checkRecord(r)
}

func (s *Sink) topicAllowed(t string) bool {
	if t == s.cfg.DefaultTopic || s.topics.known(t) {
		return true
	}
	if s.allowAll {
		// Still reject names Kafka would refuse, so the client gets a 400
		// instead of a failed prepare.
		return checkTopic(t) == nil
	}
	_, ok := s.allowed[t]
	return ok
}

// jsonBytes turns a key or value given as JSON into record bytes: a JSON
// string becomes its UTF-8 bytes, null becomes nil (no key / a tombstone),
// any other value its JSON text. checked (Record.JSONChecked) skips the
// syntax check of a value that is not a string: the API's decoder did it
// already, and for a 100-byte JSON object it is a second scan costing
// about as much as the rest of Validate. plain (Record.KeyPlain,
// ValuePlain) says raw is a quoted string that is its own decoding, also
// checked by the API's decoder: the bytes between the quotes are taken
// without a scan (for a 100-byte string value Validate takes about 105
// instead of 145 ns, BenchmarkValidateValue).
func jsonBytes(raw json.RawMessage, checked, plain bool) ([]byte, error) {
	if n := len(raw); plain && n >= 2 {
		return raw[1 : n-1], nil
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nil, fmt.Errorf("empty JSON")
	}
	switch raw[0] {
	case '"':
		// Fast path: no escapes, so the bytes between the quotes are the
		// string (aliasing raw, which the record owns anyway).
		if n := len(raw); n >= 2 && raw[n-1] == '"' && plainString(raw[1:n-1]) {
			return raw[1 : n-1], nil
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("invalid JSON string: %w", err)
		}
		return []byte(s), nil
	case 'n':
		if string(raw) == "null" {
			return nil, nil
		}
	}
	if !checked && !json.Valid(raw) {
		return nil, fmt.Errorf("invalid JSON %.40q", raw)
	}
	return raw, nil
}

// plainString reports whether b, the inside of a JSON string, is its own
// decoding: valid UTF-8 without a quote, backslash or control character.
// It runs over every key and value of every record, so the common case (all
// ASCII) is checked eight bytes at a time; anything suspicious in a word
// falls back to the exact check of that word and the rest.
func plainString(b []byte) bool {
	i := 0
	for ; len(b)-i >= 8; i += 8 {
		if special(binary.LittleEndian.Uint64(b[i:])) {
			break
		}
	}
	for ; i < len(b); i++ {
		c := b[i]
		if c < 0x20 || c == '"' || c == '\\' {
			return false
		}
		if c >= utf8.RuneSelf {
			rest := b[i:]
			return utf8.Valid(rest) && bytes.IndexByte(rest, '"') < 0 && bytes.IndexByte(rest, '\\') < 0 && !hasControl(rest)
		}
	}
	return true
}

const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// special reports whether any byte of w may be below 0x20, a quote, a
// backslash or non-ASCII (the classic "has a byte less than n" bit tricks;
// they may report a false positive next to a true one, never a false
// negative).
func special(w uint64) bool {
	less := (w - ones*0x20) &^ w
	quote := w ^ (ones * '"')
	bslash := w ^ (ones * '\\')
	return (less|((quote-ones)&^quote)|((bslash-ones)&^bslash)|w)&highs != 0
}

func hasControl(b []byte) bool {
	for _, c := range b {
		if c < 0x20 {
			return true
		}
	}
	return false
}

// toKgo fills kr, a zero kgo.Record, for a validated record. Partition -1
// means "let the partitioner hash the key" (see partitioner). Headers are
// carved from hs, which the caller sizes for the whole call (one
// allocation per call instead of one per record); toKgo returns the rest.
func toKgo(kr *kgo.Record, r *twopc.Record, hs []kgo.RecordHeader) []kgo.RecordHeader {
	kr.Topic, kr.Key, kr.Value, kr.Partition = r.Topic, r.KeyB64, r.ValueB64, -1
	if r.Key != nil { // not normalised by Validate; be forgiving
		kr.Key, _ = jsonBytes(r.Key, r.JSONChecked, r.KeyPlain)
	}
	if r.Value != nil {
		kr.Value, _ = jsonBytes(r.Value, r.JSONChecked, r.ValuePlain)
	}
	if r.Partition != nil {
		kr.Partition = *r.Partition
	}
	if n := len(r.Headers); n > 0 {
		if len(hs) < n { // the caller counted; be safe anyway
			hs = make([]kgo.RecordHeader, n)
		}
		h := hs[:0:n]
		for k, v := range r.Headers {
			h = append(h, kgo.RecordHeader{Key: k, Value: []byte(v)})
		}
		kr.Headers, hs = h, hs[n:]
	}
	return hs
}

// partitioner honours an explicit partition (Record.Partition >= 0, set by
// toKgo) and otherwise behaves like Kafka's default partitioner: murmur2 of
// the key modulo the partition count, sticky batches for records without a
// key. An explicit partition beyond the topic's count fails the record (and
// so the prepare) with kgo's "invalid record partitioning choice" error.
type partitioner struct{ inner kgo.Partitioner }

func newPartitioner() kgo.Partitioner {
	return partitioner{kgo.StickyKeyPartitioner(nil)}
}

func (p partitioner) ForTopic(t string) kgo.TopicPartitioner {
	return &topicPartitioner{p.inner.ForTopic(t)}
}

type topicPartitioner struct{ inner kgo.TopicPartitioner }

func (p *topicPartitioner) RequiresConsistency(r *kgo.Record) bool {
	return r.Partition >= 0 || p.inner.RequiresConsistency(r)
}

func (p *topicPartitioner) Partition(r *kgo.Record, n int) int {
	if r.Partition >= 0 {
		return int(r.Partition)
	}
	return p.inner.Partition(r, n)
}

// OnNewBatch keeps the sticky behaviour of the wrapped partitioner for
// records without a key.
func (p *topicPartitioner) OnNewBatch() {
	if nb, ok := p.inner.(kgo.TopicPartitionerOnNewBatch); ok {
		nb.OnNewBatch()
	}
}
