package raftlog_test

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/raftlog"
)

// waitFor is how long tests poll a condition before failing.
const waitFor = 10 * time.Second

func testConfig(t *testing.T, dir string) raftlog.Config {
	t.Helper()
	return raftlog.Config{
		Dir:       dir,
		BindAddr:  "127.0.0.1:0",
		Bootstrap: true,
		Logger:    slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
}

// open opens a node, closing it when the test ends.
func open(t *testing.T, cfg raftlog.Config, sm raftlog.StateMachine) *raftlog.Node {
	t.Helper()
	n, err := raftlog.Open(cfg, sm)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return n
}

// openLeader opens a node and waits until it leads with its state caught up.
func openLeader(t *testing.T, cfg raftlog.Config, sm raftlog.StateMachine) *raftlog.Node {
	t.Helper()
	n := open(t, cfg, sm)
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	if err := n.WaitLeader(ctx); err != nil {
		t.Fatalf("WaitLeader: %v", err)
	}
	if !n.IsLeader() {
		t.Fatalf("IsLeader = false after WaitLeader on a single node, want true")
	}
	return n
}

func propose(t *testing.T, n *raftlog.Node, cmd string) any {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	got, err := n.Propose(ctx, []byte(cmd))
	if err != nil {
		t.Fatalf("Propose(%q): %v", cmd, err)
	}
	return got
}

// poll fails the test unless cond becomes true within waitFor.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     raftlog.Config
		wantErr bool
	}{
		{"defaults with dir", raftlog.Config{Dir: "d"}, false},
		{"DefaultConfig with dir", func() raftlog.Config { c := raftlog.DefaultConfig(); c.Dir = "d"; return c }(), false},
		{"no dir", raftlog.Config{}, true},
		{"bad bind addr", raftlog.Config{Dir: "d", BindAddr: "localhost"}, true},
		{"advertise port 0", raftlog.Config{Dir: "d", AdvertiseAddr: "10.0.0.1:0"}, true},
		{"advertise unspecified", raftlog.Config{Dir: "d", AdvertiseAddr: "0.0.0.0:8471"}, true},
		{"advertise ok", raftlog.Config{Dir: "d", AdvertiseAddr: "10.0.0.1:8471"}, false},
		{"advertise IPv6", raftlog.Config{Dir: "d", AdvertiseAddr: "[fd00::5]:8471"}, false},
		{"advertise unspecified IPv6", raftlog.Config{Dir: "d", AdvertiseAddr: "[::]:8471"}, true},
		// A name is checked for syntax only, never resolved: .invalid never
		// resolves, and a StatefulSet pod's name may not resolve yet at start.
		{"advertise DNS name", raftlog.Config{Dir: "d", AdvertiseAddr: "txsink-0.txsink.ns.svc:8471"}, false},
		{"advertise unresolvable name", raftlog.Config{Dir: "d", AdvertiseAddr: "node-1.raft.invalid:8471"}, false},
		{"advertise FQDN with trailing dot", raftlog.Config{Dir: "d", AdvertiseAddr: "txsink-0.txsink.ns.svc.cluster.local.:8471"}, false},
		{"advertise localhost", raftlog.Config{Dir: "d", AdvertiseAddr: "localhost:8471"}, false},
		{"advertise name port 0", raftlog.Config{Dir: "d", AdvertiseAddr: "txsink-0.txsink:0"}, true},
		{"advertise name without port", raftlog.Config{Dir: "d", AdvertiseAddr: "txsink-0.txsink"}, true},
		{"advertise name port too big", raftlog.Config{Dir: "d", AdvertiseAddr: "txsink-0.txsink:65536"}, true},
		{"advertise name port not a number", raftlog.Config{Dir: "d", AdvertiseAddr: "txsink-0.txsink:raft"}, true},
		{"advertise no host", raftlog.Config{Dir: "d", AdvertiseAddr: ":8471"}, true},
		{"advertise name with space", raftlog.Config{Dir: "d", AdvertiseAddr: "txsink 0:8471"}, true},
		{"advertise name with empty label", raftlog.Config{Dir: "d", AdvertiseAddr: "txsink..ns:8471"}, true},
		{"advertise label starting with hyphen", raftlog.Config{Dir: "d", AdvertiseAddr: "-txsink.ns:8471"}, true},
		{"advertise label over 63 bytes", raftlog.Config{Dir: "d", AdvertiseAddr: strings.Repeat("a", 64) + ".ns:8471"}, true},
		{"advertise bad IPv4", raftlog.Config{Dir: "d", AdvertiseAddr: "10.0.0.300:8471"}, true},
		{"advertise URL", raftlog.Config{Dir: "d", AdvertiseAddr: "http://txsink-0:8471"}, true},
		{"heartbeat too low", raftlog.Config{Dir: "d", HeartbeatTimeout: time.Millisecond}, true},
		{"lease above heartbeat", raftlog.Config{Dir: "d", HeartbeatTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: 200 * time.Millisecond}, true},
		{"short heartbeat shortens default lease", raftlog.Config{Dir: "d", HeartbeatTimeout: 50 * time.Millisecond}, false},
		{"TLS cert without key and CA", raftlog.Config{Dir: "d", TLSCertFile: "c"}, true},
		{"TLS without CA", raftlog.Config{Dir: "d", TLSCertFile: "c", TLSKeyFile: "k"}, true},
		{"TLS complete", raftlog.Config{Dir: "d", TLSCertFile: "c", TLSKeyFile: "k", TLSCAFile: "ca"}, false},
		{"cluster key", raftlog.Config{Dir: "d", ClusterKeyFile: "f"}, false},
		{"TLS and cluster key", raftlog.Config{Dir: "d", TLSCertFile: "c", TLSKeyFile: "k", TLSCAFile: "ca", ClusterKeyFile: "f"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Validate() = %v, want error %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, raftlog.ErrInvalidConfig) {
				t.Errorf("Validate() = %v, want it to wrap ErrInvalidConfig", err)
			}
		})
	}
}

