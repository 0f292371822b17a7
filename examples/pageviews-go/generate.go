package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// click is one input event. N numbers the events of the topic from 1; App
// and User are functions of N, so the stream is the same on every machine.
type click struct {
	N    int64  `json:"n"`
	App  string `json:"app"`
	User string `json:"user"`
}

// apps are the Go example's app names (the Python example uses others, so
// both can add into the dev sidecar's one pv table).
var apps = []string{"app1", "app2", "app3", "app4", "app5"}

// mix is splitmix64's finaliser: a fixed, well-spread function of n.
func mix(n uint64) uint64 {
	n += 0x9e3779b97f4a7c15
	n = (n ^ (n >> 30)) * 0xbf58476d1ce4e5b9
	n = (n ^ (n >> 27)) * 0x94d049bb133111eb
	return n ^ (n >> 31)
}

func clickOf(n int64) click {
	h := mix(uint64(n))
	// A skewed distribution, as real page views are: app1 gets the most.
	i := 0
	for r := h % 31; r >= 16>>i && i < len(apps)-1; i++ {
		r -= 16 >> i
	}
	return click{N: n, App: apps[i], User: "u" + strconv.FormatUint((h>>32)%1000, 10)}
}

type genConfig struct {
	brokers    string
	input      string
	events     int64
	partitions int
	rate       int
}

func defaultGenConfig() genConfig {
	return genConfig{brokers: "127.0.0.1:9092", input: "clicks", events: 10000, partitions: 3}
}

func (g *genConfig) bind(fs *flag.FlagSet) {
	fs.StringVar(&g.brokers, "brokers", g.brokers, "Kafka bootstrap broker")
	fs.StringVar(&g.input, "input", g.input, "input topic of click events")
	fs.Int64Var(&g.events, "events", g.events, "generate until the input topic holds events 1..N")
	fs.IntVar(&g.partitions, "partitions", g.partitions, "partitions of the input topic when it is created")
	fs.IntVar(&g.rate, "rate", g.rate, "generate at most this many events per second (0: as fast as possible)")
}

// generate appends events until the topic holds events 1..g.events. It
// numbers them on from the highest number already there, so running it again
// never repeats a number. (A run killed midway can leave a gap: the producer
// may have written event n+1 to its partition but not event n to another.)
// Event n goes to partition (n-1) % partitions.
func generate(ctx context.Context, g genConfig, out io.Writer) error {
	if g.partitions < 1 || g.events < 0 || g.rate < 0 {
		return fmt.Errorf("generate: --partitions must be >= 1, --events and --rate >= 0")
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(g.brokers), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	parts, err := ensureTopic(ctx, adm, g.input, g.partitions)
	if err != nil {
		return err
	}
	_, _, have, err := scanClicks(ctx, g.brokers, g.input)
	if err != nil {
		return err
	}
	if have >= g.events {
		fmt.Fprintf(out, "generate: %q already holds events up to %d\n", g.input, have)
		return nil
	}
	fmt.Fprintf(out, "generate: appending events %d..%d to %q (%d partitions)\n", have+1, g.events, g.input, parts)
	start := time.Now()
	var (
		mu   sync.Mutex // guards perr: produce callbacks run on franz-go's goroutines
		perr error
	)
	failed := func() error {
		mu.Lock()
		defer mu.Unlock()
		return perr
	}
	for n := have + 1; n <= g.events && failed() == nil; n++ {
		if g.rate > 0 {
			due := start.Add(time.Duration(n-have-1) * time.Second / time.Duration(g.rate))
			if d := time.Until(due); d > 0 {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(d):
				}
			}
		}
		v, _ := json.Marshal(clickOf(n))
		r := &kgo.Record{Topic: g.input, Partition: int32((n - 1) % int64(parts)), Value: v}
		cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil && perr == nil {
				perr = err
			}
		})
		if n%10000 == 0 {
			if err := cl.Flush(ctx); err != nil {
				return err
			}
			fmt.Fprintf(out, "generate: %d events\n", n)
		}
	}
	if err := cl.Flush(ctx); err != nil {
		return err
	}
	if err := failed(); err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	fmt.Fprintf(out, "generate: %q holds %d events\n", g.input, g.events)
	return nil
}

// ensureTopic creates the topic if it does not exist and returns its
// partition count.
func ensureTopic(ctx context.Context, adm *kadm.Client, topic string, partitions int) (int, error) {
	_, err := adm.CreateTopic(ctx, int32(partitions), 1, nil, topic)
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return 0, fmt.Errorf("create topic %q: %w", topic, err)
	}
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return 0, err
	}
	n := 0
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil {
			n++
		}
	})
	if n == 0 {
		return 0, fmt.Errorf("topic %q has no partitions", topic)
	}
	return n, nil
}

// trueCounts reads the whole input topic and counts views per app: what
// MySQL's pv table must hold after the app has counted every event.
func trueCounts(ctx context.Context, brokers, topic string) (map[string]int64, int64, error) {
	counts, total, _, err := scanClicks(ctx, brokers, topic)
	return counts, total, err
}

// scanClicks reads the whole input topic up to its current end: views per
// app, the number of events and the highest event number.
func scanClicks(ctx context.Context, brokers, topic string) (counts map[string]int64, total, maxN int64, err error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers))
	if err != nil {
		return nil, 0, 0, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, 0, 0, err
	}
	want := map[int32]int64{}
	offsets := map[int32]kgo.Offset{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			want[o.Partition] = o.Offset
			offsets[o.Partition] = kgo.NewOffset().AtStart()
		}
	})
	counts = map[string]int64{}
	if len(want) == 0 {
		return counts, 0, 0, nil
	}
	cl.AddConsumePartitions(map[string]map[int32]kgo.Offset{topic: offsets})
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for len(want) > 0 {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return nil, 0, 0, fmt.Errorf("read %q: %w", topic, err)
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) { ferr = err })
		if ferr != nil {
			return nil, 0, 0, ferr
		}
		fs.EachRecord(func(r *kgo.Record) {
			end, ok := want[r.Partition]
			if !ok || r.Offset >= end {
				return
			}
			var c click
			if json.Unmarshal(r.Value, &c) == nil {
				counts[c.App]++
				total++
				maxN = max(maxN, c.N)
			}
			if r.Offset+1 >= end {
				delete(want, r.Partition)
			}
		})
	}
	return counts, total, maxN, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
