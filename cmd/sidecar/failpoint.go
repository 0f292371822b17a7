package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// failpointFromEnv returns a twopc.Config.Failpoint built from
// TXSINK_FAILPOINT=<point>[:<n>]: the process kills itself with SIGKILL the
// n-th time (default first) it reaches the point. The crash tests use it to
// die exactly between two protocol steps, e.g. after the journal entry and
// before the Kafka commit. Unset: nil (no cost on the hot path).
func failpointFromEnv() (func(string), error) {
	v := os.Getenv("TXSINK_FAILPOINT")
	if v == "" {
		return nil, nil
	}
	point, nth := v, int64(1)
	if i := strings.LastIndexByte(v, ':'); i >= 0 {
		n, err := strconv.ParseInt(v[i+1:], 10, 64)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("TXSINK_FAILPOINT=%q: want <point>[:<n ≥ 1>]", v)
		}
		point, nth = v[:i], n
	}
	switch point {
	case "after-write", "after-prepare", "after-journal", "after-commit-first-sink", "after-flush":
	default:
		return nil, fmt.Errorf("TXSINK_FAILPOINT: unknown point %q", point)
	}
	var hits atomic.Int64
	return func(p string) {
		if p == point && hits.Add(1) == nth {
			fmt.Fprintf(os.Stderr, "txsink: failpoint %s reached: SIGKILL\n", p)
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // never returns
		}
	}, nil
}
