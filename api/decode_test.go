package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/txsink/txsink/twopc"
)

func TestDecodeRecords(t *testing.T) {
	tests := []struct {
		name, body string
		want       []string // values, as raw JSON
		err        string   // substring of the error
	}{
		{"empty", "", nil, ""},
		{"blank lines only", "\n \r\n\t\n", nil, ""},
		{"ndjson", `{"value":"a"}` + "\n" + `{"value":1}`, []string{`"a"`, `1`}, ""},
		{"crlf and blank lines", "\r\n" + `{"value":"a"}` + "\r\n\r\n" + `  {"value":"b"}  ` + "\r\n", []string{`"a"`, `"b"`}, ""},
		{"array", ` [ {"value":"a"} ,` + "\n" + `{"value":{"x":[1,2]}} ] `, []string{`"a"`, `{"x":[1,2]}`}, ""},
		{"empty array", `[]`, nil, ""},
		{"every field", `{"sink":"s","topic":"t","key":"k","value":"v","key_b64":"aw==","value_b64":"dg==","headers":{"a":"b"},"partition":2,"stmt":"x","args":[1,"a",null]}`, []string{`"v"`}, ""},
		{"syntax error line 2", `{"value":"a"}` + "\n" + `{"value":x}`, nil, "line 2: invalid character 'x'"},
		{"truncated", `{"value":"a"}` + "\n\n" + `{"value":"b"`, nil, "line 3: unexpected end of JSON input"},
		{"wrong type", `{"partition":"1"}`, nil, `line 1: field "partition": got a JSON string, want an integer (int32)`},
		{"wrong args type", `{"args":{}}`, nil, `field "args": got a JSON object, want an array`},
		{"unknown field", "\n" + `{"valeu":"a"}`, nil, `line 2: unknown field "valeu"`},
		{"null line", `null`, nil, "line 1: a record must be a JSON object"},
		{"number line", `{"value":1}` + "\n" + `42`, nil, "line 2: a record must be a JSON object"},
		{"two on a line", `{"value":1}{"value":2}`, nil, "line 1: unexpected data after the record"},
		{"split over lines", "{\n\"value\":1}", nil, "a record must be on one line"},
		{"array trailing data", `[{"value":1}] {}`, nil, "line 1: unexpected data after the array"},
		{"array bad element", "[\n" + `{"value":1},` + "\n" + `{"value":2,"q":1}]`, nil, `record 2 (line 3): unknown field "q"`},
		{"array of arrays", `[[1]]`, nil, "record 1 (line 1): a record must be a JSON object"},
		{"array unclosed", `[{"value":1},`, nil, "unexpected end of JSON input"},
		{"too many", strings.Repeat(`{"value":1}`+"\n", 4), nil, "more than 3 records"},
		{"too many in array", `[{},{},{},{}]`, nil, "more than 3 records"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := decodeRecords([]byte(tc.body), 3)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v", err)
			}
			var got []string
			for _, r := range recs {
				got = append(got, string(r.Value))
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got values %q, want %q", got, tc.want)
			}
		})
	}
}

// The records must not alias the body: the buffer goes back to the pool.
func TestDecodeRecordsCopies(t *testing.T) {
	body := []byte(`{"key":"k","value":{"a":1},"value_b64":"dg==","args":["x"]}`)
	recs, err := decodeRecords(body, 10)
	if err != nil {
		t.Fatal(err)
	}
	want := *recs[0]
	wantKey, wantVal, wantArg := string(want.Key), string(want.Value), string(want.Args[0])
	for i := range body {
		body[i] = 'X'
	}
	r := recs[0]
	if string(r.Key) != wantKey || string(r.Value) != wantVal || string(r.Args[0]) != wantArg || string(r.ValueB64) != "v" {
		t.Fatalf("records changed with the body: got key %s value %s arg %s", r.Key, r.Value, r.Args[0])
	}
}

