package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

const (
	// e2eBatch records go out in one write call (sidecar) or one burst of
	// produces (direct) every e2ePace: an offered load of 10k records/s,
	// well below either path's capacity, so the row measures latency and
	// not a queue.
	e2eBatch = 100
	e2ePace  = 10 * time.Millisecond
	// e2eFetchWait bounds a read_committed fetch's long poll. It is the
	// same for both paths; it keeps the consumer's idle wait (franz-go's
	// default is 5 s) from standing in for visibility.
	e2eFetchWait = 10 * time.Millisecond
)

// e2eCase measures how long a record takes from the start of the call that
// writes it to being visible to a read_committed consumer, with commits
// every interval: direct, a franz-go transactional producer committing once
// the interval is up; sidecar, a session checkpointing (wait committed)
// once it is up. One writer; a consumer in this process stamps each record
// when its fetch returns it. issue 12: "well under 100 ms" at 50 ms.
//
// The sidecar row comes once per delivery guarantee g (guarantees.go). With
// at_least_once and none the records may become visible before the
// checkpoint (no transaction hides them): the row then shows what the
// guarantee saves in latency, not only in checkpoint time.
func e2eCase(path, g string, interval time.Duration) *benchCase {
	name := caseName("e2e-kafka", path, g, interval, 1)
	c := &benchCase{name: name, kind: "e2e", path: path, guarantee: g, interval: interval, writers: 1, lat: &latencies{}}
	topic := "bench-" + name
	c.run = func(ctx context.Context, e *env, d time.Duration) (int64, time.Duration, error) {
		if err := e.createTopic(ctx, topic); err != nil {
			return 0, 0, err
		}
		var starts sync.Map // batch number → time.Time its write call started
		cons, err := startVisibility(ctx, e, topic, &starts, c.lat)
		if err != nil {
			return 0, 0, err
		}
		defer cons.stop()
		var records int64
		var elapsed time.Duration
		if path == "direct" {
			records, elapsed, err = runWriters(ctx, name, 1, d, func(ctx context.Context, w int, end time.Time, n *atomic.Int64) (int64, error) {
				return e2eDirectWriter(ctx, e, topic, interval, &starts, end, n)
			})
		} else {
			job := "bench-" + name
			if err := putJob(ctx, e.unix, job, []string{"events"}, g); err != nil {
				return 0, 0, err
			}
			records, elapsed, err = runWriters(ctx, name, 1, d, func(ctx context.Context, w int, end time.Time, n *atomic.Int64) (int64, error) {
				return e2eSidecarWriter(ctx, e, job, topic, interval, &starts, end, n)
			})
		}
		if err != nil {
			return records, elapsed, err
		}
		// Every committed record must become visible; wait for the
		// consumer to see them all, bounded.
		deadline := time.Now().Add(30 * time.Second)
		for cons.seen.Load() < records {
			if time.Now().After(deadline) {
				return records, elapsed, fmt.Errorf("%w: the read_committed consumer saw %d of %d committed records in 30s",
					errMismatch, cons.seen.Load(), records)
			}
			select {
			case <-ctx.Done():
				return records, elapsed, ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
		return records, elapsed, cons.err()
	}
	c.verify = func(ctx context.Context, e *env, records int64) error {
		return verifyTopic(ctx, e, c, topic, records)
	}
	return c
}

// pace waits until the k-th slot after start; a writer behind schedule
// goes on at once (no catch-up burst is possible: it writes one batch).
func pace(ctx context.Context, start time.Time, k int64) error {
	d := time.Until(start.Add(time.Duration(k) * e2ePace))
	if d <= 0 {
		return ctx.Err()
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func e2eDirectWriter(ctx context.Context, e *env, topic string, interval time.Duration, starts *sync.Map, end time.Time, progress *atomic.Int64) (int64, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokerAddr), kgo.DefaultProduceTopic(topic),
		kgo.TransactionalID("bench-direct."+topic))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	var pe produceErrs
	promise := pe.promise
	if err := cl.BeginTransaction(); err != nil {
		return 0, err
	}
	start, last := time.Now(), time.Now()
	var produced, committed int64
	for k := int64(0); ; k++ {
		if err := pace(ctx, start, k); err != nil {
			return committed, err
		}
		starts.Store(k, time.Now())
		for i := range e2eBatch {
			n := produced + int64(i)
			cl.Produce(ctx, &kgo.Record{Key: []byte("0:" + strconv.FormatInt(n, 10)), Value: valueAt(0, n)}, promise)
		}
		produced += e2eBatch
		progress.Add(e2eBatch)
		done := !time.Now().Before(end)
		if done || time.Since(last) >= interval {
			if err := cl.Flush(ctx); err != nil {
				return committed, err
			}
			if err := pe.err(); err != nil {
				return committed, err
			}
			if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
				return committed, fmt.Errorf("commit: %w", err)
			}
			committed, last = produced, time.Now()
			if done {
				return committed, nil
			}
			if err := cl.BeginTransaction(); err != nil {
				return committed, err
			}
		}
	}
}

func e2eSidecarWriter(ctx context.Context, e *env, job, topic string, interval time.Duration, starts *sync.Map, end time.Time, progress *atomic.Int64) (int64, error) {
	cl := e.unix
	sess, err := cl.OpenSession(ctx, job, "0", nil)
	if err != nil {
		return 0, fmt.Errorf("open session: %w", err)
	}
	var body bytes.Buffer
	start, last := time.Now(), time.Now()
	var produced, committed, n int64
	for k := int64(0); ; k++ {
		if err := pace(ctx, start, k); err != nil {
			return committed, err
		}
		body.Reset()
		for i := range e2eBatch {
			r := produced + int64(i)
			fmt.Fprintf(&body, `{"sink":"events","topic":%q,"key":"0:%d","value":%q}`+"\n", topic, r, valueAt(0, r))
		}
		starts.Store(k, time.Now())
		if _, err := cl.WriteNDJSON(ctx, job, "0", sess.Epoch, client.Seq(k+1), body.Bytes()); err != nil {
			return committed, errors.Join(fmt.Errorf("write: %w", err), e.sidecarAlive())
		}
		produced += e2eBatch
		progress.Add(e2eBatch)
		done := !time.Now().Before(end)
		if done || time.Since(last) >= interval {
			n++
			res, err := cl.Checkpoint(ctx, job, "0", sess.Epoch, n, nil, twopc.WaitCommitted)
			if err != nil {
				return committed, errors.Join(fmt.Errorf("checkpoint %d: %w", n, err), e.sidecarAlive())
			}
			if res.Status != twopc.StatusCommitted {
				return committed, fmt.Errorf("checkpoint %d: status %q, want committed", n, res.Status)
			}
			committed, last = produced, time.Now()
			if done {
				return committed, nil
			}
		}
	}
}

// visibility is a read_committed consumer that records, for each record,
// the time from its batch's write call start to the fetch that returned it.
type visibility struct {
	seen   atomic.Int64
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	fail   error
}

func startVisibility(ctx context.Context, e *env, topic string, starts *sync.Map, lat *latencies) (*visibility, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokerAddr), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(e2eFetchWait))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	v := &visibility{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(v.done)
		defer cl.Close()
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			now := time.Now()
			fs.EachError(func(_ string, _ int32, err error) {
				if !errors.Is(err, context.Canceled) {
					v.mu.Lock()
					v.fail = errors.Join(v.fail, err)
					v.mu.Unlock()
				}
			})
			fs.EachRecord(func(r *kgo.Record) {
				_, n, ok := parseKey(r.Key)
				if !ok {
					return
				}
				t, ok := starts.Load(n / e2eBatch)
				if !ok {
					v.mu.Lock()
					v.fail = errors.Join(v.fail, fmt.Errorf("record %d visible before its write call started", n))
					v.mu.Unlock()
					return
				}
				lat.add(now.Sub(t.(time.Time)))
				v.seen.Add(1)
			})
		}
	}()
	return v, nil
}

func (v *visibility) stop() { v.cancel(); <-v.done }

func (v *visibility) err() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.fail
}
