package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"reflect"
	"strings"
	"sync"

	"github.com/txsink/txsink/twopc"
)

// Request bodies are read whole into a pooled buffer before decoding: the
// limit is checked once, line numbers come from offsets, and the decoded
// records never alias the buffer (encoding/json copies strings, RawMessage
// and base64 bytes), so it can be reused as soon as the call returns.
//
// A few buffers of common size are kept in a free list besides the
// sync.Pool: the pool is emptied by every other GC, and a sidecar under
// write load collects several times a second (the records of each call are
// fresh memory), so pooled buffers were mostly regrown from scratch.
var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

var bufFree = make(chan *bytes.Buffer, maxFreeBufs)

// maxPooledBuf keeps an occasional huge body from pinning its buffer;
// maxFreeBuf and maxFreeBufs bound what the free list pins (8 MiB).
const (
	maxPooledBuf = 4 << 20
	maxFreeBuf   = 1 << 20
	maxFreeBufs  = 8
)

func getBuf() *bytes.Buffer {
	select {
	case b := <-bufFree:
		return b
	default:
		return bufPool.Get().(*bytes.Buffer)
	}
}

// maxPreGrow bounds what readBody allocates on the word of Content-Length.
const maxPreGrow = 256 << 10

func putBuf(b *bytes.Buffer) {
	if b.Cap() > maxPooledBuf {
		return
	}
	b.Reset()
	if b.Cap() <= maxFreeBuf {
		select {
		case bufFree <- b:
			return
		default:
		}
	}
	bufPool.Put(b)
}

// readBody reads r's body, at most limit bytes, into a pooled buffer that
// the caller returns with putBuf.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) (*bytes.Buffer, error) {
	if r.ContentLength > limit {
		return nil, tooLarge(limit)
	}
	buf := getBuf()
	buf.Reset()
	if r.ContentLength > 0 {
		// ReadFrom wants MinRead spare bytes before it sees EOF. Never
		// more than a little from the declared length: a client may
		// declare 32 MiB and send nothing, and the buffer grows as bytes
		// arrive anyway.
		buf.Grow(int(min(r.ContentLength, maxPreGrow)) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit)); err != nil {
		putBuf(buf)
		if e, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, tooLarge(e.Limit)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, badRequest(CodeMalformedBody, "the body did not arrive within the read timeout")
		}
		return nil, badRequest(CodeMalformedBody, "reading the body: "+err.Error())
	}
	return buf, nil
}

// mediaType is the Content-Type without parameters, lower case.
func mediaType(r *http.Request) string {
	ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";")
	return strings.ToLower(strings.TrimSpace(ct))
}

// isJSONType accepts JSON and, for the small JSON-object bodies only, the
// form type that `curl -d` sends by default: those bodies are one JSON
// object, which curl passes through unchanged. Records bodies do not get
// this leniency (see isRecordsType).
func isJSONType(mt string) bool {
	return mt == "" || mt == "application/json" || mt == "application/x-www-form-urlencoded" ||
		(strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))
}

// isRecordsType: not the form type, because `curl -d @file` strips the
// newlines of a file and would merge NDJSON lines; the 415 says what to send.
// BinaryRecordsType (binary.go) is the compact alternative to JSON.
func isRecordsType(mt string) bool {
	switch mt {
	case "", "application/json", "application/x-ndjson", "application/ndjson",
		"application/jsonl", "application/x-jsonlines", "application/jsonlines", BinaryRecordsType:
		return true
	}
	return false
}

func unsupported(mt, want string) *apiErr {
	return &apiErr{Status: http.StatusUnsupportedMediaType, Code: CodeUnsupportedMediaType,
		Detail: fmt.Sprintf("Content-Type %q: send %s", mt, want)}
}

