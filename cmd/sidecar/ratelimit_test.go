package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestRateLimitOneLinePerSinkAndInterval(t *testing.T) {
	var buf bytes.Buffer
	h := newRateLimit(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}), 10*time.Second)
	now := time.Unix(1000, 0)
	h.lim.now = func() time.Time { return now }
	root := slog.New(h)
	a := root.With("sink", "a").With("component", "kgo")
	b := root.With("sink", "b").With("component", "kgo")
	for range 1000 {
		a.Warn("unable to open connection to broker", "broker", 1)
		b.Warn("unable to open connection to broker", "broker", 1)
		a.Info("info passes")
	}
	a.Warn("another message")
	root.Error("outage", "sink", "c") // sink given per record counts too
	root.Error("outage", "sink", "c")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	count := func(sub string) int {
		n := 0
		for _, l := range lines {
			if strings.Contains(l, sub) {
				n++
			}
		}
		return n
	}
	for _, tc := range []struct {
		sub  string
		want int
	}{
		{`msg="unable to open connection to broker" sink=a`, 1},
		{`msg="unable to open connection to broker" sink=b`, 1},
		{`msg="info passes"`, 1000},
		{`msg="another message"`, 1},
		{`msg=outage`, 1},
	} {
		if got := count(tc.sub); got != tc.want {
			t.Errorf("lines with %q: got %d, want %d", tc.sub, got, tc.want)
		}
	}
	buf.Reset()
	now = now.Add(10 * time.Second)
	a.Warn("unable to open connection to broker", "broker", 1)
	if got := buf.String(); !strings.Contains(got, "suppressed=999") {
		t.Fatalf("first line after the interval: got %q, want suppressed=999", got)
	}
}

func TestRateLimitBoundedKeys(t *testing.T) {
	var buf bytes.Buffer
	h := newRateLimit(slog.NewTextHandler(&buf, nil), time.Hour)
	l := slog.New(h)
	for i := range 5 * maxLogKeys {
		l.Warn("driver said " + strings.Repeat("x", i%97) + string(rune('a'+i%26)) + time.Duration(i).String())
	}
	if n := len(h.lim.seen); n > maxLogKeys {
		t.Fatalf("limiter holds %d keys, want at most %d", n, maxLogKeys)
	}
}
