package raftlog

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
)

// The cluster-key handshake; DESIGN.md describes it byte by byte.
const (
	hsMagic  = "txsraft1" // protocol name and version, 8 bytes
	nonceLen = 32
	macLen   = sha256.Size
	// hsLabel separates these MACs and keys from any other use of the key.
	hsLabel = "txsink raftlog v1 "
	// MinClusterKeyLen is the shortest cluster key accepted, in bytes.
	MinClusterKeyLen = 32
)

// errHandshake wraps every cluster-key handshake failure.
var errHandshake = errors.New("raftlog: cluster key handshake failed")

// keyAuth authenticates peers that share a cluster key: each side sends a
// fresh nonce and proves knowledge of the key with an HMAC over both nonces
// and its role; the session is then sealed with AES-GCM under keys derived
// from the key and both nonces.
type keyAuth struct {
	key []byte
}

// loadClusterKey reads a cluster key file. The key is the file's content
// without surrounding whitespace (so `openssl rand -hex 32 > f` works); it
// must be at least MinClusterKeyLen bytes.
//
// Permissions: the owner may read (and write) it. Group read is accepted
// with a warning on logger, because Kubernetes mounts a Secret with group
// read (0440, or 0640) when the pod sets fsGroup, which a StatefulSet with a
// volume needs; sharing the key with a group is then the platform's doing,
// as for cmd/sidecar's token_file. Group write or execute and any bit for
// others are refused, as for an ssh private key: a key others can read is
// no longer a secret of the cluster.
func loadClusterKey(path string, logger *slog.Logger) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: cluster key: %w", ErrInvalidConfig, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: cluster key: %w", ErrInvalidConfig, err)
	}
	perm := fi.Mode().Perm()
	if perm&0o037 != 0 {
		return nil, fmt.Errorf("%w: cluster key %s has mode %#o; it must not be writable or executable by its group "+
			"nor accessible by others (chmod 600, or 640 when a group must read it)", ErrInvalidConfig, path, perm)
	}
	if perm&0o040 != 0 {
		logger.Warn("cluster key file can be read by its group (as Kubernetes mounts a Secret with fsGroup); "+
			"make sure only this node's processes are in it", "path", path, "mode", fmt.Sprintf("%#o", perm))
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("%w: cluster key: %w", ErrInvalidConfig, err)
	}
	key := bytes.TrimSpace(b)
	if len(key) < MinClusterKeyLen {
		return nil, fmt.Errorf("%w: cluster key %s has %d bytes, need at least %d (e.g. openssl rand -hex 32)",
			ErrInvalidConfig, path, len(key), MinClusterKeyLen)
	}
	return key, nil
}

const (
	roleClient = "client"
	roleServer = "server"
)

// mac is HMAC-SHA256(key, hsLabel || role || nonceC || nonceS).
func (a *keyAuth) mac(role string, nc, ns []byte) []byte {
	m := hmac.New(sha256.New, a.key)
	m.Write([]byte(hsLabel + role))
	m.Write(nc)
	m.Write(ns)
	return m.Sum(nil)
}

func (a *keyAuth) client(_ context.Context, conn net.Conn, _ string) (net.Conn, error) {
	nc := make([]byte, nonceLen)
	rand.Read(nc)
	if _, err := conn.Write(append([]byte(hsMagic), nc...)); err != nil {
		return nil, fmt.Errorf("%w: send hello: %w", errHandshake, err)
	}
	resp := make([]byte, len(hsMagic)+nonceLen+macLen)
	if _, err := io.ReadFull(conn, resp); err != nil {
		return nil, fmt.Errorf("%w: read server proof: %w", errHandshake, err)
	}
	if string(resp[:len(hsMagic)]) != hsMagic {
		return nil, fmt.Errorf("%w: peer does not speak %s", errHandshake, hsMagic)
	}
	ns, macS := resp[len(hsMagic):len(hsMagic)+nonceLen], resp[len(hsMagic)+nonceLen:]
	if bytes.Equal(nc, ns) {
		return nil, fmt.Errorf("%w: peer echoed our nonce", errHandshake)
	}
	if !hmac.Equal(macS, a.mac(roleServer, nc, ns)) {
		return nil, fmt.Errorf("%w: peer does not know the cluster key", errHandshake)
	}
	if _, err := conn.Write(a.mac(roleClient, nc, ns)); err != nil {
		return nil, fmt.Errorf("%w: send proof: %w", errHandshake, err)
	}
	return a.seal(conn, nc, ns, roleClient)
}

