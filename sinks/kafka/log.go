package kafka

import (
	"context"
	"log/slog"

	"github.com/twmb/franz-go/pkg/kgo"
)

// kgoLogger bridges franz-go's logs into slog. franz-go logs every begin
// and end of a transaction at info; at thousands of transactions a second
// that is debug material for us, so kgo levels map one step down for info
// and debug (debug goes below slog.LevelDebug).
type kgoLogger struct{ l *slog.Logger }

const levelTrace = slog.LevelDebug - 4

func slogLevel(l kgo.LogLevel) slog.Level {
	switch l {
	case kgo.LogLevelError:
		return slog.LevelError
	case kgo.LogLevelWarn:
		return slog.LevelWarn
	case kgo.LogLevelInfo:
		return slog.LevelDebug
	default:
		return levelTrace
	}
}

func (k kgoLogger) Level() kgo.LogLevel {
	ctx := context.Background()
	for _, l := range []kgo.LogLevel{kgo.LogLevelDebug, kgo.LogLevelInfo, kgo.LogLevelWarn, kgo.LogLevelError} {
		if k.l.Enabled(ctx, slogLevel(l)) {
			return l
		}
	}
	return kgo.LogLevelNone
}

func (k kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	k.l.Log(context.Background(), slogLevel(level), msg, keyvals...)
}
