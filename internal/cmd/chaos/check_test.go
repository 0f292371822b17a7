package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// The checker must be able to fail: these tests feed it outputs with a
// lost, a duplicated and a miscounted checkpoint and check that it says so.

// clicksOf builds an input of two partitions: event n in partition (n-1)%2,
// app "a" for odd n and "b" for even n.
func clicksOf(n int) []rec {
	var in []rec
	next := map[int32]int64{}
	for i := 1; i <= n; i++ {
		p := int32((i - 1) % 2)
		app := "a"
		if i%2 == 0 {
			app = "b"
		}
		v, _ := json.Marshal(click{N: int64(i), App: app})
		in = append(in, rec{partition: p, offset: next[p], value: v})
		next[p]++
	}
	return in
}

// inc is one output record: views of app over [from,to) of partition p.
func inc(t *testing.T, ckpt int64, app string, views int64, p string, from, to int64) rec {
	t.Helper()
	v, err := json.Marshal(increment{App: app, Views: views, Checkpoint: ckpt, Writer: "0", Topic: "clicks",
		From: map[string]int64{p: from}, To: map[string]int64{p: to}})
	if err != nil {
		t.Fatal(err)
	}
	return rec{value: v}
}

func TestCoverage(t *testing.T) {
	in := clicksOf(8) // partition 0: 4 x "a", partition 1: 4 x "b"
	good := func() []rec {
		return []rec{
			inc(t, 1, "a", 2, "0", 0, 2), inc(t, 1, "b", 2, "1", 0, 2),
			inc(t, 2, "a", 2, "0", 2, 4), inc(t, 2, "b", 2, "1", 2, 4),
		}
	}
	tests := []struct {
		name                   string
		out                    []rec
		missing, dup, problems int
	}{
		{"exactly once", good(), 0, 0, 0},
		{"checkpoint 2 lost", good()[:2], 4, 0, 0},
		{"checkpoint 1 twice", append(good(), inc(t, 1, "a", 2, "0", 0, 2)), 0, 2, 0},
		{"views miscounted", append(good()[:3], inc(t, 2, "b", 3, "1", 2, 4)), 0, 0, 1},
		{"range beyond the input", append(good(), inc(t, 3, "a", 1, "0", 4, 5)), 0, 0, 2},
		{"not an increment", append(good(), rec{value: []byte(`{"x":1}`)}), 0, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cv := coverage(in, tt.out)
			if cv.events != 8 || cv.maxN != 8 {
				t.Errorf("events %d, max %d; want 8, 8", cv.events, cv.maxN)
			}
			if cv.missing != int64(tt.missing) || cv.duplicated != int64(tt.dup) || len(cv.problems) != tt.problems {
				t.Errorf("got %d missing, %d duplicated, problems %q; want %d, %d, %d problems",
					cv.missing, cv.duplicated, cv.problems, tt.missing, tt.dup, tt.problems)
			}
		})
	}
}

func TestCoverageInputProblems(t *testing.T) {
	in := clicksOf(4)
	in = append(in, in[0]) // event 1 again, at a wrong offset
	cv := coverage(in, nil)
	if len(cv.problems) < 2 {
		t.Errorf("got problems %q; want the gap and the repeated number", cv.problems)
	}
	if cv.missing != 5 {
		t.Errorf("got %d missing with no output; want 5", cv.missing)
	}
}

func TestCompareTotals(t *testing.T) {
	truth := map[string]int64{"a": 10, "b": 5}
	for _, tt := range []struct {
		got          map[string]int64
		missing, dup int64
	}{
		{map[string]int64{"a": 10, "b": 5}, 0, 0},
		{map[string]int64{"a": 12, "b": 5}, 0, 2},
		{map[string]int64{"a": 10}, 5, 0},
		{map[string]int64{"a": 9, "b": 5, "c": 1}, 1, 1},
	} {
		t.Run(fmt.Sprint(tt.got), func(t *testing.T) {
			m, d, _ := compareTotals(truth, tt.got)
			if m != tt.missing || d != tt.dup {
				t.Errorf("got %d missing, %d duplicated; want %d, %d", m, d, tt.missing, tt.dup)
			}
		})
	}
}

// TestCountedOffsets: the output's furthest range per partition is what the
// group's offsets are compared with.
func TestCountedOffsets(t *testing.T) {
	in := clicksOf(8)
	cv := coverage(in, []rec{inc(t, 1, "a", 2, "0", 0, 2), inc(t, 2, "a", 1, "0", 2, 3), inc(t, 1, "b", 2, "1", 0, 2)})
	if cv.counted[0] != 3 || cv.counted[1] != 2 || len(cv.counted) != 2 {
		t.Fatalf("counted %v, want map[0:3 1:2]", cv.counted)
	}
}

// TestCompareGroupOffsets: the group check fails for an offset ahead of or
// behind the output, a missing one, one of a state app's partition and one
// of a partition the input lacks.
func TestCompareGroupOffsets(t *testing.T) {
	counted := map[int32]int64{0: 10, 1: 20, 2: 30, 3: 40}
	odd := map[int32]bool{1: true, 3: true} // CHAOS_OFFSETS=mixed with 2 apps
	all := map[int32]bool{0: true, 1: true, 2: true, 3: true}
	for _, tt := range []struct {
		name      string
		committed map[int32]int64
		parts     map[int32]bool
		problems  int
	}{
		{"mixed, exact", map[int32]int64{1: 20, 3: 40}, odd, 0},
		{"group, exact", map[int32]int64{0: 10, 1: 20, 2: 30, 3: 40}, all, 0},
		{"ahead", map[int32]int64{1: 21, 3: 40}, odd, 1},
		{"behind", map[int32]int64{1: 20, 3: 39}, odd, 1},
		{"missing", map[int32]int64{1: 20}, odd, 1},
		{"a state app's partition", map[int32]int64{0: 10, 1: 20, 3: 40}, odd, 1},
		{"a partition the input lacks", map[int32]int64{0: 10, 1: 20, 2: 30, 3: 40, 4: 1}, all, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			probs, line := compareGroupOffsets("g", counted, tt.committed, tt.parts, 4)
			if len(probs) != tt.problems {
				t.Errorf("problems %q, want %d", probs, tt.problems)
			}
			if tt.problems == 0 && !strings.Contains(line, fmt.Sprintf("%d/%d partitions", len(tt.parts), len(tt.parts))) {
				t.Errorf("line %q does not say every partition matched", line)
			}
		})
	}
}
