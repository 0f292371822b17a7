package main

import "github.com/txsink/txsink/twopc"

// Which node takes a session call (api.Config.SessionOwner; api/proxy.go
// passes the call on). The journal names each writer's owner
// (twopc.Machine.Owner) and each member's API address
// (twopc.Machine.Member). A node's copy of the journal always shows the
// sessions it opened itself: a follower's proposal answers only once its
// own copy applied it (raftJournal waits for the index), and the app learns
// the epoch only from that answer.

// ownerView is what sessionOwner reads from the journal; *twopc.Machine.
type ownerView interface {
	Owner(job, writer string) (owner string, epoch, released uint64, ok bool)
	Member(id string) (twopc.MemberInfo, bool)
}

// sessionOwner returns the api.Config.SessionOwner of node self: a call
// for (job, writer) goes to another node when the journal names that node
// as the owner and knows its API address. Everything else is served here,
// where the coordinator gives the honest answer (no_session, session_lost,
// session_fenced, job_not_found).
func sessionOwner(m ownerView, self string) func(job, writer string) (string, string, bool) {
	return func(job, writer string) (string, string, bool) {
		owner, _, _, ok := m.Owner(job, writer)
		if !ok || owner == "" || owner == self {
			return "", "", false
		}
		mi, ok := m.Member(owner)
		if !ok || mi.APIAddr == "" {
			return "", "", false
		}
		return owner, mi.APIAddr, true
	}
}
