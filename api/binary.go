package api

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"unicode/utf8"

	"github.com/txsink/txsink/twopc"
)

// BinaryRecordsType is the compact binary body of the records call
// (version 1), for Kafka-shaped records: no JSON to build in the app, no
// JSON to scan in the sidecar. All integers are unsigned LEB128 varints
// (encoding/binary's Uvarint):
//
//	body   = "TXR1" record*                      (until the body ends)
//	record = sink topic partition key value headers
//	sink   = len bytes                           (len 0: none, the job's only sink)
//	topic  = len bytes                           (len 0: the sink's default topic)
//	partition = p+1                              (0: none; p ≤ 2147483647)
//	key    = n+1 bytes[n]                        (0: null, no key)
//	value  = n+1 bytes[n]                        (0: null, a tombstone)
//	headers = count (len name, len value)*count
//
// Key and value are the record's bytes (twopc.Record.KeyB64/ValueB64, as
// key_b64/value_b64 in JSON). Sink, topic, header names and values must be
// valid UTF-8, like every string JSON can carry; a repeated header name
// keeps the last value, as a repeated key of the JSON "headers" object
// does. MySQL records (stmt/args) have no binary form.
const BinaryRecordsType = "application/vnd.txsink.records"

// binaryMagic starts every binary records body; its last byte is the
// format's version.
const binaryMagic = "TXR1"

// binRecord is one record as parsed, its byte fields still in the body.
type binRecord struct {
	sink, topic []byte
	partition   uint64 // p+1, 0 for none
	key, value  []byte // nil for null
	headers     int    // count
	hdrs        []byte // the encoded headers (nextStr splits them)
}

// binReader parses a body; off is the offset of the next byte.
type binReader struct {
	b   []byte
	off int
	rec int // 1-based index of the record being read
	// The previous record's sink and topic, known to be UTF-8: records of
	// a call mostly repeat them.
	sink, topic []byte
}

func (r *binReader) errorf(at int, format string, args ...any) error {
	return fmt.Errorf("record %d (offset %d): %s", r.rec, at, fmt.Sprintf(format, args...))
}

// uvarint reads a varint: the what, or with length the what's length.
// (The names are only put together on an error: this runs for every field.)
func (r *binReader) uvarint(what string, length bool) (uint64, error) {
	if r.off < len(r.b) && r.b[r.off] < 0x80 { // most are one byte
		r.off++
		return uint64(r.b[r.off-1]), nil
	}
	v, n := binary.Uvarint(r.b[r.off:])
	if n <= 0 {
		if length {
			what += " length"
		}
		if n == 0 {
			return 0, r.errorf(r.off, "truncated: the body ends inside the %s", what)
		}
		return 0, r.errorf(r.off, "varint overflow in the %s", what)
	}
	r.off += n
	return v, nil
}

// bytes reads n bytes announced by the varint at at.
func (r *binReader) bytes(n uint64, at int, what string) ([]byte, error) {
	if left := uint64(len(r.b) - r.off); n > left {
		return nil, r.errorf(at, "the %s's length %d is beyond the body (%d bytes left)", what, n, left)
	}
	out := r.b[r.off : r.off+int(n) : r.off+int(n)]
	r.off += int(n)
	return out, nil
}

// str reads a len-prefixed UTF-8 string; same is one known to be UTF-8.
func (r *binReader) str(what string, same []byte) ([]byte, error) {
	at := r.off
	n, err := r.uvarint(what, true)
	if err != nil {
		return nil, err
	}
	s, err := r.bytes(n, at, what)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(s, same) && !utf8.Valid(s) {
		return nil, r.errorf(at, "the %s is not valid UTF-8", what)
	}
	return s, nil
}

// opt reads an n+1-prefixed byte string: nil for 0.
func (r *binReader) opt(what string) ([]byte, error) {
	at := r.off
	n, err := r.uvarint(what, true)
	if err != nil || n == 0 {
		return nil, err
	}
	return r.bytes(n-1, at, what)
}