func TestProposeReturnsStateMachineResult(t *testing.T) {
	sm := &raftlog.Counters{}
	n := openLeader(t, testConfig(t, t.TempDir()), sm)

	for i, tt := range []struct {
		cmd  string
		want int
	}{{"a", 1}, {"a", 2}, {"b", 1}, {"a", 3}} {
		before := sm.Index()
		if got := propose(t, n, tt.cmd); got != tt.want {
			t.Errorf("Propose #%d(%q) = %v, want %d", i, tt.cmd, got, tt.want)
		}
		// Apply learned the entry's index: above the previous command's,
		// and within the log.
		if idx := sm.Index(); idx <= before || idx > n.Status().LastIndex {
			t.Errorf("Propose #%d: state machine saw index %d, want above %d and at most the last index %d",
				i, idx, before, n.Status().LastIndex)
		}
	}

	st := n.Status()
	if st.Role != "leader" || st.ID != "node1" || st.LeaderID != "node1" || st.LeaderAddr != n.Addr() {
		t.Errorf("Status = %+v, want leader node1 at %s", st, n.Addr())
	}
	if len(st.Members) != 1 || st.Members[0] != (raftlog.Member{ID: "node1", Addr: n.Addr(), Voter: true}) {
		t.Errorf("Members = %+v, want [node1 at %s, voter]", st.Members, n.Addr())
	}
	if st.AppliedIndex < 4 || st.CommitIndex < st.AppliedIndex || st.LastIndex < st.CommitIndex {
		t.Errorf("indexes applied=%d commit=%d last=%d, want 4 <= applied <= commit <= last",
			st.AppliedIndex, st.CommitIndex, st.LastIndex)
	}
	if strings.HasSuffix(n.Addr(), ":0") {
		t.Errorf("Addr = %s, want the real port", n.Addr())
	}
}

