package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
)

// tuneGC sets the configured (or default) GC percent and soft memory
// limit, derives the limit from the container's, and leaves both alone
// when GOGC / GOMEMLIMIT are set.
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
	dir := t.TempDir()
	cgroup := func(content string) []string {
		if content == "" {
			return []string{filepath.Join(dir, "absent")}
		}
		f := filepath.Join(dir, "memory.max")
		if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return []string{f}
	}
	const untouched = 99 << 20 // what the runtime had before (from the environment, say)
	log := slog.New(slog.DiscardHandler)
	for _, c := range []struct {
		name      string
		pct       int
		mib       int64
		cgroup    string // memory.max's content; "" for no file
		env       map[string]string
		wantPct   int
		wantLimit int64
	}{
		{name: "outside a container", wantPct: 400, wantLimit: untouched},
		{name: "cgroup v2 max", cgroup: "max\n", wantPct: 400, wantLimit: untouched},
		{name: "container of 1000 MiB", cgroup: "1048576000\n", wantPct: 400, wantLimit: 891289600}, // 85%
		{name: "configured", pct: 150, mib: 64, cgroup: "1073741824\n", wantPct: 150, wantLimit: 64 << 20},
		{name: "negative: none", mib: -1, cgroup: "1073741824\n", wantPct: 400, wantLimit: untouched},
		{name: "environment wins", pct: 150, mib: 64, env: map[string]string{"GOGC": "77", "GOMEMLIMIT": "1GiB"},
			wantPct: 33, wantLimit: untouched},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("GOGC", "")
			t.Setenv("GOMEMLIMIT", "")
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			debug.SetGCPercent(33) // stands in for what the runtime took from the environment
			debug.SetMemoryLimit(untouched)
			var cfg Config
			cfg.Limits.GCPercent, cfg.Limits.MemoryLimitMiB = c.pct, c.mib
			tuneGC(cfg, log, cgroup(c.cgroup))
			pct, lim := read()
			if pct != c.wantPct {
				t.Errorf("GC percent: got %d, want %d", pct, c.wantPct)
			}
			if lim != c.wantLimit {
				t.Errorf("memory limit: got %d MiB, want %d MiB", lim>>20, c.wantLimit>>20)
			}
		})
	}
}
