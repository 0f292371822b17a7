package api

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/txsink/txsink/twopc"
)

// bin builds binary bodies by hand, including wrong ones, independently of
// AppendBinaryRecords.
type bin []byte

func (b bin) uv(v uint64) bin     { return binary.AppendUvarint(b, v) }
func (b bin) raw(s string) bin    { return append(b, s...) }
func (b bin) str(s string) bin    { return b.uv(uint64(len(s))).raw(s) }
func (b bin) opt(s string) bin    { return b.uv(uint64(len(s)) + 1).raw(s) }
func (b bin) empty() bin          { return append(b, 0, 0, 0, 0, 0, 0) } // a record of nothing
func magic() bin                  { return bin(binaryMagic) }
func (b bin) rec(v string) bin    { return b.str("events").str("").uv(0).uv(0).opt(v).uv(0) }
func (b bin) head(n int) bin      { return b[:n] }
func (b bin) plus(o bin) bin      { return append(append(bin{}, b...), o...) }
func (b bin) hdr(k, v string) bin { return b.str(k).str(v) }

func TestDecodeBinaryErrors(t *testing.T) {
	one := magic().rec("a")
	tests := []struct {
		name string
		body bin
		err  string // substring of the error
	}{
		{"empty body", bin{}, "offset 0: a application/vnd.txsink.records body starts with \"TXR1\""},
		{"short magic", bin("TX"), "offset 0"},
		{"bad magic", bin("TXR2").rec("a"), "offset 0"},
		{"ndjson", bin(`{"value":"a"}`), "offset 0"},
		{"truncated in the sink length", magic().raw("\x80"), "record 1 (offset 4): truncated: the body ends inside the sink length"},
		{"truncated after the sink", magic().str("events"), "record 1 (offset 11): truncated: the body ends inside the topic length"},
		{"truncated second record", one.plus(bin{}.rec("b").head(9)), "record 2 (offset 26): truncated: the body ends inside the key length"},
		{"truncated in the headers", magic().str("").str("").uv(0).uv(0).uv(0).uv(1).str("k"), "record 1 (offset 12): truncated: the body ends inside the header value length"},
		{"varint overflow", magic().raw(strings.Repeat("\xff", 10) + "\x01"), "record 1 (offset 4): varint overflow in the sink length"},
		{"sink beyond the body", magic().uv(7).raw("events"), "record 1 (offset 4): the sink's length 7 is beyond the body (6 bytes left)"},
		{"huge topic length", magic().str("s").uv(math.MaxUint64).raw("x"), "record 1 (offset 6): the topic's length 18446744073709551615 is beyond the body"},
		{"key beyond the body", magic().str("").str("").uv(0).uv(4).raw("ab"), "record 1 (offset 7): the key's length 3 is beyond the body (2 bytes left)"},
		{"value beyond the body", magic().str("").str("").uv(0).uv(0).uv(math.MaxUint64), "record 1 (offset 8): the value's length 18446744073709551614 is beyond the body"},
		{"header beyond the body", magic().str("").str("").uv(0).uv(0).uv(0).uv(1).uv(2).raw("ab").uv(1), "record 1 (offset 13): the header value's length 1 is beyond the body (0 bytes left)"},
		{"header count beyond the body", magic().str("").str("").uv(0).uv(0).uv(0).uv(3).str("").str(""), "record 1 (offset 9): 3 headers cannot fit in the 2 bytes left"},
		{"partition above int32", magic().str("").str("").uv(math.MaxInt32 + 2).uv(0).uv(0).uv(0), "record 1 (offset 6): partition 2147483648 is above 2147483647"},
		{"partition overflow", magic().str("").str("").raw(strings.Repeat("\x80", 10) + "\x02"), "record 1 (offset 6): varint overflow in the partition"},
		{"sink not UTF-8", one.plus(bin{}.str("ev\xffnts").str("").uv(0).uv(0).uv(0).uv(0)), "record 2 (offset 17): the sink is not valid UTF-8"},
		{"topic not UTF-8", magic().str("events").str("\xc3("), "record 1 (offset 11): the topic is not valid UTF-8"},
		{"header name not UTF-8", magic().str("").str("").uv(0).uv(0).uv(0).uv(1).hdr("\xff", "v"), "record 1 (offset 10): the header name is not valid UTF-8"},
		{"header value not UTF-8", magic().str("").str("").uv(0).uv(0).uv(0).uv(1).hdr("k", "\xed\xa0\x80"), "record 1 (offset 12): the header value is not valid UTF-8"},
		{"too many", magic().rec("a").rec("b").rec("c").rec("d"), "more than 3 records in one call"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := decodeBinary(tc.body, 3)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %d records, error %v; want an error containing %q", len(recs), err, tc.err)
			}
			if tc.name == "too many" != errors.Is(err, errTooManyRecords) {
				t.Fatalf("error %v: errTooManyRecords only for too many records", err)
			}
		})
	}
}

