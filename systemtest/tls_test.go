package systemtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

// writeCert writes a self-signed certificate for 127.0.0.1 and its key
// into dir and returns their paths and a pool that trusts the certificate.
func writeCert(t *testing.T, dir string) (string, string, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "txsink systemtest"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// The sidecar serves its TCP listener over TLS with tls_cert_file and
// tls_key_file, requires the token from a 0600 token_file, and a whole
// checkpoint goes through HTTPS; plain HTTP and an untrusting client fail.
func TestTLSAndToken(t *testing.T) {
	broker := startBroker(t)
	n := newNode(t, kafkaSinkYAML(broker))
	certFile, keyFile, pool := writeCert(t, n.dir)
	tokenFile := filepath.Join(n.dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n.appendConfig(fmt.Sprintf("tls_cert_file: %s\ntls_key_file: %s\ntoken_file: %s\n", certFile, keyFile, tokenFile))

	n.logs = &syncBuf{}
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
