package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPauseRequested: the --pause-file trigger fires once, with the
// duration it holds, and a bad one is removed without a pause.
func TestPauseRequested(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pause")
	var out bytes.Buffer
	a := &app{cfg: countConfig{pauseFile: path}, out: &out, name: "0"}
	if got := a.pauseRequested(); got != 0 {
		t.Fatalf("no file: got %v, want 0", got)
	}
	for _, tc := range []struct {
		content string
		want    time.Duration
	}{{"7s\n", 7 * time.Second}, {"250ms", 250 * time.Millisecond}, {"soon", 0}, {"-1s", 0}} {
		if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := a.pauseRequested(); got != tc.want {
			t.Errorf("%q: got %v, want %v", tc.content, got, tc.want)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%q: the trigger is still there (%v), want it consumed", tc.content, err)
		}
		if got := a.pauseRequested(); got != 0 {
			t.Errorf("%q: second call got %v, want 0 (one pause per trigger)", tc.content, got)
		}
	}
	if !strings.Contains(out.String(), `got "soon"; not pausing`) {
		t.Errorf("a bad trigger is not reported; output:\n%s", out.String())
	}
	a.cfg.pauseFile = ""
	if got := a.pauseRequested(); got != 0 {
		t.Fatalf("no --pause-file: got %v, want 0", got)
	}
}