func TestDecodeBinary(t *testing.T) {
	for _, tc := range []struct {
		name string
		body bin
		want int
	}{
		{"magic only", magic(), 0},
		{"empty records", magic().empty().empty().empty(), 3},
		{"non-minimal varints", magic().raw("\x80\x00").raw("\x80\x80\x00").raw("\x00\x00\x00\x00").empty(), 2},
		{"max records", magic().rec("a").rec("b").rec("c"), 3},
		{"partition int32 max", magic().str("").str("").uv(math.MaxInt32 + 1).uv(0).uv(0).uv(0), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := decodeBinary(tc.body, 3)
			if err != nil || len(recs) != tc.want {
				t.Fatalf("got %d records, %v; want %d", len(recs), err, tc.want)
			}
		})
	}
}

// Binary bodies and their NDJSON twins (key_b64/value_b64) decode to equal
// records.
func TestBinaryMatchesNDJSON(t *testing.T) {
	b64 := base64.StdEncoding.EncodeToString
	p := func(n int32) *int32 { return &n }
	tests := []struct {
		name   string
		rec    *twopc.Record
		ndjson string
	}{
		{"empty", &twopc.Record{}, `{}`},
		{"sink", &twopc.Record{Sink: "events"}, `{"sink":"events"}`},
		{"sink and topic", &twopc.Record{Sink: "events", Topic: "pv"}, `{"sink":"events","topic":"pv"}`},
		{"partition 0", &twopc.Record{Partition: p(0)}, `{"partition":0}`},
		{"partition max", &twopc.Record{Partition: p(math.MaxInt32)}, `{"partition":2147483647}`},
		{"empty key, null value", &twopc.Record{KeyB64: []byte{}}, `{"key_b64":"","value_b64":null}`},
		{"binary key and value", &twopc.Record{KeyB64: []byte{0, 0xff, '\n'}, ValueB64: []byte("v\x00\"\\")},
			`{"key_b64":"` + b64([]byte{0, 0xff, '\n'}) + `","value_b64":"` + b64([]byte("v\x00\"\\")) + `"}`},
		{"headers", &twopc.Record{Sink: "events", ValueB64: []byte("v"), Headers: map[string]string{"a": "1", "ü": "ß", "": "", "nul": "\x00"}},
			`{"sink":"events","value_b64":"dg==","headers":{"a":"1","ü":"ß","":"","nul":"\u0000"}}`},
		{"unicode names", &twopc.Record{Sink: "événements", Topic: "日本"}, `{"sink":"événements","topic":"日本"}`},
		{"everything", &twopc.Record{Sink: "s", Topic: "t", Partition: p(7), KeyB64: []byte("k"), ValueB64: []byte("v"), Headers: map[string]string{"h": "x"}},
			`{"headers":{"h":"x"},"value_b64":"dg==","key_b64":"aw==","partition":7,"topic":"t","sink":"s"}`},
	}
	var all []*twopc.Record
	var lines strings.Builder
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body, err := AppendBinaryRecords(nil, []*twopc.Record{tc.rec})
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodeBinary(body, 10)
			if err != nil {
				t.Fatal(err)
			}
			want, err := decodeRecords([]byte(tc.ndjson), 10)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("binary %+v, NDJSON %+v", *got[0], *want[0])
			}
		})
		all = append(all, tc.rec)
		lines.WriteString(tc.ndjson + "\n")
	}
	// All in one call: the interned names and the arena do not mix records.
	body, err := AppendBinaryRecords(nil, all)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeBinary(body, 100)
	if err != nil {
		t.Fatal(err)
	}
	want, err := decodeRecords([]byte(lines.String()), 100)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatal("a call of every record decodes differently from its NDJSON twin")
	}
	// A repeated header name keeps the last value, as in a JSON object.
	dup := magic().str("").str("").uv(0).uv(0).uv(0).uv(3).hdr("a", "1").hdr("b", "2").hdr("a", "3")
	got, err = decodeBinary(dup, 10)
	if err != nil {
		t.Fatal(err)
	}
	want, err = decodeRecords([]byte(`{"headers":{"a":"1","b":"2","a":"3"}}`), 10)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("repeated header: binary %v, NDJSON %v", got[0].Headers, want[0].Headers)
	}
}

