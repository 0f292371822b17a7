package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

// ckptResult is a ckpt row that completed n checkpoints in 1 s with every
// loop taking lat.
func ckptResult(g string, n int, lat time.Duration) *result {
	c := ckptCase("kafka", "sidecar", g, 4)
	for range n {
		c.lat.add(lat)
	}
	return &result{c: c, records: int64(n * ckptRecords), elapsed: time.Second}
}

func TestGuaranteeSummary(t *testing.T) {
	eo := ckptResult("eo", 300, 6*time.Millisecond)
	alo := ckptResult("alo", 400, 4*time.Millisecond)
	none := ckptResult("none", 500, 3*time.Millisecond)
	var buf bytes.Buffer
	printGuaranteeSummary(&buf, []*result{eo, alo, none})
	out := buf.String()
	want := "- ckpt-kafka-sidecar-eo-w4 vs ckpt-kafka-sidecar-alo-w4: exactly-once costs 25 % throughput, +2.0 ms p50 checkpoint"
	if !strings.Contains(out, want) {
		t.Fatalf("summary lacks %q:\n%s", want, out)
	}
	if strings.Contains(out, "none-w4 vs") {
		t.Fatalf("summary compares none:\n%s", out)
	}

	// No alo twin (or a failed one): no comparison line.
	alo.err = errors.New("boom")
	buf.Reset()
	printGuaranteeSummary(&buf, []*result{eo, alo})
	if buf.Len() != 0 {
		t.Fatalf("summary without a clean alo row:\n%s", buf.String())
	}
}

func TestCheckXA(t *testing.T) {
	for _, tc := range []struct {
		g           string
		prepares    int64
		checkpoints int64
		ok          bool
	}{
		{"eo", 100, 100, true},
		{"eo", 99, 100, false}, // a checkpoint without its XA branch
		{"alo", 0, 100, true},
		{"alo", 100, 100, false}, // written through XA: the guarantee was ignored
		{"none", 3, 100, true},   // other clients of a shared server
		{"", 0, 100, true},       // no guarantee: not checked
	} {
		c := &benchCase{name: "mysql-sidecar-" + tc.g, guarantee: tc.g, xaPrepares: tc.prepares}
		err := checkXA(c, tc.checkpoints)
		if (err == nil) != tc.ok {
			t.Errorf("%s with %d XA PREPAREs for %d checkpoints: err %v, want ok=%v", tc.g, tc.prepares, tc.checkpoints, err, tc.ok)
		}
		if err != nil && !errors.Is(err, errMismatch) {
			t.Errorf("%s: %v is not a mismatch", tc.g, err)
		}
	}
}

func TestPlanNamesEveryGuarantee(t *testing.T) {
	names := strings.Join(allCaseNames(), " ")
	for _, n := range []string{"kafka-unix-eo-100ms", "kafka-unix-alo-1s", "mysql-sidecar-none", "ckpt-kafka-sidecar-eo-w1",
		"ckpt-both-sidecar-alo-w1", "e2e-kafka-sidecar-none-50ms", "ckpt-kafka-direct-w1", "e2e-kafka-direct-50ms", "mysql-async", "kafka-bin-eo-100ms", "kafka-bin-eo-1s"} {
		if !strings.Contains(" "+names+" ", " "+n+" ") {
			t.Errorf("no case %s in %s", n, names)
		}
	}
	if strings.Contains(names, "kafka-bin-alo") || strings.Contains(names, "kafka-bin-none") {
		t.Errorf("binary rows other than exactly_once in %s", names)
	}
	if _, err := parseGuarantees("eo,twice"); err == nil {
		t.Error("parseGuarantees accepted twice")
	}
}

func TestLostOK(t *testing.T) {
	for _, tc := range []struct {
		g                       string
		distinct, records, lost int64
		ok                      bool
	}{
		{"eo", 100, 100, 0, true},
		{"eo", 99, 100, 1, false}, // exactly-once may lose nothing, counted or not
		{"alo", 99, 100, 1, false},
		{"none", 90, 100, 10, true},
		{"none", 95, 100, 10, true},  // counted as failed but delivered after all (a timeout)
		{"none", 89, 100, 10, false}, // one lost without a count
		{"none", 101, 100, 0, false},
	} {
		if got := lostOK(&benchCase{guarantee: tc.g}, tc.distinct, tc.records, tc.lost); got != tc.ok {
			t.Errorf("%s: %d of %d delivered, %d counted failed: ok=%v, want %v", tc.g, tc.distinct, tc.records, tc.lost, got, tc.ok)
		}
	}
}
