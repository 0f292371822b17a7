package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

// kafkaCase: records of batchSize go out in a loop; a transaction is
// committed (direct) or a checkpoint completed (sidecar) after the first
// batch that ends interval or more after the last commit. Each case has a
// topic of its own with one partition.
//
// g (unix and bin rows only) is the job's delivery guarantee
// (guarantees.go). Path bin is unix with the binary records body
// (api.BinaryRecordsType) built by the app without JSON: the row that shows
// what JSON costs on either side, next to the NDJSON one.
func kafkaCase(path, g string, interval time.Duration, writers int) *benchCase {
	c := &benchCase{name: caseName("kafka", path, g, interval, writers), kind: "kafka", path: path,
		guarantee: g, interval: interval, writers: writers}
	topic := "bench-" + c.name
	c.run = func(ctx context.Context, e *env, d time.Duration) (int64, time.Duration, error) {
		if err := e.createTopic(ctx, topic); err != nil {
			return 0, 0, err
		}
		switch path {
		case "direct":
			return runWriters(ctx, c.name, writers, d, func(ctx context.Context, w int, end time.Time, n *atomic.Int64) (int64, error) {
				return kafkaDirectWriter(ctx, e, topic, interval, w, end, n)
			})
		default:
			cl := e.tcp
			if path == "unix" || path == "bin" {
				cl = e.unix
			}
			job := "bench-" + c.name
			if err := putJob(ctx, cl, job, []string{"events"}, g); err != nil {
				return 0, 0, err
			}
			return runWriters(ctx, c.name, writers, d, func(ctx context.Context, w int, end time.Time, n *atomic.Int64) (int64, error) {
				return kafkaSidecarWriter(ctx, e, cl, job, topic, interval, w, end, n, path == "bin")
			})
		}
	}
	c.verify = func(ctx context.Context, e *env, records int64) error {
		return verifyTopic(ctx, e, c, topic, records)
	}
	return c
}

func kafkaDirectWriter(ctx context.Context, e *env, topic string, interval time.Duration, w int, end time.Time, progress *atomic.Int64) (int64, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokerAddr), kgo.DefaultProduceTopic(topic),
		kgo.TransactionalID(fmt.Sprintf("bench-direct.%s.%d", topic, w)))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	var pe produceErrs
	promise := pe.promise
	commit := func(again bool) error {
		if err := cl.Flush(ctx); err != nil {
			return err
		}
		if err := pe.err(); err != nil {
			return err
		}
		if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		if again {
			return cl.BeginTransaction()
		}
		return nil
	}
	if err := cl.BeginTransaction(); err != nil {
		return 0, err
	}
	prefix := []byte(strconv.Itoa(w) + ":")
	var produced, committed int64
	last := time.Now()
	for {
		for i := range batchSize {
			k := strconv.AppendInt(append(make([]byte, 0, 24), prefix...), produced+int64(i), 10)
			cl.Produce(ctx, &kgo.Record{Key: k, Value: valueAt(w, produced+int64(i))}, promise)
		}
		produced += batchSize
		progress.Add(batchSize)
		now := time.Now()
		done := !now.Before(end)
		if done || now.Sub(last) >= interval {
			if err := commit(!done); err != nil {
				return committed, err
			}
			committed, last = produced, time.Now()
		}
		if done {
			return committed, nil
		}
	}
}

// kafkaSidecarWriter writes NDJSON, or with bin the binary body.
func kafkaSidecarWriter(ctx context.Context, e *env, cl *client.Client, job, topic string, interval time.Duration, w int, end time.Time, progress *atomic.Int64, bin bool) (int64, error) {
	writer := strconv.Itoa(w)
	sess, err := cl.OpenSession(ctx, job, writer, nil)
	if err != nil {
		return 0, fmt.Errorf("open session: %w", err)
	}
	var body bytes.Buffer
	var bbody, key []byte
	var produced, committed, seq, n int64
	last := time.Now()
	for {
		seq++
		if bin {
			bbody = append(bbody[:0], "TXR1"...)
			for i := range batchSize {
				bbody = appendBinStr(bbody, "events")
				bbody = appendBinStr(bbody, topic)
				bbody = append(bbody, 0) // no partition
				key = strconv.AppendInt(append(append(key[:0], writer...), ':'), produced+int64(i), 10)
				bbody = append(binary.AppendUvarint(bbody, uint64(len(key))+1), key...)
				v := valueAt(w, produced+int64(i))
				bbody = append(binary.AppendUvarint(bbody, uint64(len(v))+1), v...)
				bbody = append(bbody, 0) // no headers
			}
			_, err = cl.WriteBinary(ctx, job, writer, sess.Epoch, client.Seq(seq), bbody)
		} else {
			body.Reset()
			for i := range batchSize {
				body.WriteString(`{"sink":"events","topic":"`)
				body.WriteString(topic)
				body.WriteString(`","key":"`)
				body.WriteString(writer)
				body.WriteByte(':')
				body.WriteString(strconv.FormatInt(produced+int64(i), 10))
				body.WriteString(`","value":"`)
				body.Write(valueAt(w, produced+int64(i)))
				body.WriteString("\"}\n")
			}
			_, err = cl.WriteNDJSON(ctx, job, writer, sess.Epoch, client.Seq(seq), body.Bytes())
		}
		if err != nil {
			return committed, errors.Join(fmt.Errorf("write: %w", err), e.sidecarAlive())
		}
		produced += batchSize
		progress.Add(batchSize)
		now := time.Now()
		done := !now.Before(end)
		if done || now.Sub(last) >= interval {
			n++
			if err := checkpoint(ctx, e, cl, job, writer, sess.Epoch, n, twopc.WaitCommitted); err != nil {
				return committed, err
			}
			committed, last = produced, time.Now()
		}
		if done {
			return committed, nil
		}
	}
}

