package main

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// defaultLogInterval is how often one kind of warning may be logged.
const defaultLogInterval = 10 * time.Second

// maxLogKeys bounds the limiter's memory: messages built with fmt (the
// MySQL driver's) make keys of their own.
const maxLogKeys = 1024

// rateLimit is a slog.Handler that lets through one warning or error per
// interval for each kind (level, sink, component and message); the next one
// let through after a quiet spell carries suppressed=N. During an outage a
// driver's retry loop (franz-go reconnecting to every broker from every
// client, the coordinator retrying each branch) otherwise logs thousands of
// the same line a second. Info and debug lines pass: they are either rare
// or opted into.
type rateLimit struct {
	next slog.Handler
	lim  *limiter
	key  string // sink and component attributes given by With, and groups
}

type limiter struct {
	interval time.Duration
	now      func() time.Time

	mu   sync.Mutex
	seen map[string]*logWindow
}

type logWindow struct {
	start      time.Time
	suppressed int
}

func newRateLimit(next slog.Handler, interval time.Duration) *rateLimit {
	return &rateLimit{next: next, lim: &limiter{interval: interval, now: time.Now, seen: map[string]*logWindow{}}}
}

func (h *rateLimit) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h *rateLimit) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return h.next.Handle(ctx, r)
	}
	key := h.key
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "sink" || a.Key == "component" {
			key += "|" + a.Key + "=" + a.Value.String()
		}
		return true
	})
	key += "|" + r.Level.String() + "|" + r.Message
	pass, suppressed := h.lim.allow(key)
	if !pass {
		return nil
	}
	if suppressed > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("suppressed", suppressed))
	}
	return h.next.Handle(ctx, r)
}

// allow reports whether a line of key may be logged now and how many were
// suppressed since the last one that was.
func (l *limiter) allow(key string) (bool, int) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.seen[key]
	if w != nil && now.Sub(w.start) < l.interval {
		w.suppressed++
		return false, 0
	}
	n := 0
	if w != nil {
		n = w.suppressed
	} else if len(l.seen) >= maxLogKeys {
		for k, v := range l.seen {
			if now.Sub(v.start) >= l.interval {
				delete(l.seen, k)
			}
		}
		if len(l.seen) >= maxLogKeys {
			clear(l.seen) // many distinct messages at once: start over rather than grow
		}
	}
	l.seen[key] = &logWindow{start: now}
	return true, n
}

func (h *rateLimit) WithAttrs(as []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(h.key)
	for _, a := range as {
		if a.Key == "sink" || a.Key == "component" {
			b.WriteString("|" + a.Key + "=" + a.Value.String())
		}
	}
	return &rateLimit{next: h.next.WithAttrs(as), lim: h.lim, key: b.String()}
}

func (h *rateLimit) WithGroup(name string) slog.Handler {
	return &rateLimit{next: h.next.WithGroup(name), lim: h.lim, key: h.key + "|" + name + "."}
}
