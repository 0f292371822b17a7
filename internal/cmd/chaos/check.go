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

	"github.com/txsink/txsink/internal/kafkatest"
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

// check runs every check; wantEvents and wantPartitions are what the driver
// had generated, so that a short read of the input cannot pass as the truth.
// groupParts are the input partitions whose apps ran with --offsets group
// (consumer group `group`): their committed offsets must equal what the
// output counted; the other partitions must have none.
func check(ctx context.Context, out io.Writer, brokers, dsn string, wantEvents int64, wantPartitions int, group string, groupParts map[int32]bool) (result, error) {
	var res result
	problem := func(format string, args ...any) {
		res.problems = append(res.problems, fmt.Sprintf(format, args...))
	}
	// 1. The input and 2. the Kafka output, read_committed.
	input, err := readTopic(ctx, brokers, "clicks")
	if err != nil {
		return res, err
	}
	output, err := readTopic(ctx, brokers, "pageviews")
	if err != nil {
		return res, err
	}
	cv := coverage(input, output)
	res.problems = append(res.problems, cv.problems...)
	res.events = cv.events
	if cv.events != wantEvents || cv.partitions != wantPartitions {
		problem("input: read %d events in %d partitions, but %d were generated in %d", cv.events, cv.partitions, wantEvents, wantPartitions)
	}
	fmt.Fprintf(out, "check: input: %d click events (numbers 1..%d) in %d partitions\n", cv.events, cv.maxN, cv.partitions)
	fmt.Fprintf(out, "check: kafka pageviews (read_committed, franz-go): %d records from %d checkpoints; %d events missing, %d duplicated",
		len(output), cv.checkpoints, cv.missing, cv.duplicated)
	if len(cv.firstMissing) > 0 {
		fmt.Fprintf(out, " (first missing clicks: %s)", strings.Join(cv.firstMissing, " "))
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

	// 2c. The consumer group's committed offsets (--offsets group apps):
	// read with require_stable, so offsets in an open transaction fail the
	// check instead of passing as committed.
	if len(groupParts) > 0 {
		committed, err := kafkatest.GroupOffsets(ctx, brokers, group, 10*time.Second)
		if err != nil {
			problem("group offsets: %v", err)
		} else {
			probs, line := compareGroupOffsets(group, cv.counted, committed["clicks"], groupParts, cv.partitions)
			res.problems = append(res.problems, probs...)
			for t := range committed {
				if t != "clicks" {
					problem("group %q has committed offsets of topic %q, want only clicks", group, t)
				}
			}
			fmt.Fprintf(out, "check: %s\n", line)
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
	mMissing, mDup, lines := compareTotals(cv.truth, got)
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

	res.missing = cv.missing + mMissing
	res.duplicated = cv.duplicated + mDup
	res.inDoubt = xa + open
	return res, nil
}

// covered is what the Kafka output proves about the input.
type covered struct {
	events       int64            // input events
	maxN         int64            // the highest event number
	partitions   int              // input partitions
	truth        map[string]int64 // true views per app
	checkpoints  int              // distinct (writer, checkpoint) in the output
	missing      int64            // input events no output record counts
	duplicated   int64            // extra counts of input events counted more than once
	firstMissing []string         // a few missing events, partition/offset
	counted      map[int32]int64  // partition -> end of the furthest input range the output counts
	problems     []string
}

// coverage checks the input (the generator wrote each number once, no gaps)
// and maps every output increment onto the input range it claims: each
// event of the increment's app in that range is counted once, and the
// increment's views must equal their number. Every input event must end up
// counted exactly once.
func coverage(input, output []rec) covered {
	cv := covered{truth: map[string]int64{}, counted: map[int32]int64{}}
	problem := func(format string, args ...any) {
		cv.problems = append(cv.problems, fmt.Sprintf(format, args...))
	}
	apps := map[int32][]string{}
	seen := map[int64]bool{}
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
		cv.truth[c.App]++
		if seen[c.N] {
			problem("input: event number %d appears twice", c.N)
		}
		seen[c.N] = true
		cv.maxN = max(cv.maxN, c.N)
	}
	cv.events, cv.partitions = int64(len(input)), len(apps)
	if cv.maxN != cv.events {
		problem("input: %d events but the highest number is %d", cv.events, cv.maxN)
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
			if err != nil || to > int64(len(apps[p])) || inc.From[ps] < 0 || inc.From[ps] > to {
				problem("output %d/%d: range %s:[%d,%d) is not in the input", r.partition, r.offset, ps, inc.From[ps], to)
				continue
			}
			cv.counted[p] = max(cv.counted[p], to)
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
	cv.checkpoints = len(checkpoints)
	parts := make([]int32, 0, len(cover))
	for p := range cover {
		parts = append(parts, p)
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })
	for _, p := range parts {
		for off, c := range cover[p] {
			switch {
			case c == 0:
				cv.missing++
				if len(cv.firstMissing) < 5 {
					cv.firstMissing = append(cv.firstMissing, fmt.Sprintf("%d/%d", p, off))
				}
			case c > 1:
				cv.duplicated += int64(c - 1)
			}
		}
	}
	return cv
}

// compareGroupOffsets compares the group's committed offsets of the input
// with what the output counted: for a partition of a --offsets group app
// they must be equal (an offset beyond it would skip events after a
// restart, one short of it would count events twice); a partition of a
// --offsets state app must have none. line sums it up.
func compareGroupOffsets(group string, counted, committed map[int32]int64, groupParts map[int32]bool, partitions int) (problems []string, line string) {
	var equal, events int64
	for p := range int32(max(partitions, len(groupParts))) {
		c, ok := committed[p]
		switch {
		case !groupParts[p] && ok:
			problems = append(problems, fmt.Sprintf("group %q: partition %d (an --offsets state app's) has a committed offset %d, want none", group, p, c))
		case !groupParts[p]:
		case !ok:
			problems = append(problems, fmt.Sprintf("group %q: partition %d has no committed offset, the output counts [0,%d)", group, p, counted[p]))
		case c != counted[p]:
			problems = append(problems, fmt.Sprintf("group %q: partition %d committed offset %d, the output counts [0,%d)", group, p, c, counted[p]))
		default:
			equal++
			events += c
		}
	}
	for p, c := range committed {
		if p < 0 || int(p) >= max(partitions, len(groupParts)) {
			problems = append(problems, fmt.Sprintf("group %q: committed offset %d of partition %d, which the input does not have", group, c, p))
		}
	}
	line = fmt.Sprintf("group %q committed offsets (require_stable): %d/%d partitions of --offsets group apps equal the events the output counted (%d events)",
		group, equal, len(groupParts), events)
	return problems, line
}

// compareTotals compares the pv table with the true counts: views short of
// the truth are missing, views beyond it duplicated.
func compareTotals(truth, got map[string]int64) (missing, duplicated int64, lines []string) {
	for _, app := range sortedKeys(truth, got) {
		t, g := truth[app], got[app]
		lines = append(lines, fmt.Sprintf("%s %d/%d", app, g, t))
		missing += max(0, t-g)
		duplicated += max(0, g-t)
	}
	return missing, duplicated, lines
}

// readTopic reads a whole topic with read_committed, until no record has
// come for 5 s (nothing is writing any more when the checker runs). A read
// cut short cannot pass unnoticed: the input's size is checked against what
// was generated, and the output against kcat, which reads to the end of
// every partition.
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
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
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
	if err == nil {
		err = hwm.Error()
	}
	if err != nil {
		return 0, fmt.Errorf("high watermarks of %s: %w", topic, err)
	}
	lso, err := adm.ListCommittedOffsets(ctx, topic)
	if err == nil {
		err = lso.Error()
	}
	if err != nil {
		return 0, fmt.Errorf("last stable offsets of %s: %w", topic, err)
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
