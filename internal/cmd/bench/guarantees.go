package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

// The price of exactly-once (issue 14): the sidecar rows that matter for it
// (kafka-unix, mysql-sidecar, ckpt-*-sidecar, e2e-kafka-sidecar) run once
// per delivery guarantee of the job (PUT /v1/jobs/{job} "guarantee"), on the
// same load, next to the direct client's row:
//
//   - eo, exactly_once (the default): two-phase commit per checkpoint, as
//     twopc/DESIGN.md describes.
//   - alo, at_least_once: Kafka's idempotent producer flushed and checked at
//     each checkpoint, MySQL a plain transaction committed at it, the state
//     journaled after; a crash may repeat what was written since the last
//     checkpoint.
//   - none: fire and forget; errors are counted, nothing is retried.
//
// printGuaranteeSummary compares eo with alo row by row. A sidecar that
// refuses the guarantee (400) or stores another one fails the row, and so
// does a Kafka row whose topic shows it was (or was not) written in
// transactions against its guarantee (checkMarkers): a silently ignored
// guarantee would measure exactly-once under another name.

// allGuarantees is the default of -guarantees, in row order.
var allGuarantees = []string{"eo", "alo", "none"}

// guaranteeWire maps a row's short tag to the API's value.
var guaranteeWire = map[string]string{"eo": "exactly_once", "alo": "at_least_once", "none": "none"}

func parseGuarantees(list string) ([]string, error) {
	var gs []string
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if _, ok := guaranteeWire[s]; !ok {
			return nil, fmt.Errorf("-guarantees: bad guarantee %q (want eo, alo or none)", s)
		}
		if !slices.Contains(gs, s) {
			gs = append(gs, s)
		}
	}
	return gs, nil
}

// dupsAllowed reports whether a row of guarantee g may see a record more
// than once (the bench injects no faults, so it should not happen, but it
// is no violation there).
func dupsAllowed(g string) bool { return g == "alo" || g == "none" }

// guaranteeLabel is the guarantee as the tables print it.
func guaranteeLabel(g string) string {
	if w, ok := guaranteeWire[g]; ok {
		return w
	}
	return "—"
}

// putJob creates (or updates) the auto-mode job of a sidecar row. g ""
// keeps the sidecar's default; otherwise the job gets that guarantee and
// the answer must report it back.
func putJob(ctx context.Context, cl *client.Client, job string, sinks []string, g string) error {
	req := api.JobRequest{Commit: twopc.ModeAuto, Sinks: sinks}
	want := twopc.Guarantee(guaranteeWire[g])
	if g != "" {
		req.Guarantee = want
	}
	info, err := cl.PutJobSpec(ctx, job, req)
	if err != nil {
		if g != "" {
			return fmt.Errorf("put job %s with guarantee %s: the sidecar refused it: %w", job, want, err)
		}
		return fmt.Errorf("put job %s: %w", job, err)
	}
	if g != "" && info.Guarantee != want {
		return fmt.Errorf("put job %s: asked for guarantee %s, the sidecar stored %q", job, want, info.Guarantee)
	}
	return nil
}

// checkMarkers tells from the topic's offsets whether the sidecar wrote a
// row transactionally: each committed (or aborted) Kafka transaction leaves
// a control record that takes an offset, so with one partition, a fresh
// topic and read records read (duplicates included), an exactly_once row
// ends above read and an at_least_once or none row (idempotent producer,
// no transactions) exactly at it. A stored but not yet acted-on guarantee
// would otherwise measure exactly-once under another name.
func checkMarkers(ctx context.Context, e *env, c *benchCase, topic string, read int64) error {
	if c.guarantee == "" {
		return nil
	}
	ends, err := e.adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return fmt.Errorf("end offsets of %s: %w", topic, err)
	}
	var end int64
	ends.Each(func(o kadm.ListedOffset) { end += o.Offset })
	switch {
	case c.guarantee == "eo" && end <= read:
		return fmt.Errorf("%w: topic %s ends at offset %d with %d records read: no transaction markers, "+
			"the exactly_once row was not written in transactions", errMismatch, topic, end, read)
	case c.guarantee != "eo" && end != read:
		return fmt.Errorf("%w: topic %s ends at offset %d with %d records read: %d transaction markers (or unread "+
			"records), so this %s row was written in transactions — does the sidecar act on the job's guarantee yet?",
			errMismatch, topic, end, read, end-read, guaranteeWire[c.guarantee])
	}
	return nil
}