func TestRestartRestoresState(t *testing.T) {
	tests := []struct {
		name          string
		before, after []string // proposed before and after a forced snapshot
		snapshot      bool
		wantRestores  int
		wantReplayed  int // commands re-applied on restart
	}{
		{name: "log replay", before: []string{"a", "b", "a", "c", "a"}, wantReplayed: 5},
		{name: "snapshot only", before: []string{"a", "b", "a"}, snapshot: true, wantRestores: 1},
		{name: "snapshot and replay", before: []string{"a", "b", "a"}, after: []string{"c", "a"},
			snapshot: true, wantRestores: 1, wantReplayed: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig(t, dir)
			cfg.TrailingLogs = 1 // compact hard, so a restart really needs the snapshot
			first := &raftlog.Counters{}
			n := openLeader(t, cfg, first)
			for _, c := range tt.before {
				propose(t, n, c)
			}
			if tt.snapshot {
				if err := n.Snapshot(); err != nil {
					t.Fatalf("Snapshot: %v", err)
				}
				if st := n.Status(); st.LastSnapshotIndex == 0 {
					t.Fatalf("LastSnapshotIndex = 0 after Snapshot, want > 0")
				}
			}
			for _, c := range tt.after {
				propose(t, n, c)
			}
			want := first.State()
			if err := n.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}

			// Bootstrap stays on: a Dir with state must not be bootstrapped again.
			second := &raftlog.Counters{}
			n2 := openLeader(t, cfg, second)
			if got := second.State(); !maps.Equal(got, want) {
				t.Errorf("state after restart = %v, want %v", got, want)
			}
			applies, restores := second.Calls()
			if applies != tt.wantReplayed || restores != tt.wantRestores {
				t.Errorf("restart applied %d commands and %d snapshots, want %d and %d",
					applies, restores, tt.wantReplayed, tt.wantRestores)
			}
			if got, want := propose(t, n2, "a"), want["a"]+1; got != want {
				t.Errorf("Propose(a) after restart = %v, want %d", got, want)
			}
			// The node listens on a new port; the configuration follows it.
			poll(t, "own address in configuration updated", func() bool {
				m := n2.Status().Members
				return len(m) == 1 && m[0].Addr == n2.Addr()
			})
		})
	}
}

func TestClosedNode(t *testing.T) {
	n := openLeader(t, testConfig(t, t.TempDir()), &raftlog.Counters{})
	changes := n.LeadershipChanges()
	if err := n.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := n.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	ctx := t.Context()
	if _, err := n.Propose(ctx, []byte("a")); !errors.Is(err, raftlog.ErrClosed) {
		t.Errorf("Propose after Close = %v, want ErrClosed", err)
	}
	if err := n.WaitLeader(ctx); !errors.Is(err, raftlog.ErrClosed) {
		t.Errorf("WaitLeader after Close = %v, want ErrClosed", err)
	}
	if err := n.Snapshot(); !errors.Is(err, raftlog.ErrClosed) {
		t.Errorf("Snapshot after Close = %v, want ErrClosed", err)
	}
	if got := n.Status().Role; got != "shutdown" {
		t.Errorf("Role after Close = %q, want shutdown", got)
	}
	if n.IsLeader() {
		t.Errorf("IsLeader after Close = true, want false")
	}
	timeout := time.After(waitFor)
	for open := true; open; {
		select {
		case _, open = <-changes:
		case <-timeout:
			t.Fatalf("LeadershipChanges not closed after Close")
		}
	}
}

func TestLeadershipChanges(t *testing.T) {
	n := open(t, testConfig(t, t.TempDir()), &raftlog.Counters{})
	select {
	case got := <-n.LeadershipChanges():
		if !got {
			t.Errorf("first leadership change = false, want true")
		}
	case <-time.After(waitFor):
		t.Fatalf("no leadership change within %v", waitFor)
	}
	if got := n.LeaderChanges(); got != 1 {
		t.Errorf("LeaderChanges() = %d after becoming leader, want 1", got)
	}
}

