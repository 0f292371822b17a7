package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// journalWrites are the sidecar's Raft log store counters: append batches
// (one bolt commit, so one fsync, each) and entries; and the time its
// checkpoints spent per phase (txsink_checkpoint_phase_seconds, summed
// over jobs) and its record writes (the records route), to show where a
// checkpoint's time goes.
type journalWrites struct {
	batches, entries float64
	phaseSum         map[string]float64 // phase → seconds; "write" is the records route
	phaseCount       map[string]float64
	ok               bool
}

func (a journalWrites) minus(b journalWrites) journalWrites {
	d := journalWrites{batches: a.batches - b.batches, entries: a.entries - b.entries, ok: a.ok && b.ok,
		phaseSum: map[string]float64{}, phaseCount: map[string]float64{}}
	for k, v := range a.phaseSum {
		d.phaseSum[k] = v - b.phaseSum[k]
	}
	for k, v := range a.phaseCount {
		d.phaseCount[k] = v - b.phaseCount[k]
	}
	return d
}

// phaseMean is the mean time of one phase in the row, 0 if none.
func (j journalWrites) phaseMean(phase string) time.Duration {
	if j.phaseCount[phase] <= 0 {
		return 0
	}
	return time.Duration(j.phaseSum[phase] / j.phaseCount[phase] * float64(time.Second))
}

const writeRoute = `route="POST /v1/jobs/{job}/writers/{writer}/records"`

// journalWrites reads txsink_journal_store_{batches,entries}_total from
// the sidecar's /metrics; ok is false when they cannot be read (the row
// then prints no fsync count rather than a wrong one).
func (e *env) journalWrites(ctx context.Context) journalWrites {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+e.httpAddr+"/metrics", nil)
	if err != nil {
		return journalWrites{}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		logf("reading /metrics: %v", err)
		return journalWrites{}
	}
	defer resp.Body.Close()
	j := journalWrites{phaseSum: map[string]float64{}, phaseCount: map[string]float64{}}
	var haveB, haveE bool
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		if i < 0 || strings.HasPrefix(line, "#") {
			continue
		}
		name, labels, val := line[:i], "", line[i+1:]
		if k := strings.IndexByte(name, '{'); k >= 0 {
			name, labels = name[:k], name[k:]
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			continue
		}
		phase := ""
		if k := strings.Index(labels, `phase="`); k >= 0 {
			phase = labels[k+len(`phase="`):]
			phase = phase[:strings.IndexByte(phase, '"')]
		}
		if strings.HasPrefix(name, "txsink_http_request_duration_seconds_") && strings.Contains(labels, writeRoute) {
			phase = "write"
		}
		switch name {
		case "txsink_checkpoint_phase_seconds_sum", "txsink_http_request_duration_seconds_sum":
			if phase != "" {
				j.phaseSum[phase] += v
			}
		case "txsink_checkpoint_phase_seconds_count", "txsink_http_request_duration_seconds_count":
			if phase != "" {
				j.phaseCount[phase] += v
			}
		}
		switch name {
		case "txsink_journal_store_batches_total":
			j.batches, haveB = v, true
		case "txsink_journal_store_entries_total":
			j.entries, haveE = v, true
		}
	}
	j.ok = haveB && haveE && resp.StatusCode == http.StatusOK
	return j
}

// sampleRSS samples the sidecar's VmRSS every 50 ms until the returned
// func is called, which returns the largest sample in KiB. VmHWM cannot
// be reset, so it only gives the peak over the whole process lifetime.
func (e *env) sampleRSS() (stop func() int64) {
	if e.sidecar == nil || e.sidecar.Process == nil {
		return func() int64 { return 0 }
	}
	pid := e.sidecar.Process.Pid
	done := make(chan struct{})
	var wg sync.WaitGroup
	var peak int64
	wg.Go(func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			peak = max(peak, procStatusKB(pid, "VmRSS:"))
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	return func() int64 { close(done); wg.Wait(); return peak }
}

// procStatusKB reads one "<field> N kB" line of /proc/<pid>/status.
func procStatusKB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}
