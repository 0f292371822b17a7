package raftlog

import (
	"context"
	"log/slog"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// recorder is a slog.Handler that keeps records, with attributes flattened
// into a map.
type recorder struct {
	level slog.Level
	attrs []slog.Attr
	mu    *sync.Mutex
	recs  *[]rec
}

type rec struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func newRecorder(level slog.Level) *recorder {
	return &recorder{level: level, mu: new(sync.Mutex), recs: new([]rec)}
}

func (r *recorder) Enabled(_ context.Context, l slog.Level) bool { return l >= r.level }
func (r *recorder) WithGroup(string) slog.Handler                { return r }
func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	c := *r
	c.attrs = append(append([]slog.Attr(nil), r.attrs...), as...)
	return &c
}
func (r *recorder) Handle(_ context.Context, sr slog.Record) error {
	m := map[string]string{}
	for _, a := range r.attrs {
		m[a.Key] = a.Value.String()
	}
	sr.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	r.mu.Lock()
	defer r.mu.Unlock()
	*r.recs = append(*r.recs, rec{sr.Level, sr.Message, m})
	return nil
}
func (r *recorder) take() []rec {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := *r.recs
	*r.recs = nil
	return out
}

func TestHCLogLevels(t *testing.T) {
	h := newRecorder(slog.LevelDebug)
	l := newHCLogger(slog.New(h), "raft")
	tests := []struct {
		log       func(msg string, args ...any)
		wantLevel slog.Level
		wantLog   bool
	}{
		{l.Trace, levelTrace, false}, // below the handler's Debug
		{l.Debug, slog.LevelDebug, true},
		{l.Info, slog.LevelInfo, true},
		{l.Warn, slog.LevelWarn, true},
		{l.Error, slog.LevelError, true},
	}
	for _, tt := range tests {
		tt.log("msg", "k", "v")
		got := h.take()
		if !tt.wantLog {
			if len(got) != 0 {
				t.Errorf("level %v: got %d records, want none", tt.wantLevel, len(got))
			}
			continue
		}
		if len(got) != 1 || got[0].level != tt.wantLevel || got[0].attrs["k"] != "v" || got[0].attrs["logger"] != "raft" {
			t.Errorf("level %v: got %+v, want one record at that level with k=v logger=raft", tt.wantLevel, got)
		}
	}
	if l.IsTrace() || !l.IsDebug() {
		t.Errorf("IsTrace, IsDebug = %v, %v; want false, true", l.IsTrace(), l.IsDebug())
	}

	named := l.Named("net").With("peer", "p1")
	named.Info("hello")
	got := h.take()
	if len(got) != 1 || got[0].attrs["logger"] != "raft.net" || got[0].attrs["peer"] != "p1" {
		t.Errorf("Named+With: got %+v, want logger=raft.net peer=p1", got)
	}

	l.SetLevel(hclog.Warn)
	named.Info("filtered")
	if got := h.take(); len(got) != 0 {
		t.Errorf("after SetLevel(Warn): got %+v, want no Info records", got)
	}
	if got := named.GetLevel(); got != hclog.Warn {
		t.Errorf("GetLevel = %v, want %v", got, hclog.Warn)
	}
	l.SetLevel(hclog.NoLevel)

	std := l.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})
	std.Print("[WARN] disk slow")
	std.Print("plain")
	got = h.take()
	if len(got) != 2 || got[0].level != slog.LevelWarn || got[0].msg != "disk slow" || got[1].level != slog.LevelInfo {
		t.Errorf("StandardLogger: got %+v, want Warn 'disk slow' then Info", got)
	}
}
