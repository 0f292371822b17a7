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

// TestNewClient: --sidecar takes one URL or a cluster's URLs, the first in
// use; anything else is refused with a message naming the bad part.
func TestNewClient(t *testing.T) {
	for _, tc := range []struct {
		spec, first, err string
	}{
		{"http://127.0.0.1:8470", "http://127.0.0.1:8470", ""},
		{" http://127.0.0.1:1 , http://127.0.0.1:2,http://127.0.0.1:3 ", "http://127.0.0.1:1", ""},
		{"unix:///tmp/s.sock,http://127.0.0.1:2", "http://unix", ""},
		{"", "", "names no URL"},
		{" , ", "", "names no URL"},
		{"http://127.0.0.1:1,unix:///tmp/s.sock", "", "only the first URL may be a Unix socket"},
		{"127.0.0.1:8470", "", `"127.0.0.1:8470" is not an http://, https:// or unix:// URL`},
	} {
		cl, err := newClient(tc.spec)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: got %v, want an error containing %q", tc.spec, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.spec, err)
			continue
		}
		if got := cl.Endpoint(); got != tc.first {
			t.Errorf("%q: endpoint in use %q, want %q", tc.spec, got, tc.first)
		}
	}
}
