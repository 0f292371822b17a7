package api_test

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "txsink-unix")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestListenUnix(t *testing.T) {
	dir := shortDir(t)
	path := filepath.Join(dir, "a.sock")

	// A stale socket file (nobody listening) is replaced.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket file: %v", err)
	}
	ln, err := api.ListenUnix(path)
	if err != nil {
		t.Fatalf("ListenUnix over a stale socket: %v", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v, want a socket with 0660", fi.Mode())
	}

	// A live socket is not stolen.
	if _, err := api.ListenUnix(path); err == nil || !strings.Contains(err.Error(), "listening") {
		t.Fatalf("ListenUnix over a live socket: got %v, want an error", err)
	}

	// Serving and shutting down removes the file.
	e := newEnv(t)
	srv, err := api.New(e.coord, api.Config{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	if err := client.NewUnix(path).Health(context.Background()); err != nil {
		t.Fatalf("health over the socket: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve after Shutdown: got %v, want nil", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket file after Shutdown: got %v, want it removed", err)
	}

	// A regular file is never removed.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := api.ListenUnix(file); err == nil {
		t.Fatal("ListenUnix over a regular file: got no error")
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep" {
		t.Fatalf("regular file after ListenUnix: %q, %v", b, err)
	}
}

// nopService takes writes and does nothing: the benchmark measures the API.
type nopService struct{ api.Service }

func (nopService) Write(_ context.Context, _, _ string, _ uint64, seq *twopc.Seq, recs []*twopc.Record) (twopc.WriteResult, error) {
	return twopc.WriteResult{Accepted: len(recs)}, nil
}

// BenchmarkWrite is one write call of 1,000 ~100-byte records through HTTP
// (client encode-free NDJSON, server read, decode, reply).
func BenchmarkWrite(b *testing.B) {
	srv, err := api.New(nopService{}, api.Config{})
	if err != nil {
		b.Fatal(err)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "txsink-bench")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	unix, err := api.ListenUnix(filepath.Join(dir, "s.sock"))
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(tcp)
	go srv.Serve(unix)
	defer srv.Shutdown(context.Background())
	var body strings.Builder
	for i := range 1000 {
		body.WriteString(`{"sink":"events","topic":"pv","key":"user-` + strings.Repeat("0", 6) + `","value":"page=/articles/` + string(rune('a'+i%26)) + `&ref=search&t=1700000000"}` + "\n")
	}
	payload := []byte(body.String())
	for _, c := range []struct {
		name string
		c    *client.Client
	}{{"tcp", client.New("http://" + tcp.Addr().String())}, {"unix", client.NewUnix(filepath.Join(dir, "s.sock"))}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			ctx := context.Background()
			for b.Loop() {
				if _, err := c.c.WriteNDJSON(ctx, "j", "w", 1, nil, payload); err != nil {
					b.Fatal(err)
				}
			}
		})
		// With seq the API also hashes the body: compare with the above.
		b.Run(c.name+"-seq", func(b *testing.B) {
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			ctx := context.Background()
			var seq int64
			for b.Loop() {
				seq++
				if _, err := c.c.WriteNDJSON(ctx, "j", "w", 1, &seq, payload); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
