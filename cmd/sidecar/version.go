package main

import (
	"runtime/debug"
	"strings"
)

// version is set at build time: go build -ldflags "-X main.version=$(git
// describe --tags --always --dirty)" (the Makefile does). Empty means the
// build did not set it; versionString then asks the build info.
var version string

// versionString is what "sidecar version" prints after "txsink".
func versionString() string {
	bi, _ := debug.ReadBuildInfo()
	return describeVersion(version, bi)
}

// describeVersion prefers the -X version; otherwise it falls back to what
// the go command stamped into the binary: the module version (set by
// go install module@version) and the VCS revision of a build inside a
// checkout, marked "-dirty" when the tree had changes. go run and go test
// binaries carry neither, hence "unknown".
func describeVersion(ldflags string, bi *debug.BuildInfo) string {
	if ldflags != "" {
		return ldflags
	}
	if bi == nil {
		return "unknown"
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	var parts []string
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		parts = append(parts, v)
	}
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if modified == "true" {
			rev += "-dirty"
		}
		parts = append(parts, rev)
	}
	if len(parts) == 0 {
		return "unknown"
	}
	return strings.Join(parts, " ")
}
