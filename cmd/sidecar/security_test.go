package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/internal/testenv"
)

func TestExposureAndTimeoutChecks(t *testing.T) {
	for _, tc := range []struct {
		name    string
		extra   string
		wantErr string
	}{
		{"loopback v4", "http_addr: 127.0.0.1:8470\n", ""},
		{"loopback v6", "http_addr: \"[::1]:8470\"\n", ""},
		{"localhost", "http_addr: localhost:8470\n", ""},
		{"all interfaces", "http_addr: \":8470\"\n", "--insecure-no-token"},
		{"any v4", "http_addr: 0.0.0.0:8470\n", "set token_file"},
		{"host name", "http_addr: sidecar.example:8470\n", "reachable from other hosts"},
		{"token set", "http_addr: 0.0.0.0:8470\ntoken_file: /run/secrets/t\n", ""},
		{"forced", "http_addr: 0.0.0.0:8470\ninsecure_no_token: true\n", ""},
		{"tls half", "tls_cert_file: /c.pem\n", "set together"},
		{"tls both", "tls_cert_file: /c.pem\ntls_key_file: /k.pem\n", ""},
		{"negative timeout", "timeouts: {checkpoint: -1s}\n", "timeout checkpoint is negative"},
		{"negative read", "timeouts: {read: -1s}\n", "must not be negative"},
		{"timeouts", "timeouts: {write: 1s, checkpoint: 2s, session: 3s, commit: 4s, read: 5s, idle: 6s, ready: 7s}\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := LoadConfig(writeFile(t, goodConfig+tc.extra))
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
}

func TestInsecureNoTokenFlag(t *testing.T) {
	// An invalid log level makes Finish fail in both cases, so the sidecar
	// never starts; the refusal must be among the errors only without the
	// flag.
	for _, forced := range []bool{false, true} {
		args := []string{"--config", writeFile(t, goodConfig+"log: {level: nope}\n"), "--http-addr", "0.0.0.0:0"}
		if forced {
			args = append(args, "--insecure-no-token")
		}
		err := runConfig(context.Background(), args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "log.level") {
			t.Fatalf("forced=%v: got %v, want the log.level error", forced, err)
		}
		if refused := strings.Contains(err.Error(), "--insecure-no-token"); refused == forced {
			t.Fatalf("forced=%v: refused=%v (%v)", forced, refused, err)
		}
	}
}

func TestReadTokenFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name     string
		mode     os.FileMode
		body     string
		wantErr  string
		wantWarn bool
	}{
		{"owner only", 0o600, "s3cret\n", "", false},
		{"read only", 0o400, "s3cret", "", false},
		{"group", 0o640, "s3cret", "", true},
		{"others", 0o644, "s3cret", "others can read it", false},
		{"others write", 0o602, "s3cret", "others can read it", false},
		{"empty", 0o600, " \n", "is empty", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name)
			if err := os.WriteFile(p, []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, tc.mode); err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			tok, err := readTokenFile(p, slog.New(slog.NewTextHandler(&logs, nil)))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %q, %v; want an error containing %q", tok, err, tc.wantErr)
				}
				return
			}
			if err != nil || tok != "s3cret" {
				t.Fatalf("got %q, %v; want s3cret", tok, err)
			}
			if warned := strings.Contains(logs.String(), "level=WARN"); warned != tc.wantWarn {
				t.Fatalf("warned=%v, want %v (logs: %s)", warned, tc.wantWarn, logs.String())
			}
		})
	}
}

func TestTLSListener(t *testing.T) {
	certFile, keyFile, pool := testenv.SelfSigned(t, t.TempDir())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tln, err := tlsListener(ln, Config{TLSCertFile: certFile, TLSKeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
		ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(tln)
	t.Cleanup(func() { srv.Close() })
	url := "https://" + ln.Addr().String() + "/healthz"

	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET over TLS: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.TLS == nil || string(body) != "ok" {
		t.Fatalf("got TLS=%v body %q, want a TLS answer ok", resp.TLS != nil, body)
	}
	// A client that does not trust the certificate is refused, and so is
	// plain HTTP.
	if _, err := (&http.Client{Timeout: 10 * time.Second}).Get(url); err == nil {
		t.Fatal("GET with an untrusting client succeeded")
	}
	presp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + ln.Addr().String() + "/healthz")
	if err == nil {
		presp.Body.Close()
		if presp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP got 200 from the TLS listener")
		}
	}

	if _, err := tlsListener(ln, Config{TLSCertFile: certFile, TLSKeyFile: certFile}); err == nil {
		t.Fatal("a certificate as its own key was accepted")
	}
}
