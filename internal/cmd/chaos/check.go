package main

// The checker trusts nothing the sidecar or the app says about itself: it
// reads the input topic (the truth), the output topic with read_committed
// (what a downstream consumer sees) and the pv table (what a SQL reader
// sees), and derives every number from those.

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// xaFormatID is txsink's XA formatID ("txs1"); see sinks/mysql/DESIGN.md.
const xaFormatID = 0x74787331

type result struct {
	events     int64
	missing    int64
	duplicated int64
	inDoubt    int64
	problems   []string
}

// click and increment mirror the example's JSON (examples/pageviews-go);
// the checker decodes them itself rather than importing the app's code.
type click struct {
	N   int64  `json:"n"`
	App string `json:"app"`
}

type increment struct {
	App        string           `json:"app"`
	Views      int64            `json:"views"`
	Checkpoint int64            `json:"checkpoint"`
	Writer     string           `json:"writer"`
	Topic      string           `json:"topic"`
	From       map[string]int64 `json:"from"`
	To         map[string]int64 `json:"to"`
}

type rec struct {
	partition int32
	offset    int64
	value     []byte
}

func createSchema(ctx context.Context, serverDSN string) (string, error) {
	db, err := sql.Open("mysql", serverDSN)
	if err != nil {
		return "", err
	}
	defer db.Close()
	for _, q := range []string{
		"CREATE DATABASE IF NOT EXISTS chaos",
		"CREATE TABLE IF NOT EXISTS chaos.pv(app VARCHAR(64) PRIMARY KEY, views BIGINT NOT NULL)",
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return "", fmt.Errorf("%s: %w", q, err)
		}
	}
	c, err := gomysql.ParseDSN(serverDSN)
	if err != nil {
		return "", err
	}
	c.DBName = "chaos"
	return c.FormatDSN(), nil
}

