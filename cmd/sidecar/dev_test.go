package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestBannerStopCommand: the stop command the banner prints must run when
// pasted, so it names the binary as invoked (bin/sidecar under make run)
// and the data dir, not a bare "sidecar" that is not on the PATH.
func TestBannerStopCommand(t *testing.T) {
	for _, tc := range []struct {
		name, self, dataDir, want string
		withDB                    bool
	}{
		{"make run", "bin/sidecar", "./data", "\n  bin/sidecar dev --stop-broker --data-dir ./data\n", true},
		{"on PATH", "sidecar", "/var/lib/txsink", "\n  sidecar dev --stop-broker --data-dir /var/lib/txsink\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			printBanner(&b, bannerInfo{httpAddr: "127.0.0.1:8470", socket: "data/sidecar.sock", broker: "127.0.0.1:9092",
				dataDir: tc.dataDir, mysqlNote: "note", self: tc.self, brokerPID: 42, withDB: tc.withDB})
			out := b.String()
			if !strings.Contains(out, tc.want) {
				t.Errorf("banner lacks %q; got:\n%s", tc.want, out)
			}
			if got := strings.Contains(out, "insert_event"); got != tc.withDB {
				t.Errorf("banner shows the db example: got %v, want %v", got, tc.withDB)
			}
		})
	}
}
