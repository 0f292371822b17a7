package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/twopc"
)

// memberAdmin is an api.ClusterAdmin over a real twopc.Machine: members as
// a map with the raft rules that matter to the API (unknown id, last
// voter), proposals applied to the machine at increasing indexes. The real
// one (cmd/sidecar, over raftlog) is tested with sidecar processes.
type memberAdmin struct {
	mu      sync.Mutex
	members map[string]api.Member
	m       *twopc.Machine
	index   uint64
	down    atomic.Bool // every call 503, as on a node without leader
}

func newMemberAdmin() *memberAdmin {
	return &memberAdmin{m: twopc.NewMachine(), members: map[string]api.Member{
		"n1": {ID: "n1", Address: "127.0.0.1:8471", RaftAddr: "127.0.0.1:8471", APIAddr: "http://127.0.0.1:8470", Voter: true, Reachable: true},
	}}
}

var errNoLeader = fmt.Errorf("%w: no leader (test)", twopc.ErrUnavailable)

func (a *memberAdmin) Join(_ context.Context, req api.JoinRequest) (api.Member, error) {
	if a.down.Load() {
		return api.Member{}, errNoLeader
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if old, ok := a.members[req.ID]; ok && old.Voter && !req.IsVoter() {
		return api.Member{}, fmt.Errorf("%w: %s is a voter; remove it first", api.ErrMembershipConflict, req.ID)
	}
	m := api.Member{ID: req.ID, Address: req.RaftAddr, RaftAddr: req.RaftAddr, APIAddr: req.APIAddr, Voter: req.IsVoter()}
	a.members[req.ID] = m
	return m, nil
}

func (a *memberAdmin) RemoveNode(_ context.Context, id string) error {
	if a.down.Load() {
		return errNoLeader
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	m, ok := a.members[id]
	if !ok {
		return fmt.Errorf("%w: %s", api.ErrNodeNotFound, id)
	}
	voters := 0
	for _, o := range a.members {
		if o.Voter {
			voters++
		}
	}
	if m.Voter && voters == 1 {
		return fmt.Errorf("%w: %s is the last voter", api.ErrMembershipConflict, id)
	}
	delete(a.members, id)
	return nil
}

func (a *memberAdmin) Propose(_ context.Context, cmd []byte) (twopc.ApplyResult, error) {
	if a.down.Load() {
		return twopc.ApplyResult{}, errNoLeader
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.index++
	return a.m.Apply(a.index, cmd).(twopc.ApplyResult), nil
}

func TestClusterEndpoints(t *testing.T) {
	adm := newMemberAdmin()
	e := newEnv(t, func(c *api.Config) { c.Admin = adm })
	ctx := context.Background()
	tr := e.ts[0]

	// Join: stored and returned; the same again is the same 200.
	req := api.JoinRequest{ID: "n2", RaftAddr: "127.0.0.1:9471", APIAddr: "http://127.0.0.1:9470"}
	for range 2 {
		m := must[api.Member](t)(tr.c.Join(ctx, req))
		if m.ID != "n2" || !m.Voter || m.APIAddr != "http://127.0.0.1:9470" || m.RaftAddr != "127.0.0.1:9471" {
			t.Fatalf("join: got %+v", m)
		}
	}
	no := false
	nv := must[api.Member](t)(tr.c.Join(ctx, api.JoinRequest{ID: "n3", RaftAddr: "127.0.0.1:9571", APIAddr: "127.0.0.1:9570", Voter: &no}))
	if nv.Voter {
		t.Errorf("join with voter false: got a voter %+v", nv)
	}
	// Demoting a voter is the admin's 409.
	_, err := tr.c.Join(ctx, api.JoinRequest{ID: "n2", RaftAddr: "127.0.0.1:9471", APIAddr: "http://127.0.0.1:9470", Voter: &no})
	wantCode(t, err, 409, api.CodeMembershipConflict)

	// Bad join bodies: 400 and nothing changes.
	before := len(adm.members)
	for _, tc := range []struct{ body, code string }{
		{``, api.CodeMalformedBody},
		{`[]`, api.CodeMalformedBody},
		{`{"id":"n4","raft_addr":"127.0.0.1:1","api_addr":"http://127.0.0.1:2","extra":1}`, api.CodeMalformedBody},
		{`{"id":"bad id","raft_addr":"127.0.0.1:1","api_addr":"http://127.0.0.1:2"}`, api.CodeInvalidName},
		{`{"id":"n4","raft_addr":"0.0.0.0:1","api_addr":"http://127.0.0.1:2"}`, api.CodeInvalidRequest},
		{`{"id":"n4","raft_addr":"127.0.0.1","api_addr":"http://127.0.0.1:2"}`, api.CodeInvalidRequest},
		{`{"id":"n4","raft_addr":"127.0.0.1:1","api_addr":"ftp://127.0.0.1:2"}`, api.CodeInvalidRequest},
		{`{"id":"n4","raft_addr":"127.0.0.1:1","api_addr":"http://127.0.0.1:2/x"}`, api.CodeInvalidRequest},
		{`{"id":"n4","raft_addr":"127.0.0.1:1","api_addr":"http://127.0.0.1"}`, api.CodeInvalidRequest},
		{`{"id":"n4","raft_addr":"127.0.0.1:1","api_addr":"http://[::]:2"}`, api.CodeInvalidRequest},
	} {
		r := tr.do(t, "POST", "/v1/cluster/join", tc.body, "Content-Type", "application/json")
		if r.status != 400 || r.problem(t).Code != tc.code {
			t.Errorf("join %s: got %s, want 400 %s", tc.body, r, tc.code)
		}
	}
	if len(adm.members) != before {
		t.Errorf("bad joins changed the members: %v", adm.members)
	}

	// Remove: 200, then the same id is 404 node_not_found; the last voter 409.
	must[struct{}](t)(struct{}{}, tr.c.RemoveNode(ctx, "n3"))
	r := tr.do(t, "DELETE", "/v1/cluster/nodes/n3", "")
	if r.status != 404 || r.problem(t).Code != api.CodeNodeNotFound {
		t.Errorf("remove of a removed node: got %s, want 404 node_not_found", r)
	}
	must[struct{}](t)(struct{}{}, tr.c.RemoveNode(ctx, "n2"))
	wantCode(t, tr.c.RemoveNode(ctx, "n1"), 409, api.CodeMembershipConflict)
	if r := tr.do(t, "DELETE", "/v1/cluster/nodes/bad%20id", ""); r.status != 400 || r.problem(t).Code != api.CodeInvalidName {
		t.Errorf("remove with a bad id: got %s, want 400 invalid_name", r)
	}

	// Propose: the machine's result, a repeated key its first result.
	cmd := twopc.EncodeCommand(twopc.Command{Op: twopc.OpPutJob, Key: "k1", Spec: &twopc.JobSpec{Name: "fwd", Commit: twopc.ModeAuto, Sinks: []string{"events"}}})
	res := must[twopc.ApplyResult](t)(tr.c.Propose(ctx, cmd))
	again := must[twopc.ApplyResult](t)(tr.c.Propose(ctx, cmd))
	if res.Code != "" || res.Index == 0 || !again.Duplicate || again.Index != res.Index {
		t.Errorf("propose: first %+v, again %+v; want applied, then a duplicate at the same index", res, again)
	}
	if _, ok := adm.m.JobSpec("fwd"); !ok {
		t.Errorf("proposed put_job did not reach the machine")
	}
	// A refused command is still a 200 carrying the journal's code.
	bad := twopc.EncodeCommand(twopc.Command{Op: twopc.OpPutJob, Key: "k2", Spec: &twopc.JobSpec{Name: "x"}})
	if res := must[twopc.ApplyResult](t)(tr.c.Propose(ctx, bad)); res.Code == "" || res.Err() == nil {
		t.Errorf("propose of a bad spec: got %+v, want the journal's refusal", res)
	}
	// Bodies that are not commands never reach the journal (its Apply
	// panics on an unknown op).
	idx := adm.index
	for _, tc := range []struct{ body, code string }{
		{`not json`, api.CodeMalformedBody},
		{`{"op":"put_job","key":"k3"} {}`, api.CodeMalformedBody},
		{`{"op":"put_job","key":"k3","surprise":1}`, api.CodeMalformedBody},
		{`{"op":"format_disk","key":"k3"}`, api.CodeInvalidRequest},
		{`{"op":"put_job"}`, api.CodeInvalidRequest},
	} {
		r := tr.do(t, "POST", "/v1/cluster/propose", tc.body, "Content-Type", "application/json")
		if r.status != 400 || r.problem(t).Code != tc.code {
			t.Errorf("propose %s: got %s, want 400 %s", tc.body, r, tc.code)
		}
	}
	if adm.index != idx {
		t.Errorf("refused proposals reached the journal")
	}
	if r := tr.do(t, "POST", "/v1/cluster/propose", string(cmd), "Content-Type", "text/plain"); r.status != 415 {
		t.Errorf("propose as text/plain: got %s, want 415", r)
	}

	// Not the leader / no leader: 503 with Retry-After, for all three.
	adm.down.Store(true)
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/v1/cluster/join", `{"id":"n5","raft_addr":"127.0.0.1:1","api_addr":"http://127.0.0.1:2"}`},
		{"DELETE", "/v1/cluster/nodes/n1", ""},
		{"POST", "/v1/cluster/propose", string(cmd)},
	} {
		r := tr.do(t, c.method, c.path, c.body, "Content-Type", "application/json")
		if r.status != 503 || r.problem(t).Code != api.CodeUnavailable || r.header.Get("Retry-After") == "" {
			t.Errorf("%s %s without leader: got %s, want 503 unavailable", c.method, c.path, r)
		}
	}
	adm.down.Store(false)

	// GET /v1/cluster carries the new fields (the spec requires them).
	st := must[api.ClusterStatus](t)(tr.c.Cluster(ctx))
	b, _ := json.Marshal(st)
	for _, f := range []string{`"leader_api_addr"`, `"applied_index"`, `"reachable"`, `"api_addr"`} {
		if !strings.Contains(string(b), f) {
			t.Errorf("GET /v1/cluster %s lacks %s", b, f)
		}
	}
}

// TestClusterEndpointsNeedTokenAndAdmin: without the token every cluster
// endpoint is 401 and changes nothing; without an Admin they are 404.
func TestClusterEndpointsNeedTokenAndAdmin(t *testing.T) {
	adm := newMemberAdmin()
	e := newEnv(t, func(c *api.Config) { c.Admin, c.Token = adm, "sekrit" })
	tr := e.ts[0]
	join := `{"id":"n9","raft_addr":"127.0.0.1:1","api_addr":"http://127.0.0.1:2"}`
	cmd := string(twopc.EncodeCommand(twopc.Command{Op: twopc.OpRemoveMember, Key: "k", Node: "n1"}))
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/v1/cluster/join", join}, {"DELETE", "/v1/cluster/nodes/n1", ""}, {"POST", "/v1/cluster/propose", cmd},
	} {
		for _, auth := range []string{"", "Bearer wrong"} {
			r := tr.do(t, c.method, c.path, c.body, "Content-Type", "application/json", "Authorization", auth)
			if r.status != 401 || r.problem(t).Code != api.CodeUnauthorized {
				t.Errorf("%s %s with %q: got %s, want 401", c.method, c.path, auth, r)
			}
		}
	}
	if len(adm.members) != 1 || adm.index != 0 {
		t.Errorf("unauthorized calls changed something: members %v, index %d", adm.members, adm.index)
	}
	if r := tr.do(t, "POST", "/v1/cluster/join", join, "Content-Type", "application/json", "Authorization", "Bearer sekrit"); r.status != 200 {
		t.Errorf("join with the token: got %s", r)
	}

	e2 := newEnv(t)
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/v1/cluster/join", join}, {"DELETE", "/v1/cluster/nodes/n1", ""}, {"POST", "/v1/cluster/propose", cmd},
	} {
		if r := e2.ts[0].do(t, c.method, c.path, c.body, "Content-Type", "application/json"); r.status != 404 || r.problem(t).Code != api.CodeNotFound {
			t.Errorf("%s %s without Admin: got %s, want 404 not_found", c.method, c.path, r)
		}
	}
}