func check(ctx context.Context, out io.Writer, brokers, dsn string) (result, error) {
	var res result
	problem := func(format string, args ...any) {
		res.problems = append(res.problems, fmt.Sprintf(format, args...))
	}

	// 1. The input: which app each (partition, offset) is, and that the
	// generator wrote every number once.
	input, err := readTopic(ctx, brokers, "clicks")
	if err != nil {
		return res, err
	}
	apps := map[int32][]string{}
	truth := map[string]int64{}
	seen := map[int64]bool{}
	var maxN int64
	for _, r := range input {
		var c click
		if err := json.Unmarshal(r.value, &c); err != nil || c.App == "" {
			problem("input %d/%d is not a click: %q", r.partition, r.offset, r.value)
			continue
		}
		if int64(len(apps[r.partition])) != r.offset {
			problem("input partition %d: offset %d after %d records (gap)", r.partition, r.offset, len(apps[r.partition]))
		}
		apps[r.partition] = append(apps[r.partition], c.App)
		truth[c.App]++
		if seen[c.N] {
			problem("input: event number %d appears twice", c.N)
		}
		seen[c.N] = true
		maxN = max(maxN, c.N)
	}
	res.events = int64(len(input))
	if maxN != res.events {
		problem("input: %d events but the highest number is %d", res.events, maxN)
	}
	fmt.Fprintf(out, "check: input: %d click events (numbers 1..%d) in %d partitions\n", res.events, maxN, len(apps))

	// 2. Kafka output, read_committed: every input event covered once.
	output, err := readTopic(ctx, brokers, "pageviews")
	if err != nil {
		return res, err
	}
	cover := map[int32][]int{}
	for p, a := range apps {
		cover[p] = make([]int, len(a))
	}
	checkpoints := map[string]bool{}
	for _, r := range output {
		var inc increment
		if err := json.Unmarshal(r.value, &inc); err != nil || inc.App == "" || inc.Topic != "clicks" {
			problem("output %d/%d is not an increment of clicks: %q", r.partition, r.offset, r.value)
			continue
		}
		checkpoints[inc.Writer+"/"+strconv.FormatInt(inc.Checkpoint, 10)] = true
		var matched int64
		for ps, to := range inc.To {
			p64, err := strconv.ParseInt(ps, 10, 32)
			p := int32(p64)
			if err != nil || to > int64(len(apps[p])) || inc.From[ps] > to {
				problem("output %d/%d: range %s:[%d,%d) is not in the input", r.partition, r.offset, ps, inc.From[ps], to)
				continue
			}
			for off := inc.From[ps]; off < to; off++ {
				if apps[p][off] == inc.App {
					cover[p][off]++
					matched++
				}
			}
		}
		if matched != inc.Views {
			problem("output %d/%d (writer %s checkpoint %d): %d views of %s, but its input range holds %d",
				r.partition, r.offset, inc.Writer, inc.Checkpoint, inc.Views, inc.App, matched)
		}
	}
	var kMissing, kDup int64
	var firstMissing []string
	for p, cs := range cover {
		for off, c := range cs {
			switch {
			case c == 0:
				kMissing++
				if len(firstMissing) < 5 {
					firstMissing = append(firstMissing, fmt.Sprintf("%d/%d", p, off))
				}
			case c > 1:
				kDup += int64(c - 1)
			}
		}
	}
	fmt.Fprintf(out, "check: kafka pageviews (read_committed, franz-go): %d records from %d checkpoints; %d events missing, %d duplicated",
		len(output), len(checkpoints), kMissing, kDup)
	if len(firstMissing) > 0 {
		fmt.Fprintf(out, " (first missing clicks: %s)", strings.Join(firstMissing, " "))
	}
	fmt.Fprintln(out)

	// 2b. The same output through an independent client, when installed.
	if _, err := exec.LookPath("kcat"); err != nil {
		fmt.Fprintln(out, "check: kcat not installed: skipped the second reader (apt-get install kcat)")
	} else {
		kc, err := readTopicKcat(ctx, brokers, "pageviews")
		switch {
		case err != nil:
			problem("kcat: %v", err)
		default:
			if diff := diffRecords(output, kc); diff != "" {
				problem("kcat and franz-go read different pageviews records: %s", diff)
			} else {
				fmt.Fprintf(out, "check: kafka pageviews (read_committed, kcat): the same %d records\n", len(kc))
			}
		}
	}

	// 3. MySQL: the non-idempotent totals equal the true counts.
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return res, err
	}
	defer db.Close()
	got, err := pvTotals(ctx, db)
	if err != nil {
		return res, err
	}
	var mMissing, mDup int64
	var lines []string
	for _, app := range sortedKeys(truth, got) {
		t, g := truth[app], got[app]
		lines = append(lines, fmt.Sprintf("%s %d/%d", app, g, t))
		mMissing += max(0, t-g)
		mDup += max(0, g-t)
	}
	fmt.Fprintf(out, "check: mysql pv (views/true): %s; %d missing, %d duplicated\n", strings.Join(lines, ", "), mMissing, mDup)

	// 4. Nothing in doubt: no XA branch of ours prepared, no open
	// transaction on the output topic (last stable offset = high watermark).
	xa, err := xaInDoubt(ctx, db)
	if err != nil {
		return res, err
	}
	open, err := openTransactions(ctx, brokers, "pageviews")
	if err != nil {
		return res, err
	}
	fmt.Fprintf(out, "check: in doubt: %d XA branches of ours (XA RECOVER, formatID 0x%x), %d output partitions with an open transaction (LSO < HWM)\n",
		xa, xaFormatID, open)

	res.missing = kMissing + mMissing
	res.duplicated = kDup + mDup
	res.inDoubt = xa + open
	return res, nil
}

