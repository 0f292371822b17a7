// Package restest measures a process's resources for tests that show them
// bounded by configuration rather than by load: goroutines, open file
// descriptors and the live heap.
package restest

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"
)

// Usage is one measurement.
type Usage struct {
	Goroutines int
	FDs        int    // entries of /proc/self/fd; -1 where there is no /proc
	HeapBytes  uint64 // live heap after a GC
}

func (u Usage) String() string {
	return fmt.Sprintf("goroutines %d, fds %d, heap %.1f MiB", u.Goroutines, u.FDs, float64(u.HeapBytes)/(1<<20))
}

// Measure runs a GC and reads the current usage.
func Measure() Usage {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fds := -1
	if es, err := os.ReadDir("/proc/self/fd"); err == nil {
		fds = len(es)
	}
	return Usage{Goroutines: runtime.NumGoroutine(), FDs: fds, HeapBytes: ms.HeapAlloc}
}

// WaitBelow polls until goroutines and fds are at most base's plus slack
// (connections close and goroutines exit asynchronously), and fails the
// test with the last measurement when within does not suffice.
func WaitBelow(t testing.TB, base Usage, slack int, within time.Duration) Usage {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		u := Measure()
		if u.Goroutines <= base.Goroutines+slack && (u.FDs < 0 || u.FDs <= base.FDs+slack) {
			return u
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v; want at most %d goroutines and %d fds (baseline %v + %d)",
				within, u, base.Goroutines+slack, base.FDs+slack, base, slack)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
