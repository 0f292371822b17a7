package main

import (
	"bytes"
	"runtime/debug"
	"testing"
)

func TestDescribeVersion(t *testing.T) {
	rev := "0123456789abcdef0123456789abcdef01234567"
	bi := func(mod string, settings ...string) *debug.BuildInfo {
		b := &debug.BuildInfo{Main: debug.Module{Path: "github.com/txsink/txsink", Version: mod}}
		for i := 0; i+1 < len(settings); i += 2 {
			b.Settings = append(b.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
		}
		return b
	}
	for _, tc := range []struct {
		name    string
		ldflags string
		bi      *debug.BuildInfo
		want    string
	}{
		{"ldflags win", "v1.2.3-4-gabcdef-dirty", bi("v1.0.0", "vcs.revision", rev), "v1.2.3-4-gabcdef-dirty"},
		{"module version", "", bi("v1.0.0"), "v1.0.0"},
		{"revision", "", bi("(devel)", "vcs.revision", rev, "vcs.modified", "false"), "0123456789ab"},
		{"dirty revision", "", bi("(devel)", "vcs.revision", rev, "vcs.modified", "true"), "0123456789ab-dirty"},
		{"both", "", bi("v0.3.0", "vcs.revision", rev), "v0.3.0 0123456789ab"},
		{"nothing stamped", "", bi("(devel)"), "unknown"},
		{"no build info", "", nil, "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := describeVersion(tc.ldflags, tc.bi); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestVersionCommand(t *testing.T) {
	old := version
	version = "v9.9.9-test"
	t.Cleanup(func() { version = old })
	for _, arg := range []string{"version", "--version"} {
		var out, errOut bytes.Buffer
		err := run(t.Context(), []string{arg}, &out, &errOut)
		if err != nil || out.String() != "txsink v9.9.9-test\n" {
			t.Errorf("%s: %v, stdout %q, stderr %q; want txsink v9.9.9-test", arg, err, out.String(), errOut.String())
		}
	}
}
