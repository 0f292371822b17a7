package raftlog

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Raft addresses are strings to hashicorp/raft (raft.ServerAddress): it
// stores what the stream layer's Addr().String() says in the configuration
// and hands it back to our Dial, which resolves it at every dial. So a node
// may advertise a DNS name (a Kubernetes StatefulSet pod's stable
// txsink-0.txsink.ns.svc:8471) and be reached at whatever IP the name
// resolves to when a peer dials — a voter back with a new pod IP is heard
// again without a configuration change. Names are therefore checked for
// syntax only, never resolved at start: the name may not resolve until the
// pod is ready.

// advertisedAddr is a net.Addr that is just host:port as given (an IP or a
// DNS name): what this node advertises and raft stores.
type advertisedAddr string

func (a advertisedAddr) Network() string { return "tcp" }
func (a advertisedAddr) String() string  { return string(a) }

// parseAdvertiseAddr checks addr as an address other nodes can dial —
// host:port with a specific IP or a syntactically valid DNS name and a port
// in 1-65535 — and returns it in canonical form (the IP as net.IP prints it,
// the port without leading zeros, a name unchanged). It does not resolve
// the name.
func parseAdvertiseAddr(addr string) (string, error) {
	host, port, err := splitHostPort(addr)
	if err != nil {
		return "", err
	}
	if port == 0 {
		return "", errors.New("port 0 cannot be advertised; need 1-65535")
	}
	if host == "" {
		return "", errors.New("no host; need a specific IP address or a DNS name")
	}
	if ip := net.ParseIP(host); ip != nil {
		if ip.IsUnspecified() {
			return "", fmt.Errorf("%s is not an address other nodes can dial; need a specific IP address or a DNS name", host)
		}
		return net.JoinHostPort(ip.String(), strconv.Itoa(port)), nil
	}
	if err := checkDNSName(host); err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), nil
}

// checkDNSName accepts a host name as resolvers do (RFC 1035 labels joined by
// dots, letters, digits, '-' and '_' — the underscore as Go's resolver
// allows it — each label 1-63 bytes and not starting or ending with '-',
// at most 253 bytes, an optional trailing dot). Anything else (spaces, a
// zone like %eth0, an IP with a typo that is not a valid name either) is
// refused with the reason.
func checkDNSName(name string) error {
	n := strings.TrimSuffix(name, ".")
	if n == "" || len(n) > 253 {
		return fmt.Errorf("%q is neither an IP address nor a DNS name (1-253 bytes)", name)
	}
	allDigits := true
	for label := range strings.SplitSeq(n, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("%q is neither an IP address nor a DNS name (empty or over-long label)", name)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%q is not a DNS name: label %q starts or ends with '-'", name, label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case c >= '0' && c <= '9':
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-', c == '_':
				allDigits = false
			default:
				return fmt.Errorf("%q is neither an IP address nor a DNS name (byte %q)", name, c)
			}
		}
	}
	if allDigits {
		// 10.0.0.300 or 1.2.3: an IP address gone wrong, not a name.
		return fmt.Errorf("%q is not a valid IP address", name)
	}
	return nil
}
