package main

import (
	"bytes"
	"errors"
	"flag"
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

// TestRunHelpWithoutConfig: "sidecar run -h" lists every flag of run even
// without --config (it listed only --config), and exits as help does.
func TestRunHelpWithoutConfig(t *testing.T) {
	t.Setenv("TXSINK_CONFIG", "")
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string // "" means flag.ErrHelp
	}{
		{"help", []string{"run", "-h"}, ""},
		{"no config", []string{"run"}, "run needs --config FILE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), tc.args, &stdout, &stderr)
			switch {
			case tc.wantErr == "" && !errors.Is(err, flag.ErrHelp):
				t.Errorf("got %v, want flag.ErrHelp", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("got %v, want an error containing %q", err, tc.wantErr)
			}
			for _, f := range []string{"-config", "-data-dir", "-http-addr", "-token-file", "-raft-tls-ca-file"} {
				if !strings.Contains(stderr.String(), "  "+f+" ") {
					t.Errorf("usage lacks %s; got:\n%s", f, stderr.String())
				}
			}
		})
	}
}
