package main

import (
	"context"
	"sync"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/twopc"
)

// Which node takes a session call (api.Config.SessionOwner; api/proxy.go
// passes the call on). The journal names each writer's owner
// (twopc.Machine.Owner) and each member's API address
// (twopc.Machine.Member). This node's copy of the journal may lag behind
// the session open it just served (a follower applies an entry after the
// leader), so the sessions this node opened count too: a session opened
// here at an epoch the journal copy does not show yet is served here.

// ownerView is what sessionOwner reads from the journal; *twopc.Machine.
type ownerView interface {
	Owner(job, writer string) (owner string, epoch, released uint64, ok bool)
	Member(id string) (twopc.MemberInfo, bool)
}

// sessionOwner returns the api.Config.SessionOwner of node self: a call
// for (job, writer) goes to another node when the journal names that node
// as the owner, knows its API address, and this node did not open the
// writer's current session itself. Everything else is served here, where
// the coordinator gives the honest answer (no_session, session_lost,
// session_fenced, job_not_found).
func sessionOwner(m ownerView, self string, held *heldSessions) func(job, writer string) (string, string, bool) {
	return func(job, writer string) (string, string, bool) {
		owner, epoch, _, ok := m.Owner(job, writer)
		if !ok || owner == "" || owner == self {
			return "", "", false
		}
		if held.holds(job, writer, epoch) {
			return "", "", false
		}
		mi, ok := m.Member(owner)
		if !ok || mi.APIAddr == "" {
			return "", "", false
		}
		return owner, mi.APIAddr, true
	}
}

// heldSessions is api.Service with a note of the sessions this node opened:
// writer → the epoch of its last session opened here.
type heldSessions struct {
	api.Service
	mu     sync.Mutex
	epochs map[[2]string]uint64
}

func newHeldSessions(svc api.Service) *heldSessions {
	return &heldSessions{Service: svc, epochs: map[[2]string]uint64{}}
}

// OpenSession notes the epoch of a session opened here.
func (h *heldSessions) OpenSession(ctx context.Context, job, writer string, restore *int64) (twopc.SessionInfo, error) {
	info, err := h.Service.OpenSession(ctx, job, writer, restore)
	if err == nil {
		h.mu.Lock()
		if info.Epoch > h.epochs[[2]string{job, writer}] {
			h.epochs[[2]string{job, writer}] = info.Epoch
		}
		h.mu.Unlock()
	}
	return info, err
}

// DeleteWriter forgets the writer's note.
func (h *heldSessions) DeleteWriter(ctx context.Context, job, writer string) (bool, error) {
	deleted, err := h.Service.DeleteWriter(ctx, job, writer)
	if err == nil {
		h.mu.Lock()
		delete(h.epochs, [2]string{job, writer})
		h.mu.Unlock()
	}
	return deleted, err
}

// holds reports whether this node opened the writer's session at the
// journal's current epoch or a newer one (its copy of the journal lags). A note
// the journal has overtaken (another node opened a later session) is
// dropped, so the notes stay bounded by the writers opened here.
func (h *heldSessions) holds(job, writer string, journalEpoch uint64) bool {
	k := [2]string{job, writer}
	h.mu.Lock()
	defer h.mu.Unlock()
	e, ok := h.epochs[k]
	if ok && e < journalEpoch {
		delete(h.epochs, k)
		return false
	}
	return ok && e >= journalEpoch
}
