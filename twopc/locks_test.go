package twopc

import (
	"sync"
	"testing"
)

// TestWriterLocks: one writer's callers exclude each other, and the map is
// empty once nobody holds or waits (its memory is bounded by the calls in
// progress).
func TestWriterLocks(t *testing.T) {
	var l writerLocks
	var wg sync.WaitGroup
	inside := map[writerKey]int{}
	var mu sync.Mutex
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := writerKey{"j", string(rune('a' + i%5))}
			unlock := l.lock(k)
			mu.Lock()
			inside[k]++
			if inside[k] != 1 {
				t.Errorf("%v: %d holders, want 1", k, inside[k])
			}
			mu.Unlock()
			mu.Lock()
			inside[k]--
			mu.Unlock()
			unlock()
		}()
	}
	wg.Wait()
	if n := l.size(); n != 0 {
		t.Fatalf("entries after every unlock: got %d, want 0", n)
	}
}
