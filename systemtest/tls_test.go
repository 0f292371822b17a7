package systemtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/testenv"
	"github.com/txsink/txsink/twopc"
)

// The sidecar serves its TCP listener over TLS with tls_cert_file and
// tls_key_file, requires the token from a 0600 token_file, and a whole
// checkpoint goes through HTTPS; plain HTTP and an untrusting client fail.
func TestTLSAndToken(t *testing.T) {
	broker := startBroker(t)
	n := newNode(t, kafkaSinkYAML(broker))
	certFile, keyFile, pool := testenv.SelfSigned(t, n.dir)
	tokenFile := filepath.Join(n.dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n.appendConfig(fmt.Sprintf("tls_cert_file: %s\ntls_key_file: %s\ntoken_file: %s\n", certFile, keyFile, tokenFile))

	n.logs = &testenv.Buffer{}
	n.cmd = exec.Command(sidecarBin, "run", "--config", n.cfgPath)
	n.cmd.Stdout, n.cmd.Stderr = n.logs, n.logs
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.done = make(chan struct{})
	go func() { n.cmd.Wait(); close(n.done) }()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	t.Cleanup(tr.CloseIdleConnections)
	base := "https://" + n.httpAddr
	c := client.New(base, client.WithHTTPClient(&http.Client{Transport: tr}), client.WithToken("s3cret-token"))
	waitReady(t, c, n.cmd, n.done, n.logs)

	s := openJob(t, c, "j", twopc.ModeAuto, "0")
	mustWrite(t, c, "j", "0", s.Epoch, values(0, 5))
	mustCheckpoint(t, c, "j", "0", s.Epoch, 1, twopc.StatusCommitted)
	wantExactly(t, broker, values(0, 5))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	noToken := client.New(base, client.WithHTTPClient(&http.Client{Transport: tr}))
	if _, err := noToken.Jobs(ctx); client.Code(err) != "unauthorized" {
		t.Fatalf("HTTPS without the token: got %v, want 401 unauthorized", err)
	}
	if err := client.New(base).Health(ctx); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a client that does not trust the certificate: got %v, want a certificate error", err)
	}
	if err := client.New("http://"+n.httpAddr, client.WithToken("s3cret-token")).Health(ctx); err == nil {
		t.Fatal("plain HTTP to the TLS listener succeeded")
	}
}