// printGuaranteeSummary writes, for every pair of sidecar rows that differ
// only in the guarantee eo vs alo, what exactly-once costs against
// at-least-once in the same run: throughput (records/s, or checkpoints/s
// for the ckpt rows), p50/p99 of a checkpoint loop, p50/p99 end to end.
// Nothing when no such pair ran.
func printGuaranteeSummary(w io.Writer, rs []*result) {
	var lines []string
	for _, eo := range rs {
		if eo.c.guarantee != "eo" || !eo.ok() {
			continue
		}
		alo := findGuarantee(rs, eo.c, "alo")
		if alo == nil {
			continue
		}
		c := eo.c
		cost := 100 * (1 - eo.rate()/alo.rate())
		switch c.kind {
		case "kafka", "mysql":
			lines = append(lines, fmt.Sprintf("- %s vs %s: exactly-once costs %.0f %% throughput (%s vs %s records/s).",
				c.name, alo.c.name, cost, human(eo.rate()), human(alo.rate())))
		case "ckpt-kafka", "ckpt-both":
			e50, a50 := c.lat.quantile(0.5), alo.c.lat.quantile(0.5)
			e99, a99 := c.lat.quantile(0.99), alo.c.lat.quantile(0.99)
			lines = append(lines, fmt.Sprintf("- %s vs %s: exactly-once costs %.0f %% throughput, %+.1f ms p50 checkpoint "+
				"(%s vs %s checkpoints/s; p50 %s vs %s, p99 %s vs %s).",
				c.name, alo.c.name, cost, msf(e50-a50), human(eo.rate()/ckptRecords), human(alo.rate()/ckptRecords),
				ms(e50), ms(a50), ms(e99), ms(a99)))
		case "e2e":
			e50, a50 := c.lat.quantile(0.5), alo.c.lat.quantile(0.5)
			lines = append(lines, fmt.Sprintf("- %s vs %s: exactly-once adds %+.1f ms p50 end to end (p50 %s vs %s, p99 %s vs %s).",
				c.name, alo.c.name, msf(e50-a50), ms(e50), ms(a50), ms(c.lat.quantile(0.99)), ms(alo.c.lat.quantile(0.99))))
		}
	}
	var dups, lost []string
	for _, r := range rs {
		if r.c.dups > 0 {
			dups = append(dups, fmt.Sprintf("%s: %d", r.c.name, r.c.dups))
		}
		if r.c.lost > 0 {
			lost = append(lost, fmt.Sprintf("%s: %d of %d (%.1f %%)", r.c.name, r.c.lost, r.records,
				100*float64(r.c.lost)/float64(max(r.records, 1))))
		}
	}
	if len(lines) == 0 && len(dups) == 0 && len(lost) == 0 {
		return
	}
	fmt.Fprintln(w, "\n## The price of exactly-once: sidecar exactly_once (eo) vs at_least_once (alo), same load, same run")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "- Cost = 1 − eo ÷ alo of the row's throughput; a negative cost is noise (or eo faster). "+
		"The ckpt rows' throughput is checkpoints/s of 10-record checkpoints, so it is dominated by the commit path; "+
		"the kafka-unix rows amortize it over 1,000-record writes.")
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
	if len(dups) > 0 {
		fmt.Fprintf(w, "- Duplicates seen by the verification (allowed for alo and none only): %s.\n", strings.Join(dups, ", "))
	}
	if len(lost) > 0 {
		fmt.Fprintf(w, "- Records the none rows lost, each counted by the sidecar (txsink_records_failed_total; fire and forget "+
			"drops what its producer cannot buffer, and the row's records/s counts them as accepted): %s.\n", strings.Join(lost, ", "))
	}
}

