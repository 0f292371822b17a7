package raftlog

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

var (
	testKey  = []byte("0123456789abcdef0123456789abcdef-test-key")
	otherKey = []byte("fedcba9876543210fedcba9876543210-other-key")
)

// tcpPair returns both ends of a real loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	deadline := time.Now().Add(5 * time.Second)
	client.SetDeadline(deadline)
	server.SetDeadline(deadline)
	return client, server
}

type hsResult struct {
	conn net.Conn
	err  error
}

// handshakePair runs a client and a server handshake against each other.
func handshakePair(t *testing.T, clientKey, serverKey []byte) (client, server hsResult) {
	t.Helper()
	c, s := tcpPair(t)
	done := make(chan hsResult, 1)
	go func() {
		conn, err := (&keyAuth{key: serverKey}).server(t.Context(), s)
		if err != nil {
			s.Close() // as the stream layer does: the client sees the refusal
		}
		done <- hsResult{conn, err}
	}()
	conn, err := (&keyAuth{key: clientKey}).client(t.Context(), c, s.LocalAddr().String())
	if err != nil {
		c.Close()
	}
	return hsResult{conn, err}, <-done
}

func TestHandshakeSuccessSealsTheSession(t *testing.T) {
	client, server := handshakePair(t, testKey, testKey)
	if client.err != nil || server.err != nil {
		t.Fatalf("handshake: client %v, server %v; want both nil", client.err, server.err)
	}
	// Larger than one frame, both ways at once.
	big := bytes.Repeat([]byte("raft entry "), 2*maxFrame/11+7)
	var wg sync.WaitGroup
	for _, pair := range [][2]net.Conn{{client.conn, server.conn}, {server.conn, client.conn}} {
		wg.Go(func() {
			if _, err := pair[0].Write(big); err != nil {
				t.Errorf("Write: %v", err)
			}
		})
		wg.Go(func() {
			got := make([]byte, len(big))
			if _, err := io.ReadFull(pair[1], got); err != nil {
				t.Errorf("Read: %v", err)
			} else if !bytes.Equal(got, big) {
				t.Errorf("read back %d bytes that differ from the %d written", len(got), len(big))
			}
		})
	}
	wg.Wait()
}

func TestHandshakeWrongKey(t *testing.T) {
	client, server := handshakePair(t, otherKey, testKey)
	if !errors.Is(client.err, errHandshake) || !strings.Contains(client.err.Error(), "does not know the cluster key") {
		t.Errorf("client error = %v, want a handshake error about the key", client.err)
	}
	if !errors.Is(server.err, errHandshake) {
		t.Errorf("server error = %v, want a handshake error", server.err)
	}
	if client.conn != nil || server.conn != nil {
		t.Errorf("handshake returned a connection despite the wrong key")
	}
}

func TestHandshakeRefusesBadPeers(t *testing.T) {
	// A valid transcript, recorded from a real client, to replay.
	var recorded bytes.Buffer
	{
		c, s := tcpPair(t)
		done := make(chan error, 1)
		go func() {
			_, err := (&keyAuth{key: testKey}).server(t.Context(), s)
			done <- err
		}()
		if _, err := (&keyAuth{key: testKey}).client(t.Context(), &recordingConn{Conn: c, w: &recorded}, ""); err != nil {
			t.Fatalf("client handshake to record: %v", err)
		}
		if err := <-done; err != nil {
			t.Fatalf("server handshake to record: %v", err)
		}
		if recorded.Len() != len(hsMagic)+nonceLen+macLen {
			t.Fatalf("recorded %d bytes from the client, want %d", recorded.Len(), len(hsMagic)+nonceLen+macLen)
		}
	}

	tests := []struct {
		name    string
		send    []byte // what the peer sends, then it waits
		close   bool   // the peer closes after sending
		wantErr error
	}{
		{"replayed client transcript", recorded.Bytes(), false, errHandshake},
		{"raft bytes without a handshake", []byte{0, 0x85, 0xa3, 'R', 'P', 'C', 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
			11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36},
			false, errHandshake},
		{"truncated hello", []byte(hsMagic + "short"), true, io.ErrUnexpectedEOF},
		{"silent peer hits the deadline", nil, false, os.ErrDeadlineExceeded},
		{"truncated proof", append(append([]byte(hsMagic), make([]byte, nonceLen)...), 1, 2, 3), true, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, s := tcpPair(t)
			s.SetDeadline(time.Now().Add(200 * time.Millisecond))
			done := make(chan hsResult, 1)
			go func() {
				conn, err := (&keyAuth{key: testKey}).server(t.Context(), s)
				done <- hsResult{conn, err}
			}()
			go func() {
				c.Write(tt.send)
				if tt.close {
					// Half-close: the server still gets to send its proof.
					c.(*net.TCPConn).CloseWrite()
				}
				io.Copy(io.Discard, c) // swallow the server's proof
			}()
			got := <-done
			if got.conn != nil || !errors.Is(got.err, tt.wantErr) {
				t.Errorf("server handshake = %v, %v; want no connection and %v", got.conn, got.err, tt.wantErr)
			}
		})
	}
}

