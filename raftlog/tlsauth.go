package raftlog

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
)

// tlsAuth authenticates peers with mutual TLS 1.3 under a cluster CA. A peer
// is a cluster node when its certificate chains to the CA and carries the
// matching extended key usage (clientAuth when it dials us, serverAuth when
// we dial it); the dialer also checks that the certificate names the host it
// dialed (an IP or DNS SAN), as HTTPS does. The CA must therefore be
// dedicated to the cluster: whoever it signs for is a member.
type tlsAuth struct {
	cfg *tls.Config
}

func loadTLS(certFile, keyFile, caFile string) (*tlsAuth, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: raft TLS certificate: %w", ErrInvalidConfig, err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("%w: raft TLS CA: %w", ErrInvalidConfig, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%w: raft TLS CA %s holds no PEM certificate", ErrInvalidConfig, caFile)
	}
	return &tlsAuth{cfg: &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		RootCAs:      pool,
	}}, nil
}

func (a *tlsAuth) server(ctx context.Context, conn net.Conn) (net.Conn, error) {
	tc := tls.Server(conn, a.cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("raftlog: TLS handshake: %w", err)
	}
	return tc, nil
}

func (a *tlsAuth) client(ctx context.Context, conn net.Conn, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	cfg := a.cfg.Clone()
	cfg.ServerName = host
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("raftlog: TLS handshake: %w", err)
	}
	return tc, nil
}
