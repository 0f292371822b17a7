package api_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

func binRecs(sink string, values ...string) []*twopc.Record {
	recs := make([]*twopc.Record, len(values))
	for i, v := range values {
		recs[i] = &twopc.Record{Sink: sink, KeyB64: []byte("k" + v), ValueB64: []byte(v)}
	}
	return recs
}

func binBody(t *testing.T, recs []*twopc.Record) []byte {
	t.Helper()
	b, err := client.AppendBinaryRecords(nil, recs)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWriteBinary: the records call takes the binary type over TCP and
// the Unix socket, with seq, and commits what it carried; a malformed,
// too long or invalid binary body is refused and changes nothing.
func TestWriteBinary(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, tr := range e.ts {
		c := tr.c
		job := "bin-" + tr.name
		must[twopc.JobInfo](t)(c.PutJob(ctx, job, twopc.ModeAuto, []string{"events"}))
		ep := must[twopc.SessionInfo](t)(c.OpenSession(ctx, job, "w", nil)).Epoch
		// The first record names its sink, the others leave it to the job.
		recs := append(binRecs("events", tr.name+"-a"), binRecs("", tr.name+"-b", tr.name+"-c")...)
		recs[2].Topic = "pv"
		body := binBody(t, recs)
		res := must[twopc.WriteResult](t)(c.WriteBinary(ctx, job, "w", ep, client.Seq(1), body))
		if res.Accepted != 3 || res.Duplicate {
			t.Fatalf("%s: write: %+v", tr.name, res)
		}
		// A retry of the same bytes is a duplicate.
		if res := must[twopc.WriteResult](t)(c.WriteBinary(ctx, job, "w", ep, client.Seq(1), body)); !res.Duplicate {
			t.Fatalf("%s: retry: %+v, want a duplicate", tr.name, res)
		}

		before := e.snapshot()
		path := fmt.Sprintf("/v1/jobs/%s/writers/w/records?epoch=%d", job, ep)
		bin := []string{"Content-Type", api.BinaryRecordsType}
		truncated := string(binBody(t, binRecs("events", "x", "y"))[:30])
		if r := tr.do(t, "POST", path, truncated, bin...); r.status != 400 || r.problem(t).Code != api.CodeMalformedBody ||
			!strings.Contains(r.problem(t).Detail, "record 2 (offset 28): the key's length 2 is beyond the body") {
			t.Fatalf("%s: truncated body: got %s", tr.name, r)
		}
		if r := tr.do(t, "POST", path, values("ndjson as binary"), bin...); r.status != 400 || !strings.Contains(r.problem(t).Detail, `starts with "TXR1"`) {
			t.Fatalf("%s: NDJSON sent as binary: got %s", tr.name, r)
		}
		many := make([]string, 1001)
		for i := range many {
			many[i] = fmt.Sprint(i)
		}
		if r := tr.do(t, "POST", path, string(binBody(t, binRecs("events", many...))), bin...); r.status != 413 || r.problem(t).Code != api.CodeBodyTooLarge {
			t.Fatalf("%s: 1,001 records: got %s", tr.name, r)
		}
		bad := binRecs("events", "ok", "bad topic")
		bad[1].Topic = "nope"
		_, err := c.WriteBinary(ctx, job, "w", ep, client.Seq(2), binBody(t, bad))
		wantCode(t, err, 400, api.CodeInvalidRequest)
		if ce, _ := errors.AsType[*client.Error](err); ce.Record != 2 {
			t.Fatalf("%s: invalid record: got record %d, want 2 (%v)", tr.name, ce.Record, err)
		}
		_, err = c.WriteBinary(ctx, job, "w", ep, client.Seq(2), binBody(t, binRecs("other", "not of the job")))
		wantCode(t, err, 400, api.CodeUnknownSink)
		if after := e.snapshot(); after != before {
			t.Fatalf("%s: refused calls changed the state:\n%s\n%s", tr.name, before, after)
		}

		must[twopc.CheckpointResult](t)(c.Checkpoint(ctx, job, "w", ep, 1, nil, ""))
		if got := committed(e.events); !contains(got, tr.name+"-a", tr.name+"-b", tr.name+"-c") {
			t.Fatalf("%s: committed %q", tr.name, got)
		}
	}
}

// TestWriterBinary: a Job WithBinary sends its writers' records as the
// binary type; JSON string values become their bytes, and a record the
// format cannot carry fails before anything is sent.
func TestWriterBinary(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	job := must[*client.Job](t)(e.ts[1].c.UseJob(ctx, "wb", twopc.ModeAuto, []string{"events"})).WithBinary(true)
	w := must[*client.Writer](t)(job.OpenWriter(ctx, "w", nil))
	if _, err := w.Write(ctx, &twopc.Record{Sink: "events", Value: []byte(`{"n":1}`)}); !errors.Is(err, api.ErrNotBinary) {
		t.Fatalf("a JSON object value: got %v, want ErrNotBinary", err)
	}
	must[twopc.WriteResult](t)(w.Write(ctx, &twopc.Record{Value: []byte(`"s1"`)}, &twopc.Record{Sink: "events", ValueB64: []byte("s2")}))
	must[twopc.CheckpointResult](t)(w.Checkpoint(ctx, 1, []byte("1")))
	if got := committed(e.events); !slices.Equal(got, []string{"s1", "s2"}) {
		t.Fatalf("committed %q", got)
	}
	// Without WithBinary the writer still sends NDJSON: a JSON object
	// value goes through.
	job.WithBinary(false)
	must[twopc.WriteResult](t)(w.Write(ctx, &twopc.Record{Value: []byte(`{"n":1}`)}))
}

// TestBinaryContentType: the 415 of an unknown records type names the
// binary type too.
func TestBinaryContentType(t *testing.T) {
	e := newEnv(t)
	tr := e.ts[0]
	r := tr.do(t, "POST", "/v1/jobs/j/writers/w/records?epoch=1", "TXR1", "Content-Type", "application/octet-stream")
	if r.status != http.StatusUnsupportedMediaType || !strings.Contains(r.problem(t).Detail, api.BinaryRecordsType) {
		t.Fatalf("got %s, want 415 naming %s", r, api.BinaryRecordsType)
	}
}

// FuzzBinaryRecords: the decoder never panics; what it accepts, the Go
// client's encoder writes back to a body that decodes to the same
// records; and records built from the fuzz data survive encode → decode.
func FuzzBinaryRecords(f *testing.F) {
	seed, err := client.AppendBinaryRecords(nil, []*twopc.Record{
		{Sink: "events", Topic: "pv", KeyB64: []byte("k"), ValueB64: []byte("v"), Headers: map[string]string{"a": "b"}},
		{}, {Partition: new(int32)},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed, "events", "pv", uint32(3), []byte("key"), []byte("value"), "h", "v", uint8(0xff))
	f.Add([]byte("TXR1"), "", "", uint32(0), []byte{}, []byte(nil), "", "", uint8(0))
	f.Add([]byte("TXR1\x00\x00\x00\x00\x00\x01\x01a\x01b"), "é", "\xff", uint32(math.MaxInt32), []byte{0}, []byte{}, "\x00", "ß", uint8(0x55))
	f.Add([]byte("TXR1\x80\x80\x80\x80\x80\x80\x80\x80\x80\x02"), "s", "t", uint32(math.MaxUint32), []byte(nil), []byte("v"), "", "", uint8(0xaa))
	f.Fuzz(func(t *testing.T, body []byte, sink, topic string, part uint32, key, value []byte, hname, hval string, flags uint8) {
		recs, err := api.DecodeBinary(body, 50)
		if err == nil {
			again, err := client.AppendBinaryRecords(nil, recs)
			if err != nil {
				t.Fatalf("decoded %q, the encoder refused the records: %v", body, err)
			}
			got, err := api.DecodeBinary(again, 50)
			if err != nil || !reflect.DeepEqual(got, recs) {
				t.Fatalf("decoded %q, re-encoded %q: got %v, %v", body, again, got, err)
			}
		}

		// Records from the fuzz data; flags choose which fields are set.
		r := &twopc.Record{Sink: sink, Topic: topic}
		if flags&1 != 0 {
			p := int32(part & math.MaxInt32)
			r.Partition = &p
		}
		if flags&2 != 0 {
			r.KeyB64 = append([]byte{}, key...) // set, maybe empty
		}
		if flags&4 != 0 {
			r.ValueB64 = append([]byte{}, value...)
		}
		if flags&8 != 0 {
			r.Headers = map[string]string{hname: hval}
			if flags&16 != 0 {
				r.Headers[hval] = hname
			}
		}
		in := []*twopc.Record{r, {Sink: sink, ValueB64: value}, r}
		enc, err := client.AppendBinaryRecords(nil, in)
		if err != nil {
			if !errors.Is(err, api.ErrNotBinary) {
				t.Fatalf("encoder error %v is not ErrNotBinary", err)
			}
			for _, s := range []string{sink, topic, hname, hval} {
				if !utf8.ValidString(s) {
					return // refused for that, as the decoder would
				}
			}
			t.Fatalf("the encoder refused %+v: %v", *r, err)
		}
		out, err := api.DecodeBinary(enc, 50)
		if err != nil {
			t.Fatalf("encoded %+v to %q, decoding: %v", *r, enc, err)
		}
		for _, x := range in {
			x.JSONChecked = true // as every decoded record is
		}
		if !reflect.DeepEqual(out, in) {
			t.Fatalf("encode → decode changed the records: %+v → %+v", *r, *out[0])
		}
	})
}