func TestSealedConnRefusesTamperedFrames(t *testing.T) {
	tests := []struct {
		name   string
		tamper func(frame []byte) []byte
	}{
		{"flipped ciphertext bit", func(f []byte) []byte { f[10] ^= 1; return f }},
		{"flipped length", func(f []byte) []byte { f[3]--; return f[:len(f)-1] }},
		{"replayed frame", func(f []byte) []byte { return append(f, f...) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &keyAuth{key: testKey}
			nc, ns := bytes.Repeat([]byte{1}, nonceLen), bytes.Repeat([]byte{2}, nonceLen)
			var wire bytes.Buffer
			w, _ := a.seal(&recordingConn{w: &wire}, nc, ns, roleClient)
			if _, err := w.Write([]byte("append entries")); err != nil {
				t.Fatal(err)
			}
			r, _ := a.seal(&recordingConn{r: bytes.NewReader(tt.tamper(wire.Bytes()))}, nc, ns, roleServer)
			buf := make([]byte, 64)
			n, err := r.Read(buf)
			if tt.name == "replayed frame" {
				// The first copy is genuine; its replay must not be.
				if err != nil || string(buf[:n]) != "append entries" {
					t.Fatalf("first frame = %q, %v; want the genuine one", buf[:n], err)
				}
				n, err = r.Read(buf)
			}
			if err == nil {
				t.Fatalf("Read of a tampered stream = %q, nil; want an error", buf[:n])
			}
			if _, again := r.Read(buf); again == nil {
				t.Errorf("Read after a failure succeeded; want the error to stick")
			}
		})
	}
}

func TestLoadClusterKey(t *testing.T) {
	tests := []struct {
		name     string
		content  string
		mode     os.FileMode
		want     string // key, or "" for an error
		wantWarn bool   // a warning about the group is logged
	}{
		{"hex with newline", strings.Repeat("ab", 32) + "\n", 0o600, strings.Repeat("ab", 32), false},
		{"owner read only", strings.Repeat("k", 40), 0o400, strings.Repeat("k", 40), false},
		{"too short", strings.Repeat("k", MinClusterKeyLen-1) + "\n", 0o600, "", false},
		// Kubernetes mounts a Secret like this when the pod has fsGroup.
		{"readable by group (Kubernetes fsGroup)", strings.Repeat("k", 40), 0o440, strings.Repeat("k", 40), true},
		{"readable by group, owner writable", strings.Repeat("k", 40), 0o640, strings.Repeat("k", 40), true},
		{"readable by others", strings.Repeat("k", 40), 0o644, "", false},
		{"readable by others only", strings.Repeat("k", 40), 0o604, "", false},
		{"world readable", strings.Repeat("k", 40), 0o444, "", false},
		{"writable by others", strings.Repeat("k", 40), 0o602, "", false},
		{"group writable", strings.Repeat("k", 40), 0o660, "", false},
		{"group executable", strings.Repeat("k", 40), 0o650, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "cluster.key")
			if err := os.WriteFile(path, []byte(tt.content), tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil { // umask-proof
				t.Fatal(err)
			}
			h := newRecorder(slog.LevelInfo)
			key, err := loadClusterKey(path, slog.New(h))
			warned := false
			for _, r := range h.take() {
				if r.level == slog.LevelWarn && strings.Contains(r.msg, "group") && r.attrs["path"] == path {
					warned = true
				}
			}
			if warned != tt.wantWarn {
				t.Errorf("group warning logged = %v, want %v", warned, tt.wantWarn)
			}
			if tt.want == "" {
				if err == nil || !errors.Is(err, ErrInvalidConfig) {
					t.Errorf("loadClusterKey = %q, %v; want an ErrInvalidConfig", key, err)
				}
				return
			}
			if err != nil || string(key) != tt.want {
				t.Errorf("loadClusterKey = %q, %v; want %q", key, err, tt.want)
			}
		})
	}
	if _, err := loadClusterKey(filepath.Join(t.TempDir(), "missing"), slog.New(slog.DiscardHandler)); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("loadClusterKey(missing) = %v, want ErrInvalidConfig", err)
	}
}