// decodeJSONBody decodes an optional small JSON body into v, rejecting
// unknown fields and trailing data. It reports whether there was a body.
func decodeJSONBody(w http.ResponseWriter, r *http.Request, limit int64, v any) (bool, error) {
	buf, err := readBody(w, r, limit)
	if err != nil {
		return false, err
	}
	defer putBuf(buf)
	body := buf.Bytes()
	start := skipSpace(body, 0)
	if start == len(body) {
		return false, nil
	}
	if mt := mediaType(r); !isJSONType(mt) {
		return true, unsupported(mt, "application/json")
	}
	if body[start] != '{' {
		return true, badRequest(CodeMalformedBody, "the body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return true, badRequest(CodeMalformedBody, describe(err))
	}
	if end := skipSpace(body, int(dec.InputOffset())); end != len(body) {
		return true, badRequest(CodeMalformedBody, fmt.Sprintf("unexpected data after the JSON object at offset %d", end))
	}
	return true, nil
}

// errTooManyRecords is wrapped by decodeRecords when max is exceeded.
var errTooManyRecords = errors.New("too many records")

// decodeBody decodes a records body of media type mt (isRecordsType).
func decodeBody(mt string, body []byte, max int) ([]*twopc.Record, error) {
	if mt == BinaryRecordsType {
		return decodeBinary(body, max)
	}
	return decodeRecords(body, max)
}

// decodeRecords decodes a records body: a JSON array of objects, or NDJSON
// (one object a line, blank lines ignored). At most max records are
// accepted. Errors name the line (1-based) and what is wrong with it.
func decodeRecords(body []byte, max int) ([]*twopc.Record, error) {
	start := skipSpace(body, 0)
	if start < len(body) && body[start] == '[' {
		return decodeArray(body, max)
	}
	return decodeLines(body, max)
}

func decodeLines(body []byte, max int) ([]*twopc.Record, error) {
	// One Record slab and one copy of the body instead of allocations per
	// record and field; the line count bounds the records.
	n := bytes.Count(body, []byte{'\n'}) + 1
	slab := make([]twopc.Record, 0, min(n, max+1))
	d, body := ownedDecoder(body)
	for line, rest, ln := []byte(nil), body, 0; len(rest) > 0; {
		ln++
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			line, rest = rest, nil
		}
		start := skipSpace(line, 0)
		if start == len(line) {
			continue
		}
		if line[start] != '{' {
			return nil, fmt.Errorf("line %d: a record must be a JSON object", ln)
		}
		if len(slab) == max {
			return nil, fmt.Errorf("%w: more than %d records in one call", errTooManyRecords, max)
		}
		// Within capacity (the line count bounds it) and still zero from
		// make: reslicing skips append's typed zeroing of ~200 bytes,
		// which costs write barriers while the GC runs.
		slab = slab[:len(slab)+1]
		r := &slab[len(slab)-1]
		if d.record(line[start:], r) {
			continue
		}
		// Anything the fast path does not take (escapes, unusual keys,
		// errors) goes through encoding/json, which also words the error.
		*r = twopc.Record{}
		if err := decodeLine(line[start:], r); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) && len(rest) > 0 {
				return nil, fmt.Errorf("line %d: %s (a record must be on one line)", ln, describe(err))
			}
			return nil, fmt.Errorf("line %d: %s", ln, describe(err))
		}
	}
	return pointers(slab), nil
}

// errTrailing reports data after a line's record.
var errTrailing = errors.New("unexpected data after the record")

// decodeLine decodes one record with encoding/json: the reference for what
// fastDecoder accepts.
func decodeLine(line []byte, r *twopc.Record) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(r); err != nil {
		return err
	}
	if skipSpace(line, int(dec.InputOffset())) != len(line) {
		return errTrailing
	}
	return nil
}