// The records own their bytes: the body's buffer goes back to the pool.
func TestDecodeBinaryCopies(t *testing.T) {
	body := magic().str("events").str("pv").uv(3).opt("key").opt("value").uv(1).hdr("h", "v")
	recs, err := decodeBinary(body, 10)
	if err != nil {
		t.Fatal(err)
	}
	want := *recs[0]
	want.KeyB64, want.ValueB64 = []byte("key"), []byte("value")
	for i := range body {
		body[i] = 'X'
	}
	if !reflect.DeepEqual(*recs[0], want) {
		t.Fatalf("records changed with the body: %+v", *recs[0])
	}
	// A sink appending to a key must not overwrite the value.
	_ = append(recs[0].KeyB64, "XXXXX"...)
	if string(recs[0].ValueB64) != "value" {
		t.Fatalf("value %q after an append to the key", recs[0].ValueB64)
	}
}

func TestAppendBinaryRecords(t *testing.T) {
	p := func(n int32) *int32 { return &n }
	for _, tc := range []struct {
		name string
		rec  twopc.Record
		err  string // "" when it encodes
		want twopc.Record
	}{
		{"stmt", twopc.Record{Stmt: "insert"}, "stmt/args", twopc.Record{}},
		{"args", twopc.Record{Args: []json.RawMessage{json.RawMessage(`1`)}}, "stmt/args", twopc.Record{}},
		{"JSON object value", twopc.Record{Value: json.RawMessage(`{"n":1}`)}, "not a JSON string or null", twopc.Record{}},
		{"invalid JSON key", twopc.Record{Key: json.RawMessage(`"a`)}, "invalid JSON string", twopc.Record{}},
		{"key and key_b64", twopc.Record{Key: json.RawMessage(`"a"`), KeyB64: []byte("a")}, "key and key_b64 are both set", twopc.Record{}},
		{"negative partition", twopc.Record{Partition: p(-1)}, "negative", twopc.Record{}},
		{"sink not UTF-8", twopc.Record{Sink: "\xff"}, "not valid UTF-8", twopc.Record{}},
		{"header not UTF-8", twopc.Record{Headers: map[string]string{"a": "\xff"}}, "not valid UTF-8", twopc.Record{}},
		{"JSON string key and value", twopc.Record{Key: json.RawMessage(` "k\u00e9" `), Value: json.RawMessage(`"a\nb"`)}, "",
			twopc.Record{KeyB64: []byte("ké"), ValueB64: []byte("a\nb")}},
		{"JSON null value", twopc.Record{Value: json.RawMessage(`null`)}, "", twopc.Record{}},
		{"empty args", twopc.Record{Sink: "s", Args: []json.RawMessage{}}, "", twopc.Record{Sink: "s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body, err := AppendBinaryRecords([]byte("prefix"), []*twopc.Record{{}, &tc.rec})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrNotBinary) || !strings.Contains(err.Error(), "record 2") {
					t.Fatalf("got %v, want an ErrNotBinary naming record 2 and %q", err, tc.err)
				}
				return
			}
			if err != nil || !strings.HasPrefix(string(body), "prefix") {
				t.Fatalf("got %q, %v", body, err)
			}
			recs, err := decodeBinary(body[len("prefix"):], 10)
			if err != nil {
				t.Fatal(err)
			}
			tc.want.JSONChecked = true // as every decoded record is
			if !reflect.DeepEqual(*recs[1], tc.want) {
				t.Fatalf("got %+v, want %+v", *recs[1], tc.want)
			}
		})
	}
	// Headers go out in name order: the same records give the same bytes.
	r := &twopc.Record{Headers: map[string]string{}}
	for _, k := range strings.Split("q w e r t y u i o p", " ") {
		r.Headers[k] = k
	}
	first, _ := AppendBinaryRecords(nil, []*twopc.Record{r})
	for range 20 {
		if b, _ := AppendBinaryRecords(nil, []*twopc.Record{r}); string(b) != string(first) {
			t.Fatal("the same record encoded to different bodies")
		}
	}
}
