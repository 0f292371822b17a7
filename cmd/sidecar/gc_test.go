package main

import (
	"log/slog"
	"runtime/debug"
	"testing"
)

// tuneGC sets the configured (or default) GC percent and soft memory
// limit, and leaves both alone when GOGC / GOMEMLIMIT are set.
func TestTuneGC(t *testing.T) {
	pct0 := debug.SetGCPercent(-1)
	debug.SetGCPercent(pct0)
	lim0 := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetGCPercent(pct0); debug.SetMemoryLimit(lim0) })
	read := func() (int, int64) {
		p := debug.SetGCPercent(-1)
		debug.SetGCPercent(p)
		return p, debug.SetMemoryLimit(-1)
	}
	log := slog.New(slog.DiscardHandler)
	for _, c := range []struct {
		name           string
		pct            int
		mib            int64
		env            map[string]string
		wantPct        int
		wantLimitMiB   int64
		limitUnchanged bool
	}{
		{name: "defaults", wantPct: 400, wantLimitMiB: 512},
		{name: "configured", pct: 150, mib: 64, wantPct: 150, wantLimitMiB: 64},
		{name: "environment wins", pct: 150, mib: 64, env: map[string]string{"GOGC": "77", "GOMEMLIMIT": "1GiB"},
			wantPct: 33, limitUnchanged: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("GOGC", "")
			t.Setenv("GOMEMLIMIT", "")
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			debug.SetGCPercent(33) // stands in for what the runtime took from the environment
			debug.SetMemoryLimit(99 << 20)
			var cfg Config
			cfg.Limits.GCPercent, cfg.Limits.MemoryLimitMiB = c.pct, c.mib
			tuneGC(cfg, log)
			pct, lim := read()
			if pct != c.wantPct {
				t.Errorf("GC percent: got %d, want %d", pct, c.wantPct)
			}
			switch {
			case c.limitUnchanged && lim != 99<<20:
				t.Errorf("memory limit: got %d MiB, want the environment's (99 MiB) untouched", lim>>20)
			case !c.limitUnchanged && lim != c.wantLimitMiB<<20:
				t.Errorf("memory limit: got %d MiB, want %d MiB", lim>>20, c.wantLimitMiB)
			}
		})
	}
}
