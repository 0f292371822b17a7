package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/txsink/txsink/twopc"
)

// checkTimeouts rejects negative timeouts.
func (c *Config) checkTimeouts() error {
	t := c.Timeouts
	if err := (twopc.Timeouts{Write: t.Write, Checkpoint: t.Checkpoint, Session: t.Session, Commit: t.Commit}).Validate(); err != nil {
		return fmt.Errorf("timeouts: %w", err)
	}
	if t.Read < 0 || t.Idle < 0 || t.Ready < 0 {
		return errors.New("timeouts: read, idle and ready must not be negative")
	}
	return nil
}

// checkExposure refuses an API reachable from other hosts without a token
// (anyone who reaches it could write and commit), unless the operator says
// the network is trusted, and TLS half configured.
func (c *Config) checkExposure() error {
	var errs []error
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("tls_cert_file and tls_key_file must be set together"))
	}
	if c.TokenFile == "" && !c.InsecureNoToken && !loopback(c.HTTPAddr) {
		errs = append(errs, fmt.Errorf("http_addr %q is reachable from other hosts and no token_file is set, so anyone "+
			"who reaches it could write and commit: set token_file (--token-file) to a file holding a secret token, "+
			"listen on 127.0.0.1, or pass --insecure-no-token (insecure_no_token: true) if the network is trusted", c.HTTPAddr))
	}
	return errors.Join(errs...)
}

// loopback reports whether a listen address only accepts local
// connections. An empty host (":8470") listens on every interface; a host
// name other than localhost may resolve to anything, so it counts as not
// loopback.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// readTokenFile reads the bearer token. A file others can read (or write)
// is refused: the token is the API's only secret. A file its group can read
// is allowed with a warning, since sharing a secret through a group is how
// containers usually get one (Kubernetes: defaultMode 0440 with fsGroup);
// Kubernetes' default 0644 is refused.
func readTokenFile(path string, log *slog.Logger) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("token_file: %w", err)
	}
	mode := fi.Mode().Perm()
	if mode&0o007 != 0 {
		return "", fmt.Errorf("token_file %s has mode %#o: others can read it; chmod 600 (or 640 for a group) it", path, mode)
	}
	if mode&0o070 != 0 {
		log.Warn("token_file can be read by its group; make sure only the sidecar and its apps are in it",
			"path", path, "mode", fmt.Sprintf("%#o", mode))
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token_file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token_file %s is empty", path)
	}
	return tok, nil
}

// tlsListener wraps ln in TLS when the config has a certificate.
func tlsListener(ln net.Listener, cfg Config) (net.Listener, error) {
	if cfg.TLSCertFile == "" {
		return ln, nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	return tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}), nil
}
