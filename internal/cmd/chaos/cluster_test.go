package main

import (
	"strings"
	"testing"
	"time"
)

// TestConfigNodes: CHAOS_NODES=1 is today's run; a cluster needs 3 or more
// nodes and sidecar run, puts an app on every node unless CHAOS_WRITERS
// says otherwise, and adds node-kill to the default kinds.
func TestConfigNodes(t *testing.T) {
	for _, tc := range []struct {
		env     map[string]string
		nodes   int
		writers int
		faults  string
		err     string
	}{
		{map[string]string{}, 1, 2, "kill,broker-stop,db-stop,broker-restart,slow", ""},
		{map[string]string{"CHAOS_NODES": "3"}, 3, 3, "kill,broker-stop,db-stop,broker-restart,slow,node-kill", ""},
		{map[string]string{"CHAOS_NODES": "5", "CHAOS_WRITERS": "2"}, 5, 2, "kill,broker-stop,db-stop,broker-restart,slow,node-kill", ""},
		{map[string]string{"CHAOS_NODES": "2"}, 0, 0, "", "CHAOS_NODES=2: want 1 or at least 3"},
		{map[string]string{"CHAOS_NODES": "0"}, 0, 0, "", `CHAOS_NODES="0": want an integer >= 1`},
		{map[string]string{"CHAOS_NODES": "3", "CHAOS_MODE": "dev"}, 0, 0, "", "a cluster needs CHAOS_MODE=run"},
		{map[string]string{"CHAOS_FAULTS": "node-kill"}, 0, 0, "", "node-kill needs a cluster"},
	} {
		for _, k := range []string{"CHAOS_NODES", "CHAOS_WRITERS", "CHAOS_MODE", "CHAOS_FAULTS", "CHAOS_ROUNDS", "CHAOS_EVENTS", "CHAOS_RATE", "CHAOS_SEED"} {
			t.Setenv(k, tc.env[k])
		}
		c, err := configFromEnv()
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: got %v, want an error containing %q", tc.env, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tc.env, err)
			continue
		}
		if c.nodes != tc.nodes || c.writers != tc.writers || strings.Join(c.faults, ",") != tc.faults {
			t.Errorf("%v: got %d nodes, %d writers, faults %v; want %d, %d, %s", tc.env, c.nodes, c.writers, c.faults, tc.nodes, tc.writers, tc.faults)
		}
	}
}

// TestAppSidecar: app i talks to node i mod N first and knows every node.
func TestAppSidecar(t *testing.T) {
	d := &driver{cfg: config{nodes: 3}}
	for i, a := range []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"} {
		d.nodes = append(d.nodes, &node{id: string(rune('a' + i)), httpAddr: a})
	}
	for i, want := range []string{
		"http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3",
		"http://127.0.0.1:2,http://127.0.0.1:3,http://127.0.0.1:1",
		"http://127.0.0.1:3,http://127.0.0.1:1,http://127.0.0.1:2",
		"http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3",
	} {
		if got := d.appSidecar(i); got != want {
			t.Errorf("app %d: got %s, want %s", i, got, want)
		}
	}
}

func TestMinMedMax(t *testing.T) {
	ms := func(ns ...int) []time.Duration {
		var ds []time.Duration
		for _, n := range ns {
			ds = append(ds, time.Duration(n)*time.Millisecond)
		}
		return ds
	}
	for _, tc := range []struct {
		in   []time.Duration
		want string
	}{
		{nil, "-"},
		{ms(700), "min 700ms, median 700ms, max 700ms (n=1)"},
		{ms(3000, 1000, 2000), "min 1s, median 2s, max 3s (n=3)"},
		{ms(400, 100, 300, 200), "min 100ms, median 250ms, max 400ms (n=4)"},
	} {
		if got := minMedMax(tc.in); got != tc.want {
			t.Errorf("%v: got %q, want %q", tc.in, got, tc.want)
		}
	}
}
