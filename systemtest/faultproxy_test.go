package systemtest

// A fault-injecting TCP proxy for network partitions between sidecar
// processes on one machine.
//
// Every node advertises a proxy address for its raft port
// (--advertise-raft) and for its HTTP API (--advertise-http), so all
// traffic between nodes goes through proxies the test controls; the test
// itself (and the application it plays) talks to each node's real HTTP
// address. To cut node X off, both directions must go: connections *to* X
// (through X's proxies) and connections *from* X (through the other nodes'
// proxies). On loopback every connection comes from 127.0.0.1, so a proxy
// finds the sending node by the socket: /proc/net/tcp gives the inode of
// the client end of an accepted connection and /proc/<pid>/fd says which
// sidecar process holds it (Linux only; the test processes are ours).

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// faultNet is the set of proxies of one cluster and the partition state.
type faultNet struct {
	t        *testing.T
	mu       sync.Mutex
	isolated map[string]bool // node id → cut off from every other node
	pids     map[int]string  // live sidecar pid → node id
	proxies  []*faultProxy
	// refused counts connections dropped because of a partition, and
	// unknown those whose sending process could not be found (dropped
	// too while a partition is on, so a failed lookup never leaks).
	refused, unknown int
}

func newFaultNet(t *testing.T) *faultNet {
	return &faultNet{t: t, isolated: map[string]bool{}, pids: map[int]string{}}
}

// faultProxy forwards one listening address to one node's real address.
type faultProxy struct {
	fn     *faultNet
	name   string // e.g. "raft→n1"
	dst    string // node id behind the proxy
	target string
	ln     net.Listener
	mu     sync.Mutex
	conns  map[*proxied]bool
}

// proxied is one accepted connection and its upstream.
type proxied struct {
	src       string // node id of the sender, "" if not a sidecar
	down, up  net.Conn
	closeOnce sync.Once
}

func (p *proxied) close() {
	p.closeOnce.Do(func() {
		p.down.Close()
		if p.up != nil {
			p.up.Close()
		}
	})
}

// proxy starts a proxy on a free loopback port for traffic to node dst at
// target; it runs until the test ends.
func (fn *faultNet) proxy(name, dst, target string) *faultProxy {
	fn.t.Helper()
	ln, err := net.Listen("tcp", freeAddr(fn.t))
	if err != nil {
		fn.t.Fatalf("fault proxy %s: %v", name, err)
	}
	p := &faultProxy{fn: fn, name: name, dst: dst, target: target, ln: ln, conns: map[*proxied]bool{}}
	fn.mu.Lock()
	fn.proxies = append(fn.proxies, p)
	fn.mu.Unlock()
	go p.serve()
	fn.t.Cleanup(func() {
		ln.Close()
		p.closeAll(func(*proxied) bool { return true })
	})
	return p
}

// Addr is the address peers dial.
func (p *faultProxy) Addr() string { return p.ln.Addr().String() }

func (p *faultProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(c)
	}
}

func (p *faultProxy) handle(c net.Conn) {
	src, found := p.fn.sender(c)
	pc := &proxied{src: src, down: c}
	if !p.fn.allowed(src, found, p.dst) {
		c.Close()
		return
	}
	up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		c.Close()
		return
	}
	pc.up = up
	p.mu.Lock()
	p.conns[pc] = true
	p.mu.Unlock()
	// A partition may have started while we dialled.
	if !p.fn.allowed(src, found, p.dst) {
		p.drop(pc)
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	p.drop(pc)
}

func (p *faultProxy) drop(pc *proxied) {
	pc.close()
	p.mu.Lock()
	delete(p.conns, pc)
	p.mu.Unlock()
}

// closeAll closes the connections match selects.
func (p *faultProxy) closeAll(match func(*proxied) bool) {
	p.mu.Lock()
	var cs []*proxied
	for pc := range p.conns {
		if match(pc) {
			cs = append(cs, pc)
		}
	}
	p.mu.Unlock()
	for _, pc := range cs {
		p.drop(pc)
	}
}

// allowed says whether traffic from src (found: the sender is known) to
// dst may pass now, and counts what it refuses.
func (fn *faultNet) allowed(src string, found bool, dst string) bool {
	fn.mu.Lock()
	defer fn.mu.Unlock()
	cut := false
	for _, v := range fn.isolated {
		cut = cut || v
	}
	switch {
	case !cut:
		return true
	case !found:
		fn.unknown++
		return false
	case fn.isolated[src] || fn.isolated[dst]:
		fn.refused++
		return false
	}
	return true
}

// isolate cuts node id off from every other node, in both directions:
// open connections to and from it are closed, new ones refused.
func (fn *faultNet) isolate(id string) {
	fn.mu.Lock()
	fn.isolated[id] = true
	ps := append([]*faultProxy(nil), fn.proxies...)
	fn.mu.Unlock()
	for _, p := range ps {
		if p.dst == id {
			p.closeAll(func(*proxied) bool { return true })
		} else {
			p.closeAll(func(pc *proxied) bool { return pc.src == id })
		}
	}
}

// heal lets node id talk to the others again.
func (fn *faultNet) heal(id string) {
	fn.mu.Lock()
	delete(fn.isolated, id)
	fn.mu.Unlock()
}

// counts returns how many connections were refused by a partition and how
// many had an unknown sender.
func (fn *faultNet) counts() (refused, unknown int) {
	fn.mu.Lock()
	defer fn.mu.Unlock()
	return fn.refused, fn.unknown
}

// register and unregister keep the pid → node map current.
func (fn *faultNet) register(pid int, id string) {
	fn.mu.Lock()
	fn.pids[pid] = id
	fn.mu.Unlock()
}

func (fn *faultNet) unregister(pid int) {
	fn.mu.Lock()
	delete(fn.pids, pid)
	fn.mu.Unlock()
}

// sender finds the node whose process holds the client end of c. found is
// false when no registered sidecar holds it (the test process, or a
// connection already gone).
func (fn *faultNet) sender(c net.Conn) (id string, found bool) {
	ino, err := socketInode(c.RemoteAddr().String(), c.LocalAddr().String())
	if err != nil {
		return "", false
	}
	fn.mu.Lock()
	pids := make(map[int]string, len(fn.pids))
	for p, n := range fn.pids {
		pids[p] = n
	}
	fn.mu.Unlock()
	want := "socket:[" + ino + "]"
	for pid, node := range pids {
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if l, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name())); err == nil && l == want {
				return node, true
			}
		}
	}
	return "", false
}

// socketInode returns the inode of the IPv4 TCP socket whose local address
// is local and remote address is remote, from /proc/net/tcp.
func socketInode(local, remote string) (string, error) {
	l, err := procAddr(local)
	if err != nil {
		return "", err
	}
	r, err := procAddr(remote)
	if err != nil {
		return "", err
	}
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 9 && fs[1] == l && fs[2] == r {
			return fs[9], nil
		}
	}
	return "", fmt.Errorf("socket %s→%s not in /proc/net/tcp", local, remote)
}

// procAddr writes an IPv4 host:port as /proc/net/tcp does: the address as
// a little-endian hex word, the port as big-endian hex.
func procAddr(hostport string) (string, error) {
	h, ps, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", err
	}
	ip := net.ParseIP(h).To4()
	if ip == nil {
		return "", fmt.Errorf("%s: not IPv4", hostport)
	}
	port, err := strconv.Atoi(ps)
	if err != nil {
		return "", err
	}
	le := []byte{ip[3], ip[2], ip[1], ip[0]}
	return strings.ToUpper(hex.EncodeToString(le)) + fmt.Sprintf(":%04X", port), nil
}
