package main

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func TestParseFaults(t *testing.T) {
	single := []string{faultKill, faultBrokerStop, faultDBStop, faultBrokerRestart, faultSlow}
	for _, tc := range []struct {
		mode  string
		nodes int
		in    string
		want  []string
		err   string
	}{
		{"run", 1, "", single, ""},
		{"run", 3, "", allFaults, ""},
		{"dev", 1, " ", []string{faultKill, faultBrokerStop, faultDBStop}, ""},
		{"run", 1, "kill", []string{faultKill}, ""},
		{"run", 1, " slow , db-stop,", []string{faultSlow, faultDBStop}, ""},
		{"dev", 1, "broker-stop,kill", []string{faultBrokerStop, faultKill}, ""},
		{"run", 3, "node-kill,kill", []string{faultNodeKill, faultKill}, ""},
		{"run", 1, "kill,stop", nil, `unknown kind "stop"`},
		{"run", 1, "kill,kill", nil, "kill given twice"},
		{"run", 1, ",,", nil, "names no kind"},
		{"dev", 1, "kill,slow", nil, "slow is not available with CHAOS_MODE=dev"},
		{"dev", 1, "broker-restart", nil, "broker-restart is not available with CHAOS_MODE=dev"},
		{"run", 1, "kill,node-kill", nil, "node-kill needs a cluster (CHAOS_NODES=3)"},
		{"dev", 1, "node-kill", nil, "node-kill is not available with CHAOS_MODE=dev"},
	} {
		t.Run(fmt.Sprintf("%s/%d:%s", tc.mode, tc.nodes, tc.in), func(t *testing.T) {
			got, err := parseFaults(tc.mode, tc.nodes, tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, %v; want an error containing %q", got, err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// TestScheduleCoversEveryKind: a run with at least as many rounds as kinds
// (CI's short runs) injects every kind, and a seed repeats its plan.
func TestScheduleCoversEveryKind(t *testing.T) {
	orders := map[string]bool{}
	for seed := range uint64(200) {
		for _, rounds := range []int{len(allFaults), 20} {
			plan := schedule(rand.New(rand.NewPCG(seed, 1)).IntN, allFaults, rounds)
			if len(plan) != rounds {
				t.Fatalf("seed %d: got %d rounds, want %d", seed, len(plan), rounds)
			}
			first := slices.Clone(plan[:len(allFaults)])
			orders[strings.Join(first, ",")] = true
			slices.Sort(first)
			want := slices.Sorted(slices.Values(allFaults))
			if !slices.Equal(first, want) {
				t.Fatalf("seed %d: first rounds %v, want each of %v once", seed, plan[:len(allFaults)], allFaults)
			}
			for _, k := range plan {
				if !slices.Contains(allFaults, k) {
					t.Fatalf("seed %d: kind %q not asked for", seed, k)
				}
			}
			again := schedule(rand.New(rand.NewPCG(seed, 1)).IntN, allFaults, rounds)
			if !slices.Equal(plan, again) {
				t.Fatalf("seed %d: plan %v, then %v with the same seed", seed, plan, again)
			}
		}
	}
	// The order comes from the seed: 200 seeds give many of the 120 orders.
	if len(orders) < 50 {
		t.Fatalf("got %d different orders of the first rounds from 200 seeds, want the seed to vary it", len(orders))
	}
	if got := schedule(rand.New(rand.NewPCG(1, 1)).IntN, []string{faultKill}, 3); !slices.Equal(got, []string{"kill", "kill", "kill"}) {
		t.Fatalf("one kind: got %v", got)
	}
	if got := schedule(rand.New(rand.NewPCG(1, 1)).IntN, allFaults, 2); len(got) != 2 || got[0] == got[1] {
		t.Fatalf("2 rounds of 5 kinds: got %v, want 2 different kinds", got)
	}
}

func TestSlowOutcome(t *testing.T) {
	const refused = "writer 1: pausing 6.9s between the records and checkpoint 33 (--pause-file)\n" +
		"writer 1: checkpoint 33 after the pause: txsink: 502 sink_failure: prepare checkpoint 33: kafka: transaction expired: open for 6.9s\n" +
		"writer 1: checkpoint 33: txsink: 502 sink_failure: …; reopening the session in 100ms\n"
	for _, tc := range []struct {
		name, log       string
		outcome, resume string
	}{
		{"nothing yet", "writer 1: checkpoint 32 committed: 100 events\n", "", ""},
		{"refused, not reopened yet", refused, "txsink: 502 sink_failure: prepare checkpoint 33: kafka: transaction expired: open for 6.9s", ""},
		{"refused and replayed", refused + "writer 1: session epoch 7, resuming after checkpoint 32 at offsets map[1:800]\n",
			"txsink: 502 sink_failure: prepare checkpoint 33: kafka: transaction expired: open for 6.9s", "reopened, replaying after checkpoint 32"},
		{"accepted", "writer 0: checkpoint 9 after the pause: status committed\n", "status committed", ""},
		// A session line from before the pause is not the replay.
		{"old session line", "writer 1: session epoch 6, resuming after checkpoint 20 at offsets map[]\n" + refused,
			"txsink: 502 sink_failure: prepare checkpoint 33: kafka: transaction expired: open for 6.9s", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			outcome, resumed := slowOutcome(tc.log)
			if outcome != tc.outcome || resumed != tc.resume {
				t.Fatalf("got %q, %q; want %q, %q", outcome, resumed, tc.outcome, tc.resume)
			}
			// Only an accepted checkpoint after the pause fails the run.
			if got, want := accepted(outcome), tc.name == "accepted"; got != want {
				t.Fatalf("accepted(%q) = %v, want %v", outcome, got, want)
			}
		})
	}
}
