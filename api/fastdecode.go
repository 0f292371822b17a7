package api

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"unicode/utf8"

	"github.com/txsink/txsink/twopc"
)

// fastDecoder decodes the common shape of a record line in one pass, with
// no allocation per field: raw values alias the decoder's private copy of
// the body (ownedDecoder) or are carved out of one arena, base64 bytes
// always the latter (all with capped capacity, so a sink appending to one
// cannot overwrite the next), and sink, topic and statement names are
// interned.
//
// It accepts a subset of what encoding/json accepts and must produce exactly
// what encoding/json produces for it: keys spelled exactly as the JSON tags,
// each at most once, plain strings (no escapes, valid UTF-8) for the string
// fields. On anything else it returns false and the caller decodes the line
// with encoding/json, which is the reference (FuzzFastDecoder checks both
// agree).
type fastDecoder struct {
	// owned: the bytes being decoded are a private copy that the records
	// may keep (ownedDecoder), so carve aliases them instead of copying.
	owned     bool
	arena     []byte            // capacity bounds every copy: the body's length
	arenaSize int               // owned: the arena's capacity, allocated at the first base64 value
	names     map[string]string // interned sink/topic/stmt/header names
	// The last sink, topic and statement: records of a call mostly repeat
	// them, and a comparison is cheaper than hashing for the map.
	sink, topic, stmt string
}

// maxInterned bounds the names map of one call.
const maxInterned = 256

// Bits of the fields seen in one record.
const (
	fSink = 1 << iota
	fTopic
	fKey
	fValue
	fKeyB64
	fValueB64
	fHeaders
	fPartition
	fStmt
	fArgs
)

// maxDepth bounds nesting in raw values; deeper goes to encoding/json.
const maxDepth = 64

func (d *fastDecoder) record(b []byte, r *twopc.Record) bool {
	i := 1 // b[0] == '{'
	var seen int
	i = skipSpace(b, i)
	if i < len(b) && b[i] == '}' {
		return skipSpace(b, i+1) == len(b)
	}
	for {
		ks, ke, ok := fieldName(b, i)
		if !ok {
			return false
		}
		i = skipSpace(b, ke+1)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		i = skipSpace(b, i+1)
		if i >= len(b) {
			return false
		}
		var bit int
		switch string(b[ks:ke]) {
		case "sink":
			bit = fSink
			r.Sink, i, ok = d.name(b, i, &d.sink)
		case "topic":
			bit = fTopic
			r.Topic, i, ok = d.name(b, i, &d.topic)
		case "stmt":
			bit = fStmt
			r.Stmt, i, ok = d.name(b, i, &d.stmt)
		case "key":
			bit = fKey
			r.Key, r.KeyPlain, i, ok = d.keyOrValue(b, i)
		case "value":
			bit = fValue
			r.Value, r.ValuePlain, i, ok = d.keyOrValue(b, i)
		case "key_b64":
			bit = fKeyB64
			r.KeyB64, i, ok = d.base64(b, i)
		case "value_b64":
			bit = fValueB64
			r.ValueB64, i, ok = d.base64(b, i)
		case "headers":
			bit = fHeaders
			r.Headers, i, ok = d.headers(b, i)
		case "partition":
			bit = fPartition
			r.Partition, i, ok = partition(b, i)
		case "args":
			bit = fArgs
			r.Args, i, ok = d.args(b, i)
		default:
			return false
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
		i = skipSpace(b, i)
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
			continue
		case '}':
			return skipSpace(b, i+1) == len(b)
		}
		return false
	}
}

// isNull reports a null literal at b[i:]; encoding/json leaves a non-raw
// field untouched on null.
func isNull(b []byte, i int) bool {
	return len(b)-i >= 4 && string(b[i:i+4]) == "null"
}

