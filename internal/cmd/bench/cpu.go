package main

import (
	"fmt"
	"io"
	"runtime"
)

// printCPUBudget writes where the CPU of each records/s row goes, per
// record and per process, and what that implies on this machine.
//
// Why: on a machine whose cores are all busy, records/s is at most
// cores ÷ (CPU seconds per record, summed over every process on the path).
// The direct path runs the app's producer and the broker; the sidecar path
// adds the app's HTTP client and JSON (kafka-bin: binary) encoding and the
// sidecar itself. So
// when both rows saturate the machine, sidecar ÷ direct cannot exceed
// direct total ÷ sidecar total, however fast the sidecar's own code: the
// "CPU bound" column. A measured ratio near that bound means the row is
// CPU-bound and only less CPU per record (anywhere on the path) moves it;
// a ratio well below it means waiting (round trips, fsyncs), not CPU.
func printCPUBudget(w io.Writer, rs []*result) {
	var rows [][2]*result
	for _, r := range rs {
		if !r.c.throughput() || r.c.path == "direct" || !r.ok() {
			continue
		}
		if d := findDirect(rs, r.c); d != nil {
			rows = append(rows, [2]*result{r, d})
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\n## Where the CPU goes: µs of CPU per record, by process (%d CPUs)\n\n", runtime.NumCPU())
	fmt.Fprintln(w, "- app = this program (direct: the franz-go producer or the SQL client; sidecar rows: the HTTP client "+
		"and its JSON encoding, or the binary one in the kafka-bin rows); servers = the Kafka broker + mariadbd (when it runs here). CPU bound = direct total ÷ sidecar total: the highest sidecar ÷ direct possible when "+
		"both rows keep every core busy. Busy = CPU cores used ÷ CPUs.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| case | sidecar row µs/record: app / sidecar / servers = total | busy | direct row: app / servers = total | busy | CPU bound | measured sidecar ÷ direct |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|")
	for _, p := range rows {
		r, d := p[0], p[1]
		ra, rsc, rb, rt := perRecord(r)
		da, _, db, _ := perRecord(d)
		dt := da + db // the idle sidecar is not on the direct path
		bound := "—"
		if rt > 0 {
			bound = fmt.Sprintf("%.2f×", dt/rt)
		}
		fmt.Fprintf(w, "| %s | %.2f / %.2f / %.2f = %.2f | %.0f %% | %.2f / %.2f = %.2f | %.0f %% | %s | %.2f× |\n",
			r.c.name, ra, rsc, rb, rt, busy(r), da, db, dt, busy(d), bound, r.rate()/d.rate())
	}
}

// perRecord is the row's CPU µs per record: app, sidecar, server (the
// Kafka broker plus the database server, each idle when not on the row's
// path), total.
func perRecord(r *result) (app, sidecar, broker, total float64) {
	rate := r.rate()
	if rate <= 0 {
		return 0, 0, 0, 0
	}
	us := func(cores float64) float64 { return cores / rate * 1e6 }
	app, sidecar, broker = us(r.cpu.self), us(r.cpu.sidecar), us(r.cpu.broker+r.cpu.db)
	return app, sidecar, broker, app + sidecar + broker
}

// busy is the share of the machine's CPUs the row used, in percent.
func busy(r *result) float64 {
	return (r.cpu.self + r.cpu.sidecar + r.cpu.broker + r.cpu.db) / float64(runtime.NumCPU()) * 100
}
