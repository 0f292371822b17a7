package raftlog

import (
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
)

// levelTrace is where hclog's Trace lands in slog: below Debug, like
// slog's own spacing of 4 between levels.
const levelTrace = slog.LevelDebug - 4

// slogLogger is an hclog.Logger that writes to a *slog.Logger, so raft logs
// go wherever the rest of the process logs, at their own levels.
type slogLogger struct {
	base    *slog.Logger // without the name and implied args
	l       *slog.Logger
	name    string
	implied []any
	// level is shared by every logger derived with With/Named, as in hclog.
	// hclog.NoLevel (the default) leaves filtering to the slog handler.
	level *atomic.Int32
}

var _ hclog.Logger = (*slogLogger)(nil)

func newHCLogger(l *slog.Logger, name string) *slogLogger {
	lvl := new(atomic.Int32)
	lvl.Store(int32(hclog.NoLevel))
	return &slogLogger{base: l, l: l.With("logger", name), name: name, level: lvl}
}

func toSlogLevel(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace:
		return levelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

func (s *slogLogger) enabled(level hclog.Level) bool {
	if level == hclog.Off {
		return false
	}
	if min := hclog.Level(s.level.Load()); min != hclog.NoLevel && level < min {
		return false
	}
	return s.l.Enabled(context.Background(), toSlogLevel(level))
}

func (s *slogLogger) Log(level hclog.Level, msg string, args ...any) {
	if !s.enabled(level) {
		return
	}
	s.l.Log(context.Background(), toSlogLevel(level), msg, args...)
}

func (s *slogLogger) Trace(msg string, args ...any) { s.Log(hclog.Trace, msg, args...) }
func (s *slogLogger) Debug(msg string, args ...any) { s.Log(hclog.Debug, msg, args...) }
func (s *slogLogger) Info(msg string, args ...any)  { s.Log(hclog.Info, msg, args...) }
func (s *slogLogger) Warn(msg string, args ...any)  { s.Log(hclog.Warn, msg, args...) }
func (s *slogLogger) Error(msg string, args ...any) { s.Log(hclog.Error, msg, args...) }
func (s *slogLogger) IsTrace() bool                 { return s.enabled(hclog.Trace) }
func (s *slogLogger) IsDebug() bool                 { return s.enabled(hclog.Debug) }
func (s *slogLogger) IsInfo() bool                  { return s.enabled(hclog.Info) }
func (s *slogLogger) IsWarn() bool                  { return s.enabled(hclog.Warn) }
func (s *slogLogger) IsError() bool                 { return s.enabled(hclog.Error) }
func (s *slogLogger) ImpliedArgs() []any            { return s.implied }
func (s *slogLogger) Name() string                  { return s.name }
func (s *slogLogger) SetLevel(level hclog.Level)    { s.level.Store(int32(level)) }

func (s *slogLogger) GetLevel() hclog.Level {
	if l := hclog.Level(s.level.Load()); l != hclog.NoLevel {
		return l
	}
	for _, l := range []hclog.Level{hclog.Trace, hclog.Debug, hclog.Info, hclog.Warn, hclog.Error} {
		if s.enabled(l) {
			return l
		}
	}
	return hclog.Off
}

func (s *slogLogger) With(args ...any) hclog.Logger {
	c := *s
	c.l = s.l.With(args...)
	c.implied = append(append([]any(nil), s.implied...), args...)
	return &c
}

func (s *slogLogger) Named(name string) hclog.Logger {
	if s.name != "" {
		name = s.name + "." + name
	}
	return s.ResetNamed(name)
}

// ResetNamed re-derives from base so the "logger" attribute appears once.
func (s *slogLogger) ResetNamed(name string) hclog.Logger {
	c := *s
	c.name = name
	c.l = s.base.With("logger", name).With(s.implied...)
	return &c
}

func (s *slogLogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(s.StandardWriter(opts), "", 0)
}

func (s *slogLogger) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	var o hclog.StandardLoggerOptions
	if opts != nil {
		o = *opts
	}
	return &stdWriter{l: s, opts: o}
}

// stdWriter turns lines written by a standard *log.Logger into log records.
type stdWriter struct {
	l    *slogLogger
	opts hclog.StandardLoggerOptions
}

func (w *stdWriter) Write(p []byte) (int, error) {
	for line := range bytes.Lines(p) {
		msg := strings.TrimRight(string(line), "\r\n")
		level := hclog.Info
		if w.opts.ForceLevel != hclog.NoLevel {
			level = w.opts.ForceLevel
		}
		if w.opts.InferLevels {
			level, msg = inferLevel(msg, level)
		}
		w.l.Log(level, msg)
	}
	return len(p), nil
}

func inferLevel(msg string, def hclog.Level) (hclog.Level, string) {
	for _, p := range []struct {
		prefix string
		level  hclog.Level
	}{
		{"[TRACE]", hclog.Trace}, {"[DEBUG]", hclog.Debug}, {"[INFO]", hclog.Info},
		{"[WARN]", hclog.Warn}, {"[ERR]", hclog.Error}, {"[ERROR]", hclog.Error},
	} {
		if rest, ok := strings.CutPrefix(msg, p.prefix); ok {
			return p.level, strings.TrimSpace(rest)
		}
	}
	return def, msg
}
