package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestUnknownCommandFlagHint: a flag before the command gets an error that
// says where flags go, and nothing runs.
func TestUnknownCommandFlagHint(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--addr", "./data/sidecar.sock", "jobs"}, `unknown command "--addr": flags go after the command`},
		{[]string{"jbos"}, `unknown command "jbos"`},
	} {
		t.Run(tc.args[0], func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), tc.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
			if tc.args[0] == "jbos" && strings.Contains(err.Error(), "flags go after") {
				t.Errorf("got %v for a misspelt command, want no flag hint", err)
			}
			if stdout.Len() != 0 || !strings.Contains(stderr.String(), "usage: sidecar") {
				t.Errorf("got stdout %q, stderr %q; want nothing and the usage", stdout.String(), stderr.String())
			}
		})
	}
}