// readTopic reads a whole topic with read_committed, until no record has
// come for 3 s (nothing is writing any more when the checker runs).
func readTopic(ctx context.Context, brokers, topic string) ([]rec, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var recs []rec
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		fs := cl.PollFetches(pctx)
		cancel()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) {
			if pctx.Err() == nil {
				ferr = err
			}
		})
		if ferr != nil {
			return nil, fmt.Errorf("read %s: %w", topic, ferr)
		}
		n := 0
		fs.EachRecord(func(r *kgo.Record) {
			recs = append(recs, rec{partition: r.Partition, offset: r.Offset, value: r.Value})
			n++
		})
		if n == 0 {
			sortRecs(recs)
			return recs, nil
		}
	}
	return nil, fmt.Errorf("read %s: still receiving after 2 minutes", topic)
}

// readTopicKcat reads a topic with librdkafka's kcat, read_committed, to
// the end of every partition.
func readTopicKcat(ctx context.Context, brokers, topic string) ([]rec, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "kcat", "-C", "-b", brokers, "-t", topic, "-X", "isolation.level=read_committed",
		"-e", "-q", "-f", "%p %o %s\n")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	outb, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, stderr.String())
	}
	var recs []rec
	sc := bufio.NewScanner(bytes.NewReader(outb))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 3)
		if len(f) != 3 {
			return nil, fmt.Errorf("unexpected kcat line %q", sc.Text())
		}
		p, err1 := strconv.ParseInt(f[0], 10, 32)
		o, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("unexpected kcat line %q", sc.Text())
		}
		recs = append(recs, rec{partition: int32(p), offset: o, value: []byte(f[2])})
	}
	sortRecs(recs)
	return recs, sc.Err()
}

func sortRecs(rs []rec) {
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].partition != rs[j].partition {
			return rs[i].partition < rs[j].partition
		}
		return rs[i].offset < rs[j].offset
	})
}

// diffRecords describes the first difference of two sorted record lists.
func diffRecords(a, b []rec) string {
	for i := 0; i < min(len(a), len(b)); i++ {
		if a[i].partition != b[i].partition || a[i].offset != b[i].offset || !bytes.Equal(a[i].value, b[i].value) {
			return fmt.Sprintf("record %d: %d/%d %q vs %d/%d %q", i, a[i].partition, a[i].offset, a[i].value,
				b[i].partition, b[i].offset, b[i].value)
		}
	}
	if len(a) != len(b) {
		return fmt.Sprintf("%d records vs %d", len(a), len(b))
	}
	return ""
}

func pvTotals(ctx context.Context, db *sql.DB) (map[string]int64, error) {
	rows, err := db.QueryContext(ctx, "SELECT app, views FROM pv")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	got := map[string]int64{}
	for rows.Next() {
		var app string
		var v int64
		if err := rows.Scan(&app, &v); err != nil {
			return nil, err
		}
		got[app] = v
	}
	return got, rows.Err()
}

// xaInDoubt counts prepared XA branches with txsink's formatID.
func xaInDoubt(ctx context.Context, db *sql.DB) (int64, error) {
	rows, err := db.QueryContext(ctx, "XA RECOVER")
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	var n int64
	for rows.Next() {
		var format, gl, bl int64
		var data []byte
		if err := rows.Scan(&format, &gl, &bl, &data); err != nil {
			return 0, err
		}
		if format == xaFormatID {
			n++
		}
	}
	return n, rows.Err()
}

// openTransactions counts the topic's partitions whose last stable offset is
// below the high watermark: a transaction there is neither committed nor
// aborted.
func openTransactions(ctx context.Context, brokers, topic string) (int64, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	hwm, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return 0, err
	}
	lso, err := adm.ListCommittedOffsets(ctx, topic)
	if err != nil {
		return 0, err
	}
	var n int64
	hwm.Each(func(o kadm.ListedOffset) {
		if l, ok := lso.Lookup(topic, o.Partition); ok && l.Offset < o.Offset {
			n++
		}
	})
	return n, nil
}

func sortedKeys(ms ...map[string]int64) []string {
	set := map[string]bool{}
	for _, m := range ms {
		for k := range m {
			set[k] = true
		}
	}
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
