package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/txsink/txsink/twopc"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "txsink.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const goodConfig = `
data_dir: /tmp/x
sinks:
  events: {kind: kafka, brokers: ["127.0.0.1:9092"], default_topic: events}
  db: {kind: mysql, dsn: "root@unix(/s)/d", statements: {ins: "INSERT INTO t VALUES (?)"}}
jobs:
  demo: {commit: auto, sinks: [events, db]}
`

func TestLoadConfig(t *testing.T) {
	for _, tc := range []struct {
		name, body, wantErr string
	}{
		{"good", goodConfig, ""},
		{"unknown key", goodConfig + "colour: blue\n", "field colour not found"},
		{"unknown sink key", "sinks:\n  e: {kind: kafka, brokers: [a], topc: x}\n", "field topc not found"},
		{"unknown kind", "sinks:\n  e: {kind: redis}\n", `kind "redis"`},
		{"kafka without brokers", "sinks:\n  e: {kind: kafka}\n", "needs brokers"},
		{"mysql without dsn", "sinks:\n  d: {kind: mysql}\n", "needs dsn"},
		{"mixed fields", "sinks:\n  d: {kind: mysql, dsn: x, topics: [a]}\n", "take no brokers"},
		{"bad sink name", "sinks:\n  -bad: {kind: kafka, brokers: [a]}\n", "sink name"},
		{"no sinks", "data_dir: x\n", "no sinks"},
		{"job with unknown sink", goodConfig + "  other: {sinks: [nope]}\n", `unknown sink "nope"`},
		{"bad log format", goodConfig + "log: {format: xml}\n", "log.format"},
		{"join without peer credentials", goodConfig + "join: 127.0.0.1:1\n", "a cluster needs cluster_key_file or raft TLS"},
		{"join", goodConfig + "join: 127.0.0.1:1, http://127.0.0.2:8470\ncluster_key_file: k\n", ""},
		{"join with a bad address", goodConfig + "join: ftp://x:1\ncluster_key_file: k\n", `join address "ftp://x:1"`},
		{"join without port", goodConfig + "join: http://127.0.0.1\ncluster_key_file: k\n", "no port"},
		{"bootstrap_expect without join", goodConfig + "bootstrap_expect: 3\ncluster_key_file: k\n", "bootstrap_expect 3 needs join"},
		{"bootstrap_expect below 1", goodConfig + "bootstrap_expect: -1\njoin: 127.0.0.1:1\ncluster_key_file: k\n", "want at least 1"},
		{"bootstrap_expect non-voter", goodConfig + "bootstrap_expect: 3\nvoter: false\njoin: 127.0.0.1:1\ncluster_key_file: k\n", "a non-voter does not form"},
		{"non-voter without join", goodConfig + "voter: false\n", "voter: false needs join"},
		{"every interface, peers, no advertise_http", goodConfig + "http_addr: 0.0.0.0:8470\ntoken_file: t\ncluster_key_file: k\n", "set advertise_http"},
		{"every interface, peers, advertised", goodConfig + "http_addr: 0.0.0.0:8470\nraft_addr: 10.0.0.5:8471\ntoken_file: t\ncluster_key_file: k\nadvertise_http: http://10.0.0.5:8470\n", ""},
		{"raft on every interface, peers", goodConfig + "raft_addr: 0.0.0.0:8471\ncluster_key_file: k\n", "set advertise_raft"},
		{"advertise_http 0.0.0.0", goodConfig + "advertise_http: 0.0.0.0:8470\n", "advertise_http"},
		{"advertise_http http with TLS", goodConfig + "advertise_http: http://10.0.0.5:8470\ntls_cert_file: c\ntls_key_file: k\n", "advertise an https:// URL"},
		{"advertise_raft without port", goodConfig + "advertise_raft: 10.0.0.5\n", "advertise_raft"},
		// A StatefulSet pod's stable name: checked for syntax, not resolved
		// (.svc names do not resolve here, and may not yet in the pod).
		{"advertise_raft DNS name", goodConfig + "raft_addr: 0.0.0.0:8471\ncluster_key_file: k\nadvertise_raft: txsink-0.txsink.ns.svc:8471\n", ""},
		{"advertise_raft DNS name without port", goodConfig + "advertise_raft: txsink-0.txsink.ns.svc\n", "advertise_raft"},
		{"advertise_raft not a name", goodConfig + "advertise_raft: txsink 0.txsink:8471\n", "AdvertiseAddr"},
		{"advertise_raft unspecified", goodConfig + "advertise_raft: 0.0.0.0:8471\n", "advertise_raft"},
		{"negative join_timeout", goodConfig + "join_timeout: -1s\n", "join_timeout"},
		{"raft TLS incomplete", goodConfig + "raft_tls_cert_file: c.pem\n", "set all three"},
		{"raft TLS and cluster key", goodConfig + "raft_tls_cert_file: c\nraft_tls_key_file: k\nraft_tls_ca_file: ca\ncluster_key_file: f\n", "not both"},
		{"raft TLS", goodConfig + "raft_tls_cert_file: c\nraft_tls_key_file: k\nraft_tls_ca_file: ca\n", ""},
		{"cluster key", goodConfig + "cluster_key_file: /etc/txsink/cluster.key\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := LoadConfig(writeFile(t, tc.body))
			if err == nil {
				err = c.Finish()
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("got %v, want no error", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
	c, err := LoadConfig(writeFile(t, goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Finish(); err != nil {
		t.Fatal(err)
	}
	if c.Socket != "/tmp/x/sidecar.sock" || c.HTTPAddr != "127.0.0.1:8470" || c.RaftAddr != "127.0.0.1:8471" {
		t.Fatalf("defaults: got socket %q http %q raft %q", c.Socket, c.HTTPAddr, c.RaftAddr)
	}
}

func TestFlagsOverrideEnvOverrideFile(t *testing.T) {
	c := DefaultConfig()
	c.HTTPAddr, c.NodeID = "file:1", "filenode"
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	bindCommon(fs, &c)
	t.Setenv("TXSINK_HTTP_ADDR", "env:2")
	t.Setenv("TXSINK_NODE_ID", "envnode")
	if err := fs.Parse([]string{"--node-id", "flagnode"}); err != nil {
		t.Fatal(err)
	}
	if err := applyEnv(fs); err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != "env:2" || c.NodeID != "flagnode" {
		t.Fatalf("got http %q node %q, want env:2 (env over file) and flagnode (flag over env)", c.HTTPAddr, c.NodeID)
	}
}

// TestClusterFlagsAndEnv: the cluster keys come from flags and TXSINK_*
// like the others (flag over env over file), and the derived addresses.
func TestClusterFlagsAndEnv(t *testing.T) {
	c := DefaultConfig()
	c.Join = "file:1"
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	bindRun(fs, &c)
	t.Setenv("TXSINK_JOIN", "127.0.0.1:8470, http://127.0.0.2:8470,127.0.0.1:8470")
	t.Setenv("TXSINK_VOTER", "false")
	t.Setenv("TXSINK_BOOTSTRAP_EXPECT", "5")
	t.Setenv("TXSINK_JOIN_TIMEOUT", "7s")
	if err := fs.Parse([]string{"--bootstrap-expect", "3", "--advertise-raft", "10.0.0.9:8471"}); err != nil {
		t.Fatal(err)
	}
	if err := applyEnv(fs); err != nil {
		t.Fatal(err)
	}
	if c.Voter || c.BootstrapExpect != 3 || c.JoinTimeout != 7*time.Second || c.AdvertiseRaft != "10.0.0.9:8471" {
		t.Fatalf("got voter %v expect %d timeout %s advertise_raft %q", c.Voter, c.BootstrapExpect, c.JoinTimeout, c.AdvertiseRaft)
	}
	joins, err := c.joinAddrs()
	if err != nil || strings.Join(joins, " ") != "http://127.0.0.1:8470 http://127.0.0.2:8470" {
		t.Fatalf("join addresses %v %v, want two base URLs, no repeat", joins, err)
	}
	if rc := c.raftConfig(); rc.Bootstrap || rc.AdvertiseAddr != "10.0.0.9:8471" {
		t.Errorf("raft config with join: bootstrap %v advertise %q, want no bootstrap and the advertised address", rc.Bootstrap, rc.AdvertiseAddr)
	}
	if rc := DefaultConfig(); !rc.raftConfig().Bootstrap {
		t.Errorf("a node without join must bootstrap itself (sidecar dev, single nodes)")
	}
	for _, tc := range []struct{ httpAddr, advertise, tlsCert, listen, want string }{
		{"127.0.0.1:8470", "", "", "127.0.0.1:8470", "http://127.0.0.1:8470"},
		{"127.0.0.1:0", "", "", "127.0.0.1:41234", "http://127.0.0.1:41234"},
		{"127.0.0.1:8470", "", "c.pem", "127.0.0.1:8470", "https://127.0.0.1:8470"},
		{"0.0.0.0:8470", "", "", "[::]:8470", "http://127.0.0.1:8470"},
		{"0.0.0.0:8470", "node-a.example:8470", "", "[::]:8470", "http://node-a.example:8470"},
	} {
		c := DefaultConfig()
		c.HTTPAddr, c.AdvertiseHTTP, c.TLSCertFile = tc.httpAddr, tc.advertise, tc.tlsCert
		if got := c.advertisedAPI(tc.listen); got != tc.want {
			t.Errorf("http_addr %s advertise %q tls %q listening on %s: advertised %q, want %q", tc.httpAddr, tc.advertise, tc.tlsCert, tc.listen, got, tc.want)
		}
	}
}

func TestFailpointFromEnv(t *testing.T) {
	for _, tc := range []struct {
		v      string
		wantOK bool
	}{
		{"", true}, {"after-journal", true}, {"after-prepare:3", true},
		{"after-lunch", false}, {"after-journal:0", false}, {"after-journal:x", false},
	} {
		t.Setenv("TXSINK_FAILPOINT", tc.v)
		fp, err := failpointFromEnv()
		if (err == nil) != tc.wantOK {
			t.Errorf("TXSINK_FAILPOINT=%q: got err %v, want ok=%v", tc.v, err, tc.wantOK)
		}
		if tc.v == "" && fp != nil {
			t.Error("unset TXSINK_FAILPOINT must cost nothing (nil func)")
		}
		if fp != nil {
			fp("after-write") // another point never fires
		}
	}
}

func TestRunUsageErrors(t *testing.T) {
	var out, errOut strings.Builder
	for _, args := range [][]string{{}, {"frobnicate"}, {"run"}} {
		if err := run(t.Context(), args, &out, &errOut); err == nil {
			t.Errorf("sidecar %v: got no error", args)
		}
	}
	if err := run(t.Context(), []string{"version"}, &out, &errOut); err != nil || !strings.Contains(out.String(), "txsink") {
		t.Fatalf("version: %v %q", err, out.String())
	}
}

func TestOpenWithRetry(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	unreachable := fmt.Errorf("%w: dial unix /x: connection refused", twopc.ErrSinkFailure)
	tests := []struct {
		name      string
		errs      []error // one per attempt; nil = success
		wait      time.Duration
		wantCalls int
		wantErr   bool
	}{
		{"succeeds after the server comes up", []error{unreachable, unreachable, nil}, time.Minute, 3, false},
		{"a config error ends the wait", []error{errors.New("bad config")}, time.Minute, 1, true},
		{"an error the server sent ends the wait",
			[]error{fmt.Errorf("%w: create marker table: %w", twopc.ErrSinkFailure, &gomysql.MySQLError{Number: 1142})}, time.Minute, 1, true},
		{"too many connections is waited for",
			[]error{fmt.Errorf("%w: connect: %w", twopc.ErrSinkFailure, &gomysql.MySQLError{Number: 1040}), nil}, time.Minute, 2, false},
		{"gives up after sink_wait", []error{unreachable, unreachable, unreachable, unreachable}, 300 * time.Millisecond, 2, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			got, err := openWithRetry(context.Background(), log, tt.wait, func() (int, error) {
				e := tt.errs[calls]
				calls++
				if e != nil {
					return 0, e
				}
				return 42, nil
			})
			if calls != tt.wantCalls || (err != nil) != tt.wantErr || (!tt.wantErr && got != 42) {
				t.Errorf("got %d calls, (%d, %v); want %d calls, error %v", calls, got, err, tt.wantCalls, tt.wantErr)
			}
		})
	}
}

// TestResourceLimitKeys: the keys that bound resources parse into the
// config the sinks and the coordinator are built from.
func TestResourceLimitKeys(t *testing.T) {
	c, err := LoadConfig(writeFile(t, `
data_dir: /tmp/x
limits: {max_sessions: 5, max_writers_per_job: 7, session_idle_timeout: 90s}
sinks:
  events: {kind: kafka, brokers: ["127.0.0.1:9092"], default_topic: events, idle_client_timeout: 30s}
  db: {kind: mysql, dsn: "root@unix(/s)/d", statements: {ins: "INSERT INTO t VALUES (?)"}, max_conns: 20, reserved_conns: 2, conn_wait: 250ms}
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Finish(); err != nil {
		t.Fatal(err)
	}
	l, ev, db := c.Limits, c.Sinks["events"], c.Sinks["db"]
	if l.MaxSessions != 5 || l.MaxWritersPerJob != 7 || l.SessionIdleTimeout != 90*time.Second {
		t.Errorf("limits: got %+v, want 5 sessions, 7 writers, 90s idle", l)
	}
	if ev.IdleClientTimeout != 30*time.Second {
		t.Errorf("idle_client_timeout: got %v, want 30s", ev.IdleClientTimeout)
	}
	if db.MaxConns != 20 || db.ReservedConns != 2 || db.ConnWait != 250*time.Millisecond {
		t.Errorf("mysql pool: got max %d reserved %d wait %v, want 20, 2, 250ms", db.MaxConns, db.ReservedConns, db.ConnWait)
	}
}

// windowSink is a sink with a fixed commit window.
type windowSink struct {
	twopc.Sink
	w time.Duration
}

func (s windowSink) CommitWindow() time.Duration { return s.w }

func TestCommitWindowWarnings(t *testing.T) {
	sinks := map[string]twopc.Sink{
		"short": windowSink{w: 5 * time.Second},
		"long":  windowSink{w: 7 * time.Minute},
		"db":    nil, // no commit window: not Kafka
	}
	got := commitWindowWarnings(sinks, time.Minute)
	if len(got) != 1 || !strings.Contains(got[0], "sink short") || !strings.Contains(got[0], "5s left") {
		t.Errorf("got %q, want one warning naming sink short and its 5s", got)
	}
	if got := commitWindowWarnings(sinks, time.Second); len(got) != 0 {
		t.Errorf("with a 1s checkpoint timeout: got %q, want none", got)
	}
}