// decodeArray takes the fast path for well-formed arrays and leaves every
// problem (and its wording) to decodeArrayJSON.
func decodeArray(body []byte, max int) ([]*twopc.Record, error) {
	slab := make([]twopc.Record, 0, min(bytes.Count(body, []byte{'{'}), max+1))
	d, body := ownedDecoder(body)
	i := skipSpace(body, skipSpace(body, 0)+1) // after '['
	if i < len(body) && body[i] == ']' {
		if skipSpace(body, i+1) != len(body) {
			return decodeArrayJSON(body, max)
		}
		return []*twopc.Record{}, nil
	}
	for {
		if i >= len(body) || body[i] != '{' || len(slab) == max {
			return decodeArrayJSON(body, max)
		}
		end, ok := skipValue(body, i, 0)
		if !ok {
			return decodeArrayJSON(body, max)
		}
		slab = slab[:len(slab)+1] // within capacity and zero, as in decodeLines
		r := &slab[len(slab)-1]
		if !d.record(body[i:end], r) {
			*r = twopc.Record{}
			if decodeLine(body[i:end], r) != nil {
				return decodeArrayJSON(body, max)
			}
		}
		i = skipSpace(body, end)
		if i >= len(body) {
			return decodeArrayJSON(body, max)
		}
		if body[i] == ']' {
			if skipSpace(body, i+1) != len(body) {
				return decodeArrayJSON(body, max)
			}
			return pointers(slab), nil
		}
		if body[i] != ',' {
			return decodeArrayJSON(body, max)
		}
		i = skipSpace(body, i+1)
	}
}

// decodeArrayJSON decodes an array with encoding/json, naming the record
// and line of a problem.
func decodeArrayJSON(body []byte, max int) ([]*twopc.Record, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if _, err := dec.Token(); err != nil { // '['
		return nil, fmt.Errorf("line 1: %s", describe(err))
	}
	// '{' counts bound the records (nested objects only over-count).
	slab := make([]twopc.Record, 0, min(bytes.Count(body, []byte{'{'}), max+1))
	line, counted := 1, 0
	for i := 0; ; i++ {
		start := skipSpace(body, int(dec.InputOffset()))
		if start < len(body) && body[start] == ',' {
			start = skipSpace(body, start+1)
		}
		if start == len(body) {
			return nil, fmt.Errorf("line %d: unexpected end of JSON input", line+bytes.Count(body[counted:], []byte{'\n'}))
		}
		line += bytes.Count(body[counted:min(start, len(body))], []byte{'\n'})
		counted = min(start, len(body))
		if !dec.More() {
			break
		}
		if body[start] != '{' {
			return nil, fmt.Errorf("record %d (line %d): a record must be a JSON object", i+1, line)
		}
		if len(slab) == max {
			return nil, fmt.Errorf("%w: more than %d records in one call", errTooManyRecords, max)
		}
		slab = append(slab, twopc.Record{})
		if err := dec.Decode(&slab[len(slab)-1]); err != nil {
			return nil, fmt.Errorf("record %d (line %d): %s", i+1, line, describe(err))
		}
	}
	if _, err := dec.Token(); err != nil { // ']'
		return nil, fmt.Errorf("line %d: %s", line, describe(err))
	}
	if end := skipSpace(body, int(dec.InputOffset())); end != len(body) {
		line += bytes.Count(body[counted:end], []byte{'\n'})
		return nil, fmt.Errorf("line %d: unexpected data after the array", line)
	}
	return pointers(slab), nil
}

// pointers returns the decoded records of a body. Every decoder ends here,
// and each has checked the JSON of every key, value and arg it kept (the
// fast path in skipValue, the fallback in encoding/json, which checks a
// json.RawMessage with the scanner json.Valid uses; binary records have no
// JSON fields), so the records are marked JSONChecked and the sinks do not
// scan those values again.
func pointers(slab []twopc.Record) []*twopc.Record {
	recs := make([]*twopc.Record, len(slab))
	for i := range slab {
		slab[i].JSONChecked = true
		recs[i] = &slab[i]
	}
	return recs
}

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\r', '\n':
			i++
		default:
			return i
		}
	}
	return i
}

// describe says what is wrong in a decoding error, in JSON's terms rather
// than Go's.
func describe(err error) string {
	if e, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		if e.Field == "" {
			return fmt.Sprintf("got a JSON %s, want %s", e.Value, jsonKind(e.Type))
		}
		return fmt.Sprintf("field %q: got a JSON %s, want %s", e.Field, e.Value, jsonKind(e.Type))
	}
	if e, ok := errors.AsType[base64.CorruptInputError](err); ok {
		return "invalid base64: " + e.Error()
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return "unexpected end of JSON input"
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

func jsonKind(t reflect.Type) string {
	if t == nil {
		return "another type"
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer (" + t.Kind().String() + ")"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			return "a base64 string"
		}
		return "an array"
	}
	return t.String()
}