// plainString finds the string starting at b[i] ('"'): its content is
// b[start:end] and b[end] is the closing quote. It fails on escapes, control
// characters and invalid UTF-8, where decoding would change the bytes.
func plainString(b []byte, i int) (start, end int, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return 0, 0, false
	}
	ascii := true
	j := i + 1
	for ; len(b)-j >= 8; j += 8 {
		if special(binary.LittleEndian.Uint64(b[j:]), true) {
			break
		}
	}
	for ; j < len(b); j++ {
		c := b[j]
		switch {
		case c == '"':
			if !ascii && !utf8.Valid(b[i+1:j]) {
				return 0, 0, false
			}
			return i + 1, j, true
		case c == '\\' || c < 0x20:
			return 0, 0, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return 0, 0, false
}

// fieldName finds a record's key at b[i] ('"') like plainString, but only
// as far as the longest field name: a key the fast path takes is spelled
// exactly as one of them (ASCII, no escapes), so the bytes up to the first
// quote either are one of them or send the record to encoding/json, and
// need no scan for escapes or UTF-8.
func fieldName(b []byte, i int) (start, end int, ok bool) {
	const longest = len("value_b64")
	if i >= len(b) || b[i] != '"' {
		return 0, 0, false
	}
	// A loop, not bytes.IndexByte: for a handful of bytes its call costs
	// more than the search.
	for j, end := i+1, min(len(b), i+2+longest); j < end; j++ {
		if b[j] == '"' {
			return i + 1, j, true
		}
	}
	return 0, 0, false
}

func (d *fastDecoder) name(b []byte, i int, last *string) (string, int, bool) {
	if isNull(b, i) {
		return "", i + 4, true
	}
	// The same name as the last record's (the common case) needs no scan:
	// last came out of plainString, so the same bytes are as plain.
	if l := len(*last); l > 0 && len(b)-i > l+1 && b[i] == '"' && b[i+1+l] == '"' && string(b[i+1:i+1+l]) == *last {
		return *last, i + 2 + l, true
	}
	s, e, ok := plainString(b, i)
	if !ok {
		return "", 0, false
	}
	if string(b[s:e]) != *last {
		*last = d.intern(b[s:e])
	}
	return *last, e + 1, true
}

func (d *fastDecoder) intern(b []byte) string {
	if s, ok := d.names[string(b)]; ok {
		return s
	}
	s := string(b)
	if d.names == nil {
		d.names = make(map[string]string, 8)
	}
	if len(d.names) < maxInterned {
		d.names[s] = s
	}
	return s
}

// ownedDecoder returns a decoder for a JSON body and the private copy of
// body it must decode: raw keys, values and args then alias the copy
// instead of being copied one by one into an arena. The copy is one
// allocation that the runtime need not zero (it is overwritten whole),
// where the arena was zeroed and then filled value by value; the records
// own it, while the caller's body buffer is pooled and reused after the
// call.
func ownedDecoder(body []byte) (fastDecoder, []byte) {
	return fastDecoder{owned: true, arenaSize: len(body)}, bytes.Clone(body)
}

// carve returns b, a value of the body being decoded, as the records keep
// it: b itself when the decoder owns the body, else a copy in the arena;
// capacity capped either way.
func (d *fastDecoder) carve(b []byte) []byte {
	if d.owned {
		return b[:len(b):len(b)]
	}
	n := len(d.arena)
	if cap(d.arena)-n < len(b) { // cannot happen: copies never exceed the body
		return append([]byte(nil), b...)
	}
	d.arena = append(d.arena, b...)
	return d.arena[n : n+len(b) : n+len(b)]
}

// raw copies one JSON value verbatim, as json.RawMessage does.
func (d *fastDecoder) raw(b []byte, i int) (json.RawMessage, int, bool) {
	e, ok := skipValue(b, i, 0)
	if !ok {
		return nil, 0, false
	}
	return d.carve(b[i:e]), e, true
}

// keyOrValue copies a key or value like raw and reports whether it is a
// plain string (Record.KeyPlain, ValuePlain): the Kafka sink then takes the
// bytes between the quotes without scanning them a second time. The check
// replaces raw's scan of the string, so it costs nothing extra.
func (d *fastDecoder) keyOrValue(b []byte, i int) (json.RawMessage, bool, int, bool) {
	if i < len(b) && b[i] == '"' {
		if _, e, ok := plainString(b, i); ok {
			return d.carve(b[i : e+1]), true, e + 1, true
		}
	}
	v, e, ok := d.raw(b, i)
	return v, false, e, ok
}

func (d *fastDecoder) base64(b []byte, i int) ([]byte, int, bool) {
	if isNull(b, i) {
		return nil, i + 4, true
	}
	s, e, ok := plainString(b, i)
	if !ok {
		return nil, 0, false
	}
	src := b[s:e]
	if d.arena == nil && d.arenaSize > 0 {
		d.arena = make([]byte, 0, d.arenaSize)
	}
	n := len(d.arena)
	want := base64.StdEncoding.DecodedLen(len(src))
	if cap(d.arena)-n < want {
		return nil, 0, false
	}
	dst := d.arena[n : n+want]
	m, err := base64.StdEncoding.Decode(dst, src)
	if err != nil {
		return nil, 0, false
	}
	d.arena = d.arena[:n+m]
	return dst[:m:m], e + 1, true
}

func (d *fastDecoder) headers(b []byte, i int) (map[string]string, int, bool) {
	if isNull(b, i) {
		return nil, i + 4, true
	}
	if b[i] != '{' {
		return nil, 0, false
	}
	h := map[string]string{}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return h, i + 1, true
	}
	for {
		ks, ke, ok := plainString(b, i)
		if !ok {
			return nil, 0, false
		}
		i = skipSpace(b, ke+1)
		if i >= len(b) || b[i] != ':' {
			return nil, 0, false
		}
		i = skipSpace(b, i+1)
		vs, ve, ok := plainString(b, i)
		if !ok {
			return nil, 0, false
		}
		h[d.intern(b[ks:ke])] = string(b[vs:ve])
		i = skipSpace(b, ve+1)
		if i >= len(b) {
			return nil, 0, false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
			continue
		case '}':
			return h, i + 1, true
		}
		return nil, 0, false
	}
}