// benchBody is 1,000 records of about 100 bytes: the sidecar's typical call.
func benchBody(array bool) []byte {
	var b bytes.Buffer
	if array {
		b.WriteByte('[')
	}
	for i := range 1000 {
		if array && i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"sink":"events","topic":"pv","key":"user-%06d","value":"page=/articles/%06d&ref=search&t=1700000000"}`, i, i)
		if !array {
			b.WriteByte('\n')
		}
	}
	if array {
		b.WriteByte(']')
	}
	return b.Bytes()
}

// cpuMeter reports, when the returned func is called, the process's CPU
// time (user+system of every thread, so the GC's share too) and the
// allocations per record. On a busy machine CPU time moves far less than
// ns/op, which counts time the benchmark waited for a core.
func cpuMeter(b *testing.B, records int) func() {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	mallocs := ms.Mallocs
	start := cpuTime()
	return func() {
		cpu := cpuTime() - start
		runtime.ReadMemStats(&ms)
		n := float64(b.N) * float64(records)
		b.ReportMetric(float64(cpu.Nanoseconds())/n, "cpu-ns/record")
		b.ReportMetric(float64(ms.Mallocs-mallocs)/n, "allocs/record")
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkDecodeNDJSON(b *testing.B) {
	body := benchBody(false)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	report := cpuMeter(b, 1000)
	for b.Loop() {
		if _, err := decodeRecords(body, DefaultMaxRecordsPerCall); err != nil {
			b.Fatal(err)
		}
	}
	report()
}

// benchBinary is benchBody's records as a BinaryRecordsType body: the
// same sink, topic, keys and values (the JSON strings' bytes).
func benchBinary(b *testing.B) []byte {
	recs := make([]*twopc.Record, 1000)
	for i := range recs {
		recs[i] = &twopc.Record{Sink: "events", Topic: "pv", KeyB64: fmt.Appendf(nil, "user-%06d", i),
			ValueB64: fmt.Appendf(nil, "page=/articles/%06d&ref=search&t=1700000000", i)}
	}
	body, err := AppendBinaryRecords(nil, recs)
	if err != nil {
		b.Fatal(err)
	}
	return body
}

func BenchmarkDecodeBinary(b *testing.B) {
	body := benchBinary(b)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	report := cpuMeter(b, 1000)
	for b.Loop() {
		if _, err := decodeBinary(body, DefaultMaxRecordsPerCall); err != nil {
			b.Fatal(err)
		}
	}
	report()
}

func BenchmarkDecodeArray(b *testing.B) {
	body := benchBody(true)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	report := cpuMeter(b, 1000)
	for b.Loop() {
		if _, err := decodeRecords(body, DefaultMaxRecordsPerCall); err != nil {
			b.Fatal(err)
		}
	}
	report()
}

// BenchmarkDecodeNaive is the baseline: one decoder per line, one
// allocation per record.
func BenchmarkDecodeNaive(b *testing.B) {
	body := benchBody(false)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		var recs []*twopc.Record
		for line := range bytes.Lines(body) {
			dec := json.NewDecoder(bytes.NewReader(line))
			dec.DisallowUnknownFields()
			r := new(twopc.Record)
			if err := dec.Decode(r); err != nil {
				b.Fatal(err)
			}
			recs = append(recs, r)
		}
	}
}

// FuzzFastDecoder checks that whatever the fast path accepts, encoding/json
// accepts too and decodes to the same record.
func FuzzFastDecoder(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"sink":"events","topic":"pv","key":"k","value":"v"}`,
		`{"value":{"a":[1,2.5e3,-0,true,false,null,"x\u00e9\n"]},"key":null}`,
		`{"key_b64":"aGVsbG8=","value_b64":"","headers":{"a":"b","ü":"ß"},"partition":-2147483648}`,
		`{"partition":2147483648}`, `{"partition":1.0}`, `{"stmt":"s","args":[1,"a",null,{"x":1}]}`,
		`{"sink":null,"args":null,"headers":null,"key_b64":null}`, `{"Sink":"a"}`, `{"sink":"a","sink":"b"}`,
		`{"value":"a\"b"}`, `{"value":01}`, `{"value":"\x01"}`, `{"sink":"\xff"}`, `{"value":"\xff"}`,
		`{"args":[]}`, `{"headers":{}}`, `{"key_b64":"!!"}`, `{"value":[[[[]]]]}`, `{"value":1}  `, `{"value":1} x`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		// Arrays: the fast path and encoding/json agree on the outcome.
		arr := append(append([]byte("[ "), line...), ",{}]"...)
		got, err := decodeArray(arr, 10)
		want, werr := decodeArrayJSON(arr, 10)
		for _, r := range got {
			r.KeyPlain, r.ValuePlain = false, false // encoding/json never sets them; the single-line check below tests them
		}
		if (err == nil) != (werr == nil) || (err == nil && !reflect.DeepEqual(got, want)) {
			t.Fatalf("array %q: fast path got %v, %v; encoding/json %v, %v", arr, got, err, want, werr)
		}
		// What the decoders mark JSONChecked, the sinks no longer scan:
		// it must be well-formed.
		for _, r := range got {
			if !r.JSONChecked {
				t.Fatalf("array %q: a decoded record is not marked JSONChecked", arr)
			}
			for _, v := range append([]json.RawMessage{r.Key, r.Value}, r.Args...) {
				if v != nil && !json.Valid(v) {
					t.Fatalf("array %q: decoded %q, marked JSONChecked, is not valid JSON", arr, v)
				}
			}
		}
		if len(line) == 0 || line[0] != '{' || bytes.IndexByte(line, '\n') >= 0 {
			return
		}
		d := fastDecoder{arena: make([]byte, 0, len(line))}
		var fast twopc.Record
		if !d.record(line, &fast) {
			return
		}
		var ref twopc.Record
		if err := decodeLine(line, &ref); err != nil {
			t.Fatalf("fast path accepted %q, encoding/json: %v", line, err)
		}
		// What the fast path marks plain, the Kafka sink takes between the
		// quotes unscanned: that must be the string encoding/json decodes.
		for _, f := range []struct {
			raw   json.RawMessage
			plain bool
		}{{fast.Key, fast.KeyPlain}, {fast.Value, fast.ValuePlain}} {
			var s string
			if f.plain && (json.Unmarshal(f.raw, &s) != nil || len(f.raw) < 2 || string(f.raw[1:len(f.raw)-1]) != s) {
				t.Fatalf("%q: %q is marked plain but decodes to %q", line, f.raw, s)
			}
		}
		fast.KeyPlain, fast.ValuePlain = false, false
		if !reflect.DeepEqual(fast, ref) {
			t.Fatalf("%q: fast path got %+v, encoding/json %+v", line, fast, ref)
		}
	})
}