// TestProposeKnowsEveryJournalOp: every Op constant declared in twopc is
// forwardable. A new op added there without adding it to the API's list
// would make followers' proposals of it fail with 400; this test finds the
// constants in twopc's source, so it catches that.
func TestProposeKnowsEveryJournalOp(t *testing.T) {
	fset := token.NewFileSet()
	entries, err := os.ReadDir("../twopc")
	if err != nil {
		t.Fatal(err)
	}
	var ops []string
	for _, de := range entries {
		if !strings.HasSuffix(de.Name(), ".go") || strings.HasSuffix(de.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join("../twopc", de.Name()), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, sp := range gd.Specs {
				vs := sp.(*ast.ValueSpec)
				if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "Op" {
					continue
				}
				for _, v := range vs.Values {
					if lit, ok := v.(*ast.BasicLit); ok {
						s, _ := strconv.Unquote(lit.Value)
						ops = append(ops, s)
					}
				}
			}
		}
	}
	if len(ops) < 10 {
		t.Fatalf("found only %d Op constants in twopc (%v); the parse is broken", len(ops), ops)
	}
	adm := newMemberAdmin()
	tr := newEnv(t, func(c *api.Config) { c.Admin = adm }).ts[0]
	for i, op := range ops {
		body := fmt.Sprintf(`{"op":%q,"key":"op-%d"}`, op, i)
		if r := tr.do(t, "POST", "/v1/cluster/propose", body, "Content-Type", "application/json"); r.status != 200 {
			t.Errorf("propose of op %s: got %s, want 200 (the journal's own answer)", op, r)
		}
	}
}