func TestProposeRespectsContext(t *testing.T) {
	sm := &raftlog.Counters{Block: make(chan struct{}), Blocking: make(chan struct{})}
	n := openLeader(t, testConfig(t, t.TempDir()), sm)

	// Hold up the state machine so no later proposal can complete.
	blocked := make(chan error, 1)
	go func() {
		_, err := n.Propose(context.Background(), []byte("block"))
		blocked <- err
	}()
	select {
	case <-sm.Blocking:
	case <-time.After(waitFor):
		t.Fatalf("state machine did not start applying %q", "block")
	}

	tests := []struct {
		name    string
		cmd     string
		ctx     func() (context.Context, context.CancelFunc)
		wantErr []error
	}{
		{"already canceled", "never", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			return ctx, cancel
		}, []error{context.Canceled}},
		{"deadline passes while waiting", "late", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(t.Context(), 50*time.Millisecond)
		}, []error{raftlog.ErrTimeout, context.DeadlineExceeded}},
		{"canceled while waiting", "late", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(t.Context())
			time.AfterFunc(50*time.Millisecond, cancel)
			return ctx, cancel
		}, []error{context.Canceled}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := tt.ctx()
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := n.Propose(ctx, []byte(tt.cmd))
				done <- err
			}()
			select {
			case err := <-done:
				for _, want := range tt.wantErr {
					if !errors.Is(err, want) {
						t.Errorf("Propose = %v, want it to wrap %v", err, want)
					}
				}
			case <-time.After(waitFor):
				t.Fatalf("Propose did not return after its context ended")
			}
		})
	}

	close(sm.Block)
	if err := <-blocked; err != nil {
		t.Fatalf("blocked Propose: %v", err)
	}
	// Both proposals of "late" were appended before their contexts ended, so
	// they are applied anyway: the outcome of a timed-out Propose is unknown.
	if got := propose(t, n, "late"); got != 3 {
		t.Errorf("Propose(late) = %v, want 3", got)
	}
	if got := sm.State()["never"]; got != 0 {
		t.Errorf("counter of a proposal canceled before the call = %d, want 0", got)
	}
}

func TestNoLeaderWithoutBootstrap(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Bootstrap = false
	n := open(t, cfg, &raftlog.Counters{})

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := n.WaitLeader(ctx); !errors.Is(err, raftlog.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitLeader = %v, want ErrTimeout and DeadlineExceeded", err)
	}
	_, err := n.Propose(t.Context(), []byte("a"))
	var nle *raftlog.NotLeaderError
	if !errors.Is(err, raftlog.ErrNotLeader) || !errors.As(err, &nle) || nle.LeaderID != "" {
		t.Errorf("Propose = %v, want a NotLeaderError with no leader", err)
	}
	if st := n.Status(); st.Role != "follower" || len(st.Members) != 0 {
		t.Errorf("Status = %+v, want a follower with no members", st)
	}
}

func TestDirLocked(t *testing.T) {
	dir := t.TempDir()
	open(t, testConfig(t, dir), &raftlog.Counters{})
	n, err := raftlog.Open(testConfig(t, dir), &raftlog.Counters{})
	if err == nil {
		n.Close()
	}
	if !errors.Is(err, raftlog.ErrDirLocked) {
		t.Errorf("second Open of one dir = %v, want ErrDirLocked", err)
	}
}

func TestGoroutinesStopAfterClose(t *testing.T) {
	before := runtime.NumGoroutine()

	n, err := raftlog.Open(testConfig(t, t.TempDir()), &raftlog.Counters{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	if err := n.WaitLeader(ctx); err != nil {
		t.Fatalf("WaitLeader: %v", err)
	}
	for _, c := range []string{"a", "b"} {
		propose(t, n, c)
	}
	if err := n.Snapshot(); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	_ = n.Status()
	if err := n.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	deadline := time.Now().Add(waitFor)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after Close, want <= %d:\n%s",
				runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}
