package main

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/twopc"
	"github.com/txsink/txsink/twopc/twopctest"
)

// TestSessionOwner checks which node a session call goes to, over a real
// journal state machine and a coordinator for this node (n1): another
// node's writer goes there when the journal knows its address; this node's
// writers, unknown writers and owners without an address stay here.
func TestSessionOwner(t *testing.T) {
	ctx := context.Background()
	j := twopctest.NewJournal(twopc.NewMachine())
	m := j.Machine()
	seq := 0
	propose := func(c twopc.Command) twopc.ApplyResult {
		t.Helper()
		seq++
		c.Key, c.Time = fmt.Sprintf("k%d", seq), time.Now().UnixNano()
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		res, err := j.Propose(ctx, b)
		if err == nil {
			err = res.Err()
		}
		if err != nil {
			t.Fatalf("%s: %v", c.Op, err)
		}
		return res
	}
	coord, err := twopc.NewCoordinator(twopc.Config{Node: "n1", Journal: j, Machine: m,
		Sinks: map[string]twopc.Sink{"s": twopctest.NewSink("s", 2)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(coord.Close)
	route := sessionOwner(m, "n1")

	if _, err := coord.PutJob(ctx, twopc.JobSpec{Name: "j", Commit: twopc.ModeAuto}); err != nil {
		t.Fatal(err)
	}
	propose(twopc.Command{Op: twopc.OpPutMember, Member: &twopc.MemberInfo{ID: "n1", APIAddr: "http://127.0.0.1:8470"}})
	propose(twopc.Command{Op: twopc.OpPutMember, Member: &twopc.MemberInfo{ID: "n2", APIAddr: "https://127.0.0.2:8470"}})
	// w2 is n2's, w3 belongs to n3, which the journal has no address of.
	propose(twopc.Command{Op: twopc.OpOpenSession, Job: "j", Writer: "w2", Node: "n2"})
	propose(twopc.Command{Op: twopc.OpOpenSession, Job: "j", Writer: "w3", Node: "n3"})
	// w1 is opened here, through the API's service.
	if _, err := coord.OpenSession(ctx, "j", "w1", nil); err != nil {
		t.Fatal(err)
	}

	type want struct {
		node, addr string
		remote     bool
	}
	check := func(job, writer string, w want) {
		t.Helper()
		node, addr, remote := route(job, writer)
		if (want{node, addr, remote}) != w {
			t.Errorf("%s/%s: got (%q, %q, %v), want (%q, %q, %v)", job, writer, node, addr, remote, w.node, w.addr, w.remote)
		}
	}
	local := want{}
	check("j", "w1", local)                                      // this node's
	check("j", "w2", want{"n2", "https://127.0.0.2:8470", true}) // n2's, address known
	check("j", "w3", local)                                      // n3 has no address: answered here
	check("j", "nobody", local)                                  // unknown writer: no_session here
	check("nojob", "w1", local)                                  // unknown job: job_not_found here

	// Another node takes w1 over: its calls go there now.
	propose(twopc.Command{Op: twopc.OpOpenSession, Job: "j", Writer: "w1", Node: "n2"})
	check("j", "w1", want{"n2", "https://127.0.0.2:8470", true})

	// Opening w2 here makes it this node's in the journal: served here.
	if _, err := coord.OpenSession(ctx, "j", "w2", nil); err != nil {
		t.Fatal(err)
	}
	check("j", "w2", local)
	if o, _, _, _ := m.Owner("j", "w2"); o != "n1" {
		t.Fatalf("owner of w2 after opening here: %q", o)
	}
	// A member whose address moves is followed.
	propose(twopc.Command{Op: twopc.OpPutMember, Member: &twopc.MemberInfo{ID: "n2", APIAddr: "http://127.0.0.3:9000"}})
	check("j", "w1", want{"n2", "http://127.0.0.3:9000", true})
}

// Passed calls are counted by route and outcome.
func TestProxiedCallsCounted(t *testing.T) {
	x := newMetrics(twopc.NewMachine(), nil)
	route := "POST /v1/jobs/{job}/writers/{writer}/records"
	x.observeProxy(route, api.ProxyAnswered)
	x.observeProxy(route, api.ProxyAnswered)
	x.observeProxy(route, api.ProxyUnreachable)
	if got := counterValue(t, x.proxied.WithLabelValues(route, api.ProxyAnswered)); got != 2 {
		t.Errorf("answered: %v, want 2", got)
	}
	if got := counterValue(t, x.proxied.WithLabelValues(route, api.ProxyUnreachable)); got != 1 {
		t.Errorf("unreachable: %v, want 1", got)
	}
}