// record parses the next record into rec.
func (r *binReader) record(rec *binRecord) error {
	var err error
	if rec.sink, err = r.str("sink", r.sink); err != nil {
		return err
	}
	if rec.topic, err = r.str("topic", r.topic); err != nil {
		return err
	}
	r.sink, r.topic = rec.sink, rec.topic
	at := r.off
	if rec.partition, err = r.uvarint("partition", false); err != nil {
		return err
	}
	if rec.partition > math.MaxInt32+1 {
		return r.errorf(at, "partition %d is above %d", rec.partition-1, math.MaxInt32)
	}
	if rec.key, err = r.opt("key"); err != nil {
		return err
	}
	if rec.value, err = r.opt("value"); err != nil {
		return err
	}
	at = r.off
	h, err := r.uvarint("header count", false)
	if err != nil {
		return err
	}
	if left := uint64(len(r.b) - r.off); h > left/2 {
		return r.errorf(at, "%d headers cannot fit in the %d bytes left", h, left)
	}
	start := r.off
	for range h {
		if _, err := r.str("header name", nil); err != nil {
			return err
		}
		if _, err := r.str("header value", nil); err != nil {
			return err
		}
	}
	rec.headers, rec.hdrs = int(h), r.b[start:r.off]
	return nil
}

// The second pass reads what record checked, without the checks.

// next reads a varint known to be there.
func (r *binReader) next() uint64 {
	if c := r.b[r.off]; c < 0x80 {
		r.off++
		return uint64(c)
	}
	v, n := binary.Uvarint(r.b[r.off:])
	r.off += n
	return v
}

// nextBytes reads n known bytes.
func (r *binReader) nextBytes(n uint64) []byte {
	s := r.b[r.off : r.off+int(n)]
	r.off += int(n)
	return s
}

// nextOpt reads an n+1-prefixed byte string known to be there.
func (r *binReader) nextOpt() []byte {
	n := r.next()
	if n == 0 {
		return nil
	}
	return r.nextBytes(n - 1)
}

// decodeBinary decodes a BinaryRecordsType body, at most max records. A
// first pass checks the whole body and counts, so that the second
// allocates once: one Record slab, one arena for the keys and values (the
// body's buffer goes back to its pool when the call returns, so the
// records cannot alias it), one slab for the partitions; sink and topic
// names are interned. Errors name the record (1-based) and the offset.
func decodeBinary(body []byte, max int) ([]*twopc.Record, error) {
	if len(body) < len(binaryMagic) || string(body[:len(binaryMagic)]) != binaryMagic {
		return nil, fmt.Errorf("offset 0: a %s body starts with %q (version 1)", BinaryRecordsType, binaryMagic)
	}
	r := binReader{b: body, off: len(binaryMagic)}
	var rec binRecord
	var n, parts, arena int
	for r.off < len(body) {
		if n == max {
			return nil, fmt.Errorf("%w: more than %d records in one call", errTooManyRecords, max)
		}
		n++
		r.rec = n
		if err := r.record(&rec); err != nil {
			return nil, err
		}
		if rec.partition != 0 {
			parts++
		}
		arena += len(rec.key) + len(rec.value)
	}
	slab := make([]twopc.Record, n)
	partSlab := make([]int32, parts)
	d := fastDecoder{arena: make([]byte, 0, arena)}
	r = binReader{b: body, off: len(binaryMagic)}
	for i := range slab {
		out := &slab[i]
		if s := r.nextBytes(r.next()); len(s) > 0 {
			if string(s) != d.sink {
				d.sink = d.intern(s)
			}
			out.Sink = d.sink
		}
		if s := r.nextBytes(r.next()); len(s) > 0 {
			if string(s) != d.topic {
				d.topic = d.intern(s)
			}
			out.Topic = d.topic
		}
		if p := r.next(); p != 0 {
			out.Partition = &partSlab[0]
			partSlab = partSlab[1:]
			*out.Partition = int32(p - 1)
		}
		if k := r.nextOpt(); k != nil {
			out.KeyB64 = d.carve(k)
		}
		if v := r.nextOpt(); v != nil {
			out.ValueB64 = d.carve(v)
		}
		if n := r.next(); n > 0 {
			h := make(map[string]string, min(n, 8))
			for range n {
				name := r.nextBytes(r.next())
				h[d.intern(name)] = string(r.nextBytes(r.next()))
			}
			out.Headers = h
		}
	}
	return pointers(slab), nil
}