// partition takes an integer in int32's range; anything else (fractions,
// exponents, overflow) is left to encoding/json.
func partition(b []byte, i int) (*int32, int, bool) {
	if isNull(b, i) {
		return nil, i + 4, true
	}
	e, ok := skipNumber(b, i)
	if !ok {
		return nil, 0, false
	}
	j, neg := i, false
	if b[j] == '-' {
		neg, j = true, j+1
	}
	var v int64
	for ; j < e; j++ {
		c := b[j]
		if c < '0' || c > '9' {
			return nil, 0, false
		}
		v = v*10 + int64(c-'0')
		if v > 1<<31 {
			return nil, 0, false
		}
	}
	if neg {
		v = -v
	}
	if v > 1<<31-1 || v < -(1<<31) {
		return nil, 0, false
	}
	p := int32(v)
	return &p, e, true
}

func (d *fastDecoder) args(b []byte, i int) ([]json.RawMessage, int, bool) {
	if isNull(b, i) {
		return nil, i + 4, true
	}
	if b[i] != '[' {
		return nil, 0, false
	}
	out := []json.RawMessage{}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return out, i + 1, true
	}
	for {
		v, e, ok := d.raw(b, i)
		if !ok {
			return nil, 0, false
		}
		out = append(out, v)
		i = skipSpace(b, e)
		if i >= len(b) {
			return nil, 0, false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
			continue
		case ']':
			return out, i + 1, true
		}
		return nil, 0, false
	}
}

// skipValue returns the end of the JSON value at b[i], checking its syntax
// as encoding/json's scanner does (it does not check UTF-8 either).
func skipValue(b []byte, i, depth int) (int, bool) {
	if i >= len(b) || depth > maxDepth {
		return 0, false
	}
	switch c := b[i]; {
	case c == '"':
		return skipString(b, i)
	case c == '{':
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == '}' {
			return i + 1, true
		}
		for {
			e, ok := skipString(b, i)
			if !ok {
				return 0, false
			}
			i = skipSpace(b, e)
			if i >= len(b) || b[i] != ':' {
				return 0, false
			}
			if i, ok = skipValue(b, skipSpace(b, i+1), depth+1); !ok {
				return 0, false
			}
			i = skipSpace(b, i)
			if i >= len(b) {
				return 0, false
			}
			switch b[i] {
			case ',':
				i = skipSpace(b, i+1)
				continue
			case '}':
				return i + 1, true
			}
			return 0, false
		}
	case c == '[':
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == ']' {
			return i + 1, true
		}
		for {
			var ok bool
			if i, ok = skipValue(b, i, depth+1); !ok {
				return 0, false
			}
			i = skipSpace(b, i)
			if i >= len(b) {
				return 0, false
			}
			switch b[i] {
			case ',':
				i = skipSpace(b, i+1)
				continue
			case ']':
				return i + 1, true
			}
			return 0, false
		}
	case c == '-' || (c >= '0' && c <= '9'):
		return skipNumber(b, i)
	case c == 't':
		return literal(b, i, "true")
	case c == 'f':
		return literal(b, i, "false")
	case c == 'n':
		return literal(b, i, "null")
	}
	return 0, false
}

func literal(b []byte, i int, lit string) (int, bool) {
	if len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit {
		return i + len(lit), true
	}
	return 0, false
}

// skipString returns the end of the string at b[i], after its closing quote.
func skipString(b []byte, i int) (int, bool) {
	if i >= len(b) || b[i] != '"' {
		return 0, false
	}
	j := i + 1
	for ; len(b)-j >= 8; j += 8 {
		if special(binary.LittleEndian.Uint64(b[j:]), false) {
			break
		}
	}
	for ; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return j + 1, true
		case c < 0x20:
			return 0, false
		case c == '\\':
			j++
			if j >= len(b) {
				return 0, false
			}
			switch b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(b)-j < 5 || !isHex(b[j+1]) || !isHex(b[j+2]) || !isHex(b[j+3]) || !isHex(b[j+4]) {
					return 0, false
				}
				j += 4
			default:
				return 0, false
			}
		}
	}
	return 0, false
}

const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// special reports whether any byte of w may end a plain run of string
// bytes: below 0x20, a quote, a backslash, and with nonASCII any byte from
// 0x80. These are the classic "has a byte less than n / equal to n" bit
// tricks: a false positive is possible next to a true one, a false negative
// never, so a word it passes needs no byte-by-byte look. Strings are most of
// a records body, and this lets the scans take them eight bytes at a time.
func special(w uint64, nonASCII bool) bool {
	less := (w - ones*0x20) &^ w
	quote := w ^ (ones * '"')
	bslash := w ^ (ones * '\\')
	m := less | ((quote - ones) &^ quote) | ((bslash - ones) &^ bslash)
	if nonASCII {
		m |= w
	}
	return m&highs != 0
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// skipNumber returns the end of the number at b[i] (JSON's grammar).
func skipNumber(b []byte, i int) (int, bool) {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i++; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		}
	default:
		return 0, false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return 0, false
		}
		for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return 0, false
		}
		for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		}
	}
	return i, true
}