// verifyTopic reads topic with read_committed and checks that it holds
// exactly records records, keys "<writer>:<n>" with each writer's n running
// 0, 1, … without gap or duplicate. For a row whose guarantee allows
// duplicates (alo, none; dupsAllowed) each key must be there at least once
// and the duplicates are counted into c.dups instead of failing the row.
// Loss fails every row: the bench injects no faults, so even none should
// deliver everything (a shortfall there is worth a look at the sidecar's
// error counters).
func verifyTopic(ctx context.Context, e *env, c *benchCase, topic string, records int64) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokerAddr), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxBytes(32<<20), kgo.FetchMaxPartitionBytes(16<<20))
	if err != nil {
		return err
	}
	defer cl.Close()
	seen := map[int][]uint64{} // writer → bitset of n
	counts := map[int]int64{}
	var total, dups, bad, lost int64
	lastProgress := time.Now()
	for {
		timeout := 2 * time.Second
		if total-dups >= records {
			timeout = 300 * time.Millisecond // anything beyond records is an error; look briefly
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		fs := cl.PollFetches(pctx)
		cancel()
		got := int64(0)
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) {
				ferr = err
			}
		})
		if ferr != nil {
			return fmt.Errorf("read %s: %w", topic, ferr)
		}
		fs.EachRecord(func(r *kgo.Record) {
			got++
			w, n, ok := parseKey(r.Key)
			if !ok {
				bad++
				return
			}
			bs := seen[w]
			for int64(len(bs))*64 <= n {
				bs = append(bs, make([]uint64, len(bs)+1024)...)
			}
			seen[w] = bs
			if bs[n/64]&(1<<(n%64)) != 0 {
				dups++
				return
			}
			bs[n/64] |= 1 << (n % 64)
			counts[w]++
		})
		total += got
		if got > 0 {
			lastProgress = time.Now()
			continue
		}
		if c.guarantee == "none" {
			// Fire and forget may have dropped records (counted): stop
			// waiting once every record not counted as failed is here.
			if lost, err = e.recordsFailed(ctx, "bench-"+c.name, "events"); err != nil {
				return err
			}
		}
		if total-dups >= records-lost || time.Since(lastProgress) > 30*time.Second || ctx.Err() != nil {
			break
		}
	}
	var problems []string
	c.dups = dups
	distinct := total - dups - bad
	if c.guarantee == "none" {
		if lost, err = e.recordsFailed(ctx, "bench-"+c.name, "events"); err != nil {
			return err
		}
		c.lost = records - distinct
	}
	if !lostOK(c, distinct, records, lost) {
		what := fmt.Sprintf("read %d distinct records (%d in all) with read_committed, want %d committed", distinct, total, records)
		if c.guarantee == "none" {
			what = fmt.Sprintf("read %d distinct records (%d in all) with read_committed of %d accepted, and the sidecar "+
				"counted %d as failed: %d lost without a count", distinct, total, records, lost, records-distinct-lost)
		}
		problems = append(problems, what)
	}
	if dups > 0 && !dupsAllowed(c.guarantee) {
		problems = append(problems, fmt.Sprintf("%d duplicates", dups))
	}
	if bad > 0 {
		problems = append(problems, fmt.Sprintf("%d records with a foreign key", bad))
	}
	// Each writer's keys must be 0..count-1: no gap. A none row may lose
	// records anywhere (counted, checked by lostOK above).
	for w, bs := range seen {
		if c.guarantee == "none" {
			break
		}
		n := counts[w]
		for i := range n {
			if bs[i/64]&(1<<(i%64)) == 0 {
				problems = append(problems, fmt.Sprintf("writer %d: gap at %d (has %d keys)", w, i, n))
				break
			}
		}
	}
	if len(problems) > 0 {
		// Offsets help tell a stuck transaction (LSO below HWM) from loss.
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if hwm, err := e.adm.ListEndOffsets(dctx, topic); err == nil {
			if lso, err := e.adm.ListCommittedOffsets(dctx, topic); err == nil {
				hwm.Each(func(o kadm.ListedOffset) {
					l, _ := lso.Lookup(o.Topic, o.Partition)
					problems = append(problems, fmt.Sprintf("partition %d: high watermark %d, last stable offset %d",
						o.Partition, o.Offset, l.Offset))
				})
			}
		}
		return fmt.Errorf("%w: topic %s: %v", errMismatch, topic, problems)
	}
	return checkMarkers(ctx, e, c, topic, total)
}

// appendBinStr appends a length-prefixed string of the binary body.
func appendBinStr(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

func parseKey(k []byte) (w int, n int64, ok bool) {
	i := bytes.IndexByte(k, ':')
	if i < 0 {
		return 0, 0, false
	}
	w, err := strconv.Atoi(string(k[:i]))
	if err != nil {
		return 0, 0, false
	}
	n, err = strconv.ParseInt(string(k[i+1:]), 10, 64)
	if err != nil || n < 0 {
		return 0, 0, false
	}
	return w, n, true
}

// produceErrs collects the errors of asynchronous produces (the promise
// runs on franz-go's goroutines) for the direct clients, which check them
// after each Flush, before they commit.
type produceErrs struct {
	mu   sync.Mutex
	errs error
}

func (p *produceErrs) promise(_ *kgo.Record, err error) {
	if err != nil {
		p.mu.Lock()
		p.errs = errors.Join(p.errs, err)
		p.mu.Unlock()
	}
}

// err is every produce error so far, as one error, or nil.
func (p *produceErrs) err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.errs != nil {
		return fmt.Errorf("produce: %w", p.errs)
	}
	return nil
}