// findGuarantee is the row that differs from c only in its guarantee g,
// if it ran cleanly.
func findGuarantee(rs []*result, c *benchCase, g string) *result {
	for _, r := range rs {
		d := r.c
		if d.guarantee == g && d.kind == c.kind && d.path == c.path && d.interval == c.interval && d.writers == c.writers && r.ok() {
			return r
		}
	}
	return nil
}

// xaPrepares is the server's count of XA PREPARE statements (global: every
// client of the server counts).
func xaPrepares(ctx context.Context, e *env) (int64, error) {
	var name string
	var n int64
	err := e.db.QueryRowContext(ctx, "SHOW GLOBAL STATUS LIKE 'Com_xa_prepare'").Scan(&name, &n)
	return n, err
}

// checkXA is checkMarkers for MySQL: an exactly_once row prepares an XA
// branch per checkpoint, so the server's XA PREPARE count must have grown
// by at least checkpoints during the row; an at_least_once or none row
// prepares none, so it must have grown by fewer (the count is global: on a
// server shared with busy XA clients this side of the check could fail
// spuriously; set TXSINK_BENCH_MYSQL_DSN to a private server then).
func checkXA(c *benchCase, checkpoints int64) error {
	if c.guarantee == "" || checkpoints == 0 {
		return nil
	}
	switch {
	case c.guarantee == "eo" && c.xaPrepares < checkpoints:
		return fmt.Errorf("%w: %d XA PREPAREs on the server for %d checkpoints: the exactly_once row did not prepare "+
			"XA branches", errMismatch, c.xaPrepares, checkpoints)
	case c.guarantee != "eo" && c.xaPrepares >= checkpoints:
		return fmt.Errorf("%w: %d XA PREPAREs on the server for %d checkpoints: this %s row prepared XA branches — "+
			"does the sidecar act on the job's guarantee yet?", errMismatch, c.xaPrepares, checkpoints, guaranteeWire[c.guarantee])
	}
	return nil
}

// countXA runs a MySQL sidecar row and stores in c.xaPrepares how much the
// server's XA PREPARE count grew meanwhile (rows with a guarantee only).
func countXA(ctx context.Context, e *env, c *benchCase, run func() (int64, time.Duration, error)) (int64, time.Duration, error) {
	c.xaPrepares = 0
	if c.guarantee == "" || !c.needsMySQL() {
		return run()
	}
	before, err := xaPrepares(ctx, e)
	if err != nil {
		return 0, 0, fmt.Errorf("XA PREPARE count: %w", err)
	}
	records, elapsed, err := run()
	after, aerr := xaPrepares(ctx, e)
	if err == nil && aerr != nil {
		err = fmt.Errorf("XA PREPARE count: %w", aerr)
	}
	c.xaPrepares = after - before
	return records, elapsed, err
}

// recordsFailed is what the sidecar counted as given up for job in sink
// (txsink_records_failed_total: guarantee none only, which may drop records,
// e.g. when the producer's buffer is full). Every row has a job of its own
// in a sidecar of its run, so the counter starts at 0 with the row.
func (e *env) recordsFailed(ctx context.Context, job, sink string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+e.httpAddr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("reading /metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("reading /metrics: %s", resp.Status)
	}
	var n float64
	jl, sl := fmt.Sprintf("job=%q", job), fmt.Sprintf("sink=%q", sink)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "txsink_records_failed_total{") || !strings.Contains(line, jl) || !strings.Contains(line, sl) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("reading /metrics: %q: %w", line, err)
		}
		n += v
	}
	return int64(n), sc.Err()
}

// lostOK reports whether distinct of records delivered is what guarantee
// none allows: every missing record counted as failed by the sidecar
// (lost). Other guarantees allow no loss.
func lostOK(c *benchCase, distinct, records, lost int64) bool {
	if c.guarantee != "none" {
		return distinct == records
	}
	return distinct <= records && records-distinct <= lost
}