func TestStreamLayerRefusesSilentPeerAndCloses(t *testing.T) {
	s, err := newStreamLayer("127.0.0.1:0", nil, &keyAuth{key: testKey}, 100*time.Millisecond, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	// The layer closes the silent connection after its handshake deadline.
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("silent peer's connection: %v, want closed by the node (EOF) before our 5s deadline", err)
	}
	eventually(t, "one refused connection counted", func() bool { return s.refused.Load() == 1 })

	// A good client still gets through, and Accept returns its connection.
	dialed := make(chan error, 1)
	go func() {
		conn, err := s.Dial(raft.ServerAddress(s.Addr().String()), 5*time.Second)
		if err == nil {
			_, err = conn.Write([]byte("hello raft"))
		}
		dialed <- err
	}()
	conn, err := s.Accept()
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	if err := <-dialed; err != nil {
		t.Fatalf("Dial: %v", err)
	}
	buf := make([]byte, 10)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "hello raft" {
		t.Errorf("read %q, %v; want %q", buf, err, "hello raft")
	}
	conn.Close()

	// Close ends Accept.
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := s.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close = %v, want net.ErrClosed", err)
	}
}

func TestStreamLayerWithoutAuthRefusesEverything(t *testing.T) {
	s, err := newStreamLayer("127.0.0.1:0", nil, nil, handshakeTimeout, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Dial(raft.ServerAddress(s.Addr().String()), time.Second); !errors.Is(err, ErrNoPeerAuth) {
		t.Errorf("Dial without auth = %v, want ErrNoPeerAuth", err)
	}
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte(hsMagic + strings.Repeat("n", nonceLen)))
	// Closed unread: EOF, or a reset when our hello was still unread.
	if n, err := io.Copy(io.Discard, c); (err != nil && !errors.Is(err, syscall.ECONNRESET)) || n != 0 {
		t.Errorf("connection to a node without auth: read %d bytes, %v; want closed unanswered", n, err)
	}
	eventually(t, "one refused connection counted", func() bool { return s.refused.Load() == 1 })
}

// recordingConn copies what is written to w and reads from r; the rest of
// net.Conn comes from Conn (nil in pure in-memory use).
type recordingConn struct {
	net.Conn
	w io.Writer
	r io.Reader
}

func (c *recordingConn) Write(p []byte) (int, error) {
	if c.w != nil {
		c.w.Write(p)
	}
	if c.Conn == nil {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *recordingConn) Read(p []byte) (int, error) {
	if c.r != nil {
		return c.r.Read(p)
	}
	return c.Conn.Read(p)
}

// eventually fails the test unless cond becomes true within 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestTLSDialerChecksTheServerName(t *testing.T) {
	ca := NewTestCA(t, "cluster CA")
	load := func(ip net.IP) *tlsAuth {
		a, err := loadTLS(ca.nodeFilesFor(t, "node", ip))
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	for _, tt := range []struct {
		name   string
		server net.IP
		wantOK bool
	}{
		{"certificate for the dialed IP", net.IPv4(127, 0, 0, 1), true},
		{"certificate for another IP", net.IPv4(10, 9, 9, 9), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := newStreamLayer("127.0.0.1:0", nil, load(tt.server), time.Second, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			cli, err := newStreamLayer("127.0.0.1:0", nil, load(net.IPv4(127, 0, 0, 1)), time.Second, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			conn, err := cli.Dial(raft.ServerAddress(srv.Addr().String()), 5*time.Second)
			if err == nil {
				conn.Close()
			}
			if (err == nil) != tt.wantOK {
				t.Errorf("Dial = %v, want ok %v", err, tt.wantOK)
			}
		})
	}
}

func TestRefusedLogIsRateLimited(t *testing.T) {
	var l refusedLog
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at             time.Duration
		wantOK         bool
		wantSuppressed uint64
	}{
		{0, true, 0},
		{100 * time.Millisecond, false, 0},
		{900 * time.Millisecond, false, 0},
		{refusedLogEvery, true, 2},
		{refusedLogEvery + time.Millisecond, false, 0},
		{3 * refusedLogEvery, true, 1},
	}
	for i, s := range steps {
		n, ok := l.allow(t0.Add(s.at))
		if ok != s.wantOK || (ok && n != s.wantSuppressed) {
			t.Errorf("step %d at %v: allow = %d, %v; want %d, %v", i, s.at, n, ok, s.wantSuppressed, s.wantOK)
		}
	}
}
