package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/txsink/txsink/api"
)

// DefaultJoinTimeout bounds the start-up of a node that joins or forms a
// cluster: it retries the members in --join and waits for a leader this
// long before it gives up (join_timeout).
const DefaultJoinTimeout = 2 * time.Minute

// bindRun binds the flags of sidecar run: the common ones and the cluster's.
func bindRun(fs *flag.FlagSet, c *Config) {
	bindCommon(fs, c)
	bindCluster(fs, c)
}

// bindCluster binds the flags of cluster forming (sidecar run only; the dev
// node is always a single node).
func bindCluster(fs *flag.FlagSet, c *Config) {
	fs.StringVar(&c.Join, "join", c.Join, "HTTP API addresses of cluster members to join, comma separated (host:port or URLs) [TXSINK_JOIN]")
	fs.IntVar(&c.BootstrapExpect, "bootstrap-expect", c.BootstrapExpect, "form a new cluster once this many voters (this one included) found each other through --join [TXSINK_BOOTSTRAP_EXPECT]")
	fs.BoolVar(&c.Voter, "voter", c.Voter, "join as a voter; --voter=false joins as a non-voter [TXSINK_VOTER]")
	fs.StringVar(&c.AdvertiseHTTP, "advertise-http", c.AdvertiseHTTP, "URL (or host:port) other nodes use for this node's API (default: from --http-addr) [TXSINK_ADVERTISE_HTTP]")
	fs.StringVar(&c.AdvertiseRaft, "advertise-raft", c.AdvertiseRaft, "host:port other nodes use for this node's Raft port, an IP or a DNS name (default: --raft-addr) [TXSINK_ADVERTISE_RAFT]")
	fs.StringVar(&c.TLSCAFile, "tls-ca-file", c.TLSCAFile, "PEM CA of the other nodes' API certificates, for calls between nodes [TXSINK_TLS_CA_FILE]")
	fs.DurationVar(&c.JoinTimeout, "join-timeout", c.JoinTimeout, "how long start-up tries to join or form the cluster and find a leader [TXSINK_JOIN_TIMEOUT]")
}

// peersConfigured: the node has raft peer credentials (a cluster key or
// raft TLS), so it can be part of a cluster.
func (c *Config) peersConfigured() bool {
	return c.ClusterKeyFile != "" || c.RaftTLSCertFile != ""
}

// joinAddrs returns the --join addresses as base URLs (scheme://host:port),
// in the order given, without repeats.
func (c *Config) joinAddrs() ([]string, error) {
	var out []string
	var errs []error
	seen := map[string]bool{}
	for a := range strings.SplitSeq(c.Join, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		u, err := api.ParseBaseURL(a)
		if err != nil {
			errs = append(errs, fmt.Errorf("join address %q: %v", a, err))
			continue
		}
		if !seen[u] {
			seen[u] = true
			out = append(out, u)
		}
	}
	return out, errors.Join(errs...)
}

// checkCluster checks the cluster keys: clear errors, nothing half-applied.
func (c *Config) checkCluster() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	joins, err := c.joinAddrs()
	if err != nil {
		errs = append(errs, err)
	}
	if strings.TrimSpace(c.Join) != "" && len(joins) == 0 && err == nil {
		bad("join %q names no address", c.Join)
	}
	joining := strings.TrimSpace(c.Join) != ""
	if joining && !c.peersConfigured() {
		bad("join %q: a cluster needs cluster_key_file or raft TLS (raft_tls_cert_file, raft_tls_key_file, raft_tls_ca_file) "+
			"on every node; without them a node accepts no raft peer", c.Join)
	}
	switch {
	case c.BootstrapExpect < 0:
		bad("bootstrap_expect %d: want at least 1 (the number of voters that form the cluster, this one included)", c.BootstrapExpect)
	case c.BootstrapExpect > 0 && !joining:
		bad("bootstrap_expect %d needs join: the API addresses of the other nodes to find", c.BootstrapExpect)
	case c.BootstrapExpect > 0 && !c.Voter:
		bad("bootstrap_expect with voter: false: a non-voter does not form a cluster; drop bootstrap_expect and let it join")
	}
	if !c.Voter && !joining {
		bad("voter: false needs join: a non-voter joins an existing cluster")
	}
	if c.JoinTimeout < 0 {
		bad("join_timeout %s must not be negative", c.JoinTimeout)
	}
	if c.AdvertiseHTTP != "" {
		u, err := api.ParseBaseURL(c.AdvertiseHTTP)
		switch {
		case err != nil:
			bad("advertise_http %q: %v", c.AdvertiseHTTP, err)
		case c.TLSCertFile != "" && strings.HasPrefix(u, "http://"):
			bad("advertise_http %q: the API is served over TLS (tls_cert_file); advertise an https:// URL", c.AdvertiseHTTP)
		case c.TLSCertFile == "" && strings.HasPrefix(u, "https://"):
			bad("advertise_http %q: the API is served without TLS; advertise an http:// URL", c.AdvertiseHTTP)
		}
	} else if c.peersConfigured() && unspecifiedHost(c.HTTPAddr) {
		bad("http_addr %q listens on every interface: set advertise_http (--advertise-http) to the address other nodes reach this node's API at", c.HTTPAddr)
	}
	if c.AdvertiseRaft != "" {
		if err := api.CheckHostPort(c.AdvertiseRaft); err != nil {
			bad("advertise_raft %q: %v", c.AdvertiseRaft, err)
		}
	} else if c.peersConfigured() && unspecifiedHost(c.RaftAddr) {
		bad("raft_addr %q listens on every interface: set advertise_raft (--advertise-raft) to the address other nodes reach this node's Raft port at", c.RaftAddr)
	}
	return errors.Join(errs...)
}

// unspecifiedHost: addr's host is empty, 0.0.0.0 or ::, so it names no
// address another node could dial.
func unspecifiedHost(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// advertisedAPI is the base URL other nodes use for this node's API:
// advertise_http, or the listener's actual address (so port 0 works) with
// the host of http_addr. A node without peer credentials has no peers, so
// an unspecified host is shown as loopback there.
func (c *Config) advertisedAPI(listenAddr string) string {
	if c.AdvertiseHTTP != "" {
		u, _ := api.ParseBaseURL(c.AdvertiseHTTP) // checked by checkCluster
		return u
	}
	scheme := "http"
	if c.TLSCertFile != "" {
		scheme = "https"
	}
	host, _, _ := net.SplitHostPort(c.HTTPAddr)
	_, port, err := net.SplitHostPort(listenAddr)
	if err != nil {
		return scheme + "://" + listenAddr
	}
	if host == "" || (net.ParseIP(host) != nil && net.ParseIP(host).IsUnspecified()) {
		host = "127.0.0.1"
	}
	if _, err := strconv.Atoi(port); err != nil {
		return scheme + "://" + listenAddr
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}
