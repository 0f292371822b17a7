package main

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"
)

// printTable writes the results as one Markdown table with a header and a
// footer (memory).
func printTable(w io.Writer, o options, rs []*result, sidecarRSS, brokerRSS int64) {
	fmt.Fprintf(w, "\n## txsink bench: sidecar vs direct client (target: sidecar ≥ %.1f× direct)\n\n", target)
	fmt.Fprintf(w, "- %d-byte random alphanumeric values, batches of %d records, %v per case, %d CPUs.\n",
		valueSize, batchSize, o.duration, runtime.NumCPU())
	fmt.Fprintln(w, "- Broker: kafkabroker (kfake, fsync'd data dir), a process of its own; 1 partition a topic; "+
		"both Kafka clients use franz-go's default snappy compression.")
	fmt.Fprintln(w, "- Sidecar: `sidecar run`, job mode auto, each checkpoint waits for committed; one sequential HTTP "+
		"client per writer: write 1,000 records, checkpoint once the interval is up.")
	fmt.Fprintln(w, "- Direct Kafka: one franz-go transactional producer per writer, async produce, commit once the "+
		"interval is up. Direct MySQL: one 1,000-row INSERT per transaction; sidecar MySQL: one XA branch per checkpoint.")
	fmt.Fprintln(w, "- CPU cores = CPU seconds ÷ wall seconds of the case, for this program (the app), the sidecar and the broker.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| case | path | commit every | writers | records | seconds | records/s | sidecar ÷ direct | CPU cores: app / sidecar / broker |")
	fmt.Fprintln(w, "|---|---|---|---:|---:|---:|---:|---:|---:|")
	for _, r := range rs {
		c := r.c
		every := fmt.Sprintf("%d rows", batchSize)
		if c.kind == "kafka" {
			every = c.interval.String()
		}
		path := map[string]string{
			"direct":  "direct (franz-go txn producer)",
			"tcp":     "sidecar, HTTP over TCP",
			"unix":    "sidecar, HTTP over Unix socket",
			"sidecar": "sidecar, HTTP over Unix socket (XA)",
		}[c.path]
		if c.kind == "mysql" && c.path == "direct" {
			path = "direct (multi-row INSERT txn)"
		}
		switch {
		case r.note != "":
			fmt.Fprintf(w, "| %s | %s | %s | %d | | | %s | | |\n", c.name, path, every, c.writers, r.note)
			continue
		case r.err != nil:
			fmt.Fprintf(w, "| %s | %s | %s | %d | %d | %.2f | **FAILED** | | |\n", c.name, path, every, c.writers,
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
		fmt.Fprintf(w, "| %s | %s | %s | %d | %d | %.2f | %s | %s | %.2f / %.2f / %.2f |\n", c.name, path, every, c.writers,
			r.records, r.elapsed.Seconds(), human(r.rate()), ratio, r.cpu.self, r.cpu.sidecar, r.cpu.broker)
	}
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
		"MySQL: COUNT(*) and COUNT(DISTINCT k)); run at %s.\n", time.Now().Format(time.DateTime))
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
