package twopc

import "fmt"

// Cluster members as the journal knows them. Raft's own configuration says
// who votes; the journal adds what raft does not carry: each node's HTTP API
// address, so any node can forward a proposal to the leader or pass a
// session call to the node that owns the session.

const (
	// OpPutMember records (or updates) a member's addresses.
	OpPutMember Op = "put_member"
	// OpRemoveMember forgets a member.
	OpRemoveMember Op = "remove_member"
	// OpBarrier changes nothing. A node that proposes it and has applied
	// its index has applied everything committed before it: a read
	// barrier for a node whose copy of the journal may lag (barrier).
	OpBarrier Op = "barrier"
)

// MemberInfo is one cluster member as the journal knows it.
type MemberInfo struct {
	// ID is the node id (raft's server id).
	ID string `json:"id"`
	// APIAddr is the base URL of its HTTP API as other nodes must use it,
	// e.g. "http://10.0.0.5:8470" or "https://txsink-1.txsink:8470".
	APIAddr string `json:"api_addr"`
	// RaftAddr is its raft address as advertised.
	RaftAddr string `json:"raft_addr"`
	// Voter: counts for the quorum (false: a non-voter).
	Voter bool `json:"voter"`
}

func (m *Machine) putMember(c Command) ApplyResult {
	mi := c.Member
	if mi == nil || !ValidName(mi.ID) || mi.APIAddr == "" {
		return errResult(fmt.Errorf("%w: member needs an id and an API address", ErrInvalid))
	}
	if m.st.Members == nil {
		m.st.Members = map[string]*MemberInfo{}
	}
	cp := *mi
	m.st.Members[mi.ID] = &cp
	return ApplyResult{}
}

func (m *Machine) removeMember(c Command) ApplyResult {
	delete(m.st.Members, c.Node)
	return ApplyResult{}
}

func (m *Machine) barrier(Command) ApplyResult { return ApplyResult{} }

// Members lists the members the journal knows, sorted by id.
func (m *Machine) Members() []MemberInfo {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]MemberInfo, 0, len(m.st.Members))
	for _, id := range sortedKeys(m.st.Members) {
		out = append(out, *m.st.Members[id])
	}
	return out
}

// Member returns one member; ok is false when the journal does not know it.
func (m *Machine) Member(id string) (MemberInfo, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	mi := m.st.Members[id]
	if mi == nil {
		return MemberInfo{}, false
	}
	return *mi, true
}
