package main

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"time"
)

// printTable writes the setup and the records/s rows as one Markdown
// table (none when no such row ran).
func printTable(w io.Writer, o options, rs []*result) {
	fmt.Fprintf(w, "\n## txsink bench: sidecar vs direct client (target: sidecar ≥ %.1f× direct)\n\n", target)
	fmt.Fprintf(w, "- %d-byte random alphanumeric values, batches of %d records, %v per case, %d CPUs.\n",
		valueSize, batchSize, o.duration, runtime.NumCPU())
	fmt.Fprintln(w, "- Broker: kafkabroker (kfake, fsync'd data dir), a process of its own; 1 partition a topic; "+
		"both Kafka clients use franz-go's default snappy compression.")
	fmt.Fprintln(w, "- Sidecar: `sidecar run`, job mode auto, each checkpoint waits for committed; one sequential HTTP "+
		"client per writer: write 1,000 records, checkpoint once the interval is up.")
	fmt.Fprintln(w, "- Direct Kafka: one franz-go transactional producer per writer, async produce, commit once the "+
		"interval is up. Direct MySQL: one 1,000-row INSERT per transaction; sidecar MySQL: one XA branch per checkpoint; "+
		"mysql-async: the same with wait=prepared, so the sidecar commits in the background while the app writes on "+
		"(verified once those commits finished).")
	fmt.Fprintln(w, "- Guarantees (the job's `guarantee`; -guarantees picks them): exactly_once = the checkpoint's two-phase "+
		"commit; at_least_once = Kafka idempotent producer flushed at each checkpoint, MySQL a plain transaction committed at it, "+
		"state journaled after; none = fire and forget. The tcp and async rows keep the default (exactly_once).")
	fmt.Fprintln(w, "- CPU cores = CPU seconds ÷ wall seconds of the case, for this program (the app), the sidecar and the broker.")
	fmt.Fprintln(w, "- Sidecar peak RSS: the largest VmRSS of the sidecar sampled every 50 ms during the row (sidecar rows only).")
	if !slices.ContainsFunc(rs, func(r *result) bool { return r.c.throughput() }) {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| case | path | commit every | writers | records | seconds | records/s | sidecar ÷ direct | CPU cores: app / sidecar / broker | sidecar peak RSS |")
	fmt.Fprintln(w, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rs {
		c := r.c
		if !c.throughput() {
			continue
		}
		every := fmt.Sprintf("%d rows", batchSize)
		if c.kind == "kafka" {
			every = c.interval.String()
		}
		path := map[string]string{
			"direct":  "direct (franz-go txn producer)",
			"tcp":     "sidecar, HTTP over TCP",
			"unix":    "sidecar, HTTP over Unix socket",
			"bin":     "sidecar, Unix socket, binary body",
			"sidecar": "sidecar, HTTP over Unix socket (XA)",
			"async":   "sidecar, Unix socket (XA), wait=prepared",
		}[c.path]
		if c.kind == "mysql" && c.path == "direct" {
			path = "direct (multi-row INSERT txn)"
		}
		switch c.guarantee {
		case "alo":
			path = strings.Replace(path, " (XA)", "", 1) + ", at_least_once"
		case "none":
			path = strings.Replace(path, " (XA)", "", 1) + ", guarantee none"
		case "eo":
			path += ", exactly_once"
		}
		switch {
		case r.note != "":
			fmt.Fprintf(w, "| %s | %s | %s | %d | | | %s | | | |\n", c.name, path, every, c.writers, r.note)
			continue
		case r.err != nil:
			fmt.Fprintf(w, "| %s | %s | %s | %d | %d | %.2f | **FAILED** | | | |\n", c.name, path, every, c.writers,
				r.records, r.elapsed.Seconds())
			continue
		}
		ratio := ""
		if c.path != "direct" {
			ratio = "—"
			if d := findDirect(rs, c); d != nil {
				x := r.rate() / d.rate()
				mark := ""
				if x < target {
					mark = " (below target)"
				}
				ratio = fmt.Sprintf("%.2f×%s", x, mark)
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %d | %d | %.2f | %s | %s | %.2f / %.2f / %.2f | %s |\n", c.name, path, every, c.writers,
			r.records, r.elapsed.Seconds(), human(r.rate()), ratio, r.cpu.self, r.cpu.sidecar, r.cpu.broker, rowRSS(r))
	}
}

// printFooter writes the process-lifetime memory peaks and what was
// verified.
func printFooter(w io.Writer, rs []*result, sidecarRSS, brokerRSS int64) {
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Peak RSS (VmHWM) of the sidecar process: %s; of the broker process: %s.\n",
		mib(sidecarRSS), mib(brokerRSS))
	var failed []string
	for _, r := range rs {
		if r.err != nil {
			failed = append(failed, r.c.name)
		}
	}
	if len(failed) > 0 {
		fmt.Fprintf(w, "**FAILED (see stderr): %s.** ", strings.Join(failed, ", "))
	}
	fmt.Fprintf(w, "Each measured row is verified after its run (Kafka: read_committed read, each key exactly once; "+
		"MySQL: COUNT(*) and COUNT(DISTINCT k); at_least_once and none rows: each key at least once, duplicates counted; "+
		"rows with a guarantee: Kafka transaction markers and MariaDB XA PREPAREs as the guarantee implies); run at %s.\n",
		time.Now().Format(time.DateTime))
}

// rowRSS is the sidecar's peak RSS during a sidecar row; direct rows do
// not use the sidecar.
func rowRSS(r *result) string {
	if r.c.path == "direct" {
		return "—"
	}
	return mib(r.peakRSS)
}

func findDirect(rs []*result, c *benchCase) *result {
	for _, r := range rs {
		d := r.c
		if d.path == "direct" && d.kind == c.kind && d.interval == c.interval && d.writers == c.writers && r.ok() {
			return r
		}
	}
	return nil
}

func mib(kb int64) string {
	if kb <= 0 {
		return "unknown"
	}
	return fmt.Sprintf("%.0f MiB", float64(kb)/1024)
}

// printLatencyTables writes the ckpt-* rows (checkpoints/s, latency of a
// write+checkpoint loop, fsyncs per checkpoint) and the e2e-* rows
// (record call start → visible to read_committed).
func printLatencyTables(w io.Writer, o options, rs []*result) {
	var ck, e2e []*result
	for _, r := range rs {
		switch r.c.kind {
		case "ckpt-kafka", "ckpt-both":
			ck = append(ck, r)
		case "e2e":
			e2e = append(e2e, r)
		}
	}
	if len(ck) > 0 {
		fmt.Fprintf(w, "\n## Small checkpoints (%d records per sink), auto mode (target: sidecar ≥ %.1f× direct checkpoints/s; "+
			"at 1 writer p99 ≤ 5 ms Kafka only, ≤ 10 ms both)\n\n", ckptRecords, target)
		fmt.Fprintln(w, "- Each writer loops {write, checkpoint} without pause; latency = one loop, write call start → "+
			"acknowledged committed. Direct Kafka: franz-go txn of the records; direct both: that plus MariaDB XA "+
			"START/INSERT/END/PREPARE, Kafka commit, XA COMMIT (no durable coordinator log). Sidecar: HTTP over the Unix socket.")
		fmt.Fprintln(w, "- fsyncs/ckpt = Raft log store append batches (one bolt commit = one fsync) ÷ checkpoints; "+
			"entries/ckpt = journal entries ÷ checkpoints (from the sidecar's /metrics before and after the row).")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "- Sidecar mean ms: the write call and the checkpoint's phases as the sidecar measures them "+
			"(txsink_http_request_duration_seconds of the records route, txsink_checkpoint_phase_seconds): "+
			"prepare (all sinks), journal (the PREPARED+DECIDED entry), commit (all sinks), resolve (the RESOLVED entry; "+
			"a checkpoint whose sinks have a spare slot answers before it, so it is not in the loop's latency).")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "- Guarantee: the sidecar job's (the price-of-exactly-once section below compares them). "+
			"An at_least_once or none checkpoint has no prepare or commit: it flushes every sink (none: nothing to wait for), "+
			"then journals state and committed in one entry, so its phases read write / flush / journal / — / —.")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| case | sinks | path | guarantee | writers | checkpoints | checkpoints/s | p50 | p99 | sidecar ÷ direct | fsyncs/ckpt | entries/ckpt | sidecar mean ms: write / prepare / journal / commit / resolve | CPU cores: app / sidecar / broker | sidecar peak RSS |")
		fmt.Fprintln(w, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
		for _, r := range ck {
			c := r.c
			sinks := "Kafka"
			if c.kind == "ckpt-both" {
				sinks = "Kafka + MySQL"
			}
			if bad := badRow(r); bad != "" {
				fmt.Fprintf(w, "| %s | %s | %s | %s | %d | | | | | %s | | | | | |\n", c.name, sinks, c.path,
					guaranteeLabel(c.guarantee), c.writers, bad)
				continue
			}
			cps := float64(r.records) / ckptRecords
			rate := cps / r.elapsed.Seconds()
			ratio, fs, es, phases := "", "—", "—", "—"
			if c.path != "direct" {
				ratio = ratioCell(r, findDirect(rs, c))
				if j := r.journal; j.ok && cps > 0 {
					fs = fmt.Sprintf("%.2f", j.batches/cps)
					es = fmt.Sprintf("%.2f", j.entries/cps)
					if dupsAllowed(c.guarantee) {
						// A direct checkpoint: flush every sink, one journal entry, no commit phase.
						phases = fmt.Sprintf("%.1f / flush %.1f / %.1f / — / —", msf(j.phaseMean("write")), msf(j.phaseMean("flush")),
							msf(j.phaseMean("journal")))
					} else {
						phases = fmt.Sprintf("%.1f / %.1f / %.1f / %.1f / %.1f", msf(j.phaseMean("write")), msf(j.phaseMean("prepare")),
							msf(j.phaseMean("journal")), msf(j.phaseMean("commit")), msf(j.phaseMean("resolve")))
					}
				}
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %d | %.0f | %s | %s | %s | %s | %s | %s | %s | %.2f / %.2f / %.2f | %s |\n",
				c.name, sinks, c.path, guaranteeLabel(c.guarantee), c.writers, cps, human(rate), ms(c.lat.quantile(0.5)), ms(c.lat.quantile(0.99)),
				ratio, fs, es, phases, r.cpu.self, r.cpu.sidecar, r.cpu.broker, rowRSS(r))
		}
	}
	if len(e2e) > 0 {
		fmt.Fprintf(w, "\n## End to end: record call start → visible to a read_committed consumer (target: p99 well under 100 ms)\n\n")
		fmt.Fprintf(w, "- One writer, %d records a call every %v (%s records/s offered), commit/checkpoint once %v is up; "+
			"the consumer (franz-go, read_committed, fetch max wait %v) stamps each record when its fetch returns.\n",
			e2eBatch, e2ePace, human(float64(e2eBatch)/e2ePace.Seconds()), o.e2eInterval, e2eFetchWait)
		fmt.Fprintln(w, "- With at_least_once and none no transaction hides a record: it is visible once the sidecar's "+
			"producer sent it, before the checkpoint. p50/p99 ÷ direct: the sidecar row's latency over the direct client's.")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| case | path | guarantee | commit every | records | p50 | p99 | max | p50 / p99 ÷ direct | sidecar peak RSS |")
		fmt.Fprintln(w, "|---|---|---|---|---:|---:|---:|---:|---:|---:|")
		for _, r := range e2e {
			c := r.c
			if bad := badRow(r); bad != "" {
				fmt.Fprintf(w, "| %s | %s | %s | %v | | | %s | | | |\n", c.name, c.path, guaranteeLabel(c.guarantee), c.interval, bad)
				continue
			}
			ratio := ""
			if c.path != "direct" {
				ratio = "—"
				if d := findDirect(rs, c); d != nil && d.c.lat.quantile(0.5) > 0 && d.c.lat.quantile(0.99) > 0 {
					ratio = fmt.Sprintf("%.2f× / %.2f×", float64(c.lat.quantile(0.5))/float64(d.c.lat.quantile(0.5)),
						float64(c.lat.quantile(0.99))/float64(d.c.lat.quantile(0.99)))
				}
			}
			fmt.Fprintf(w, "| %s | %s | %s | %v | %d | %s | %s | %s | %s | %s |\n", c.name, c.path, guaranteeLabel(c.guarantee),
				c.interval, r.records, ms(c.lat.quantile(0.5)), ms(c.lat.quantile(0.99)), ms(c.lat.quantile(1)), ratio, rowRSS(r))
		}
	}
}

func badRow(r *result) string {
	switch {
	case r.note != "":
		return r.note
	case r.err != nil:
		return "**FAILED**"
	}
	return ""
}

func ratioCell(r, d *result) string {
	if d == nil {
		return "—"
	}
	x := r.rate() / d.rate()
	if x < target {
		return fmt.Sprintf("%.2f× (below target)", x)
	}
	return fmt.Sprintf("%.2f×", x)
}

func msf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