// ErrNotBinary is returned by AppendBinaryRecords for a record the binary
// format cannot carry.
var ErrNotBinary = errors.New("record has no binary form")

// AppendBinaryRecords appends recs to dst as a BinaryRecordsType body
// (starting with its magic) and returns the result. Key and Value given as
// JSON are converted as the Kafka sink converts them when they are a JSON
// string (its UTF-8 bytes) or null (no key / a tombstone); any other JSON
// value is an error (put its bytes in KeyB64/ValueB64). So are, matching
// ErrNotBinary, a record with Stmt or Args (MySQL), with both Key and
// KeyB64 (or Value and ValueB64), with a negative partition, or with
// strings that are not valid UTF-8. Headers
// are written in name order, so the same records always give the same
// body (a retried call with seq must repeat it byte for byte).
func AppendBinaryRecords(dst []byte, recs []*twopc.Record) ([]byte, error) {
	dst = append(dst, binaryMagic...)
	for i, r := range recs {
		var err error
		if dst, err = appendBinaryRecord(dst, r); err != nil {
			return nil, fmt.Errorf("%w: record %d: %w", ErrNotBinary, i+1, err)
		}
	}
	return dst, nil
}

func appendBinaryRecord(dst []byte, r *twopc.Record) ([]byte, error) {
	if r.Stmt != "" || len(r.Args) > 0 {
		return nil, errors.New("stmt/args are MySQL fields, which only JSON carries")
	}
	for _, s := range []string{r.Sink, r.Topic} {
		if !utf8.ValidString(s) {
			return nil, fmt.Errorf("%q is not valid UTF-8", s)
		}
		dst = appendStr(dst, s)
	}
	if r.Partition == nil {
		dst = append(dst, 0)
	} else {
		if *r.Partition < 0 {
			return nil, fmt.Errorf("partition %d is negative", *r.Partition)
		}
		dst = binary.AppendUvarint(dst, uint64(*r.Partition)+1)
	}
	for _, f := range []struct {
		name string
		raw  json.RawMessage
		b    []byte
	}{{"key", r.Key, r.KeyB64}, {"value", r.Value, r.ValueB64}} {
		b := f.b
		if f.raw != nil {
			if f.b != nil {
				return nil, fmt.Errorf("%s and %s_b64 are both set", f.name, f.name)
			}
			var err error
			if b, err = jsonRecordBytes(f.raw); err != nil {
				return nil, fmt.Errorf("%s: %w", f.name, err)
			}
		}
		if b == nil {
			dst = append(dst, 0)
			continue
		}
		dst = binary.AppendUvarint(dst, uint64(len(b))+1)
		dst = append(dst, b...)
	}
	dst = binary.AppendUvarint(dst, uint64(len(r.Headers)))
	names := slices.Sorted(maps.Keys(r.Headers))
	for _, k := range names {
		v := r.Headers[k]
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return nil, fmt.Errorf("header %q: %q is not valid UTF-8", k, v)
		}
		dst = appendStr(dst, k)
		dst = appendStr(dst, v)
	}
	return dst, nil
}

func appendStr(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// jsonRecordBytes is what the Kafka sink makes of a key or value given as
// a JSON string or null: the string's bytes, or nil. Other JSON values are
// refused rather than guessed at: the sink stores their JSON text as the
// body carried it, and Client.Write's encoding/json escapes <, > and & in
// it, so no conversion here would be exact.
func jsonRecordBytes(raw json.RawMessage) ([]byte, error) {
	raw = bytes.TrimSpace(raw)
	switch {
	case string(raw) == "null":
		return nil, nil
	case len(raw) > 0 && raw[0] == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("invalid JSON string: %w", err)
		}
		return []byte(s), nil
	}
	return nil, fmt.Errorf("%.40q is not a JSON string or null: give its bytes in the _b64 field", raw)
}