func (a *keyAuth) server(_ context.Context, conn net.Conn) (net.Conn, error) {
	hello := make([]byte, len(hsMagic)+nonceLen)
	if _, err := io.ReadFull(conn, hello); err != nil {
		return nil, fmt.Errorf("%w: read hello: %w", errHandshake, err)
	}
	if string(hello[:len(hsMagic)]) != hsMagic {
		return nil, fmt.Errorf("%w: peer does not speak %s", errHandshake, hsMagic)
	}
	nc := hello[len(hsMagic):]
	ns := make([]byte, nonceLen)
	rand.Read(ns)
	if _, err := conn.Write(append(append([]byte(hsMagic), ns...), a.mac(roleServer, nc, ns)...)); err != nil {
		return nil, fmt.Errorf("%w: send proof: %w", errHandshake, err)
	}
	macC := make([]byte, macLen)
	if _, err := io.ReadFull(conn, macC); err != nil {
		return nil, fmt.Errorf("%w: read client proof: %w", errHandshake, err)
	}
	if !hmac.Equal(macC, a.mac(roleClient, nc, ns)) {
		return nil, fmt.Errorf("%w: peer does not know the cluster key", errHandshake)
	}
	return a.seal(conn, nc, ns, roleServer)
}

// seal wraps conn in AES-256-GCM framing, one key per direction derived
// with HKDF-SHA256 from the cluster key, salted with both nonces, so every
// session has fresh keys and a frame cannot be replayed, reordered,
// reflected or moved to another connection.
func (a *keyAuth) seal(conn net.Conn, nc, ns []byte, role string) (net.Conn, error) {
	salt := append(append([]byte{}, nc...), ns...)
	aead := func(dir string) (cipher.AEAD, error) {
		k, err := hkdf.Key(sha256.New, a.key, salt, hsLabel+dir, 32)
		if err != nil {
			return nil, err
		}
		b, err := aes.NewCipher(k)
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(b)
	}
	c2s, err := aead("client to server")
	if err != nil {
		return nil, fmt.Errorf("%w: derive keys: %w", errHandshake, err)
	}
	s2c, err := aead("server to client")
	if err != nil {
		return nil, fmt.Errorf("%w: derive keys: %w", errHandshake, err)
	}
	if role == roleClient {
		return &sealedConn{Conn: conn, r: s2c, w: c2s}, nil
	}
	return &sealedConn{Conn: conn, r: c2s, w: s2c}, nil
}

// maxFrame is the largest plaintext in one sealed frame; raft's buffered
// writer flushes at most 64 KiB at a time.
const maxFrame = 64 << 10

// sealedConn frames a stream as records of a 4-byte big-endian length and
// that many bytes of AES-GCM ciphertext (the tag included), authenticated
// with the length as additional data. The nonce is a per-direction counter,
// so frames must arrive in order, once. Any error is sticky: a stream that
// failed once (deadline, bad frame) is never read or written again.
type sealedConn struct {
	net.Conn

	rmu  sync.Mutex // guards the read side below
	r    cipher.AEAD
	rseq uint64
	rbuf []byte // plaintext not yet returned
	rerr error

	wmu  sync.Mutex // guards the write side below
	w    cipher.AEAD
	wseq uint64
	werr error
}

func frameNonce(seq uint64, size int) []byte {
	n := make([]byte, size)
	binary.BigEndian.PutUint64(n[size-8:], seq)
	return n
}

func (c *sealedConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if len(c.rbuf) == 0 {
		if c.rerr != nil {
			return 0, c.rerr
		}
		if c.rbuf, c.rerr = c.readFrame(); c.rerr != nil {
			return 0, c.rerr
		}
	}
	n := copy(p, c.rbuf)
	c.rbuf = c.rbuf[n:]
	return n, nil
}

func (c *sealedConn) readFrame() ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(c.Conn, hdr[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(hdr[:])
	if size < uint32(c.r.Overhead()) || size > uint32(maxFrame+c.r.Overhead()) {
		return nil, fmt.Errorf("raftlog: sealed frame of %d bytes out of range", size)
	}
	ct := make([]byte, size)
	if _, err := io.ReadFull(c.Conn, ct); err != nil {
		return nil, err
	}
	pt, err := c.r.Open(ct[:0], frameNonce(c.rseq, c.r.NonceSize()), ct, hdr[:])
	if err != nil {
		return nil, fmt.Errorf("raftlog: sealed frame %d does not authenticate: %w", c.rseq, err)
	}
	c.rseq++
	return pt, nil
}

func (c *sealedConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	written := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), maxFrame)]
		var hdr [4]byte // separate from frame: Seal's dst must not overlap its additional data
		binary.BigEndian.PutUint32(hdr[:], uint32(len(chunk)+c.w.Overhead()))
		frame := make([]byte, 4, 4+len(chunk)+c.w.Overhead())
		copy(frame, hdr[:])
		frame = c.w.Seal(frame, frameNonce(c.wseq, c.w.NonceSize()), chunk, hdr[:])
		c.wseq++
		if _, err := c.Conn.Write(frame); err != nil {
			c.werr = err
			return written, err
		}
		written += len(chunk)
		p = p[len(chunk):]
	}
	return written, nil
}
