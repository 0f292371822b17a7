package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

// The operator commands speak the public HTTP API, like any application;
// they never open the journal or the sinks themselves.

const defaultAddr = "http://127.0.0.1:8470"

// Exit codes of the operator commands (main uses exitCode).
const (
	exitProblem  = 1 // the sidecar answered with a problem, or could not be reached
	exitUsage    = 2 // wrong flags or arguments
	exitDataLoss = 3 // a sink had aborted a checkpoint the journal decided to commit
)

// expiryWarn is the fraction of a Kafka transaction timeout after which an
// unresolved checkpoint is flagged: past the timeout the broker aborts it
// and a commit is data loss.
const expiryWarn = 0.8

const cliHelp = `
Connection (every operator command):
  --addr ADDR        the sidecar: an http:// or https:// URL, or the path of its
                     Unix socket (e.g. ./data/sidecar.sock)
                     [TXSINK_ADDR, default ` + defaultAddr + `]
  --token-file FILE  file holding the bearer token (the sidecar's token_file)
                     [TXSINK_TOKEN_FILE; or the token itself in TXSINK_TOKEN]
  -o table|json      output: aligned tables (default) or the API's JSON

Exit status: 0 done; 1 the sidecar answered with a problem (its code and detail
are printed) or could not be reached; 2 usage; 3 DATA LOSS: a sink had aborted
a checkpoint the journal decided to commit (commit met one, or checkpoints
lists one).
`

// cliError carries an exit code through run to main.
type cliError struct {
	code int
	err  error
}

func (e *cliError) Error() string { return e.err.Error() }
func (e *cliError) Unwrap() error { return e.err }

// exitCode maps run's error to the process exit status.
func exitCode(err error) int {
	if e, ok := errors.AsType[*cliError](err); ok {
		return e.code
	}
	return exitUsage
}

func usageErr(format string, a ...any) error {
	return &cliError{code: exitUsage, err: fmt.Errorf(format, a...)}
}

// cli is one operator command's parsed connection flags.
type cli struct {
	c      *client.Client
	addr   string
	json   bool
	stdout io.Writer
	stderr io.Writer
}

// parseCLI parses the shared flags of an operator command; args are what is
// left after them. Flags may come before or after the arguments.
func parseCLI(name, argsUsage string, args []string, nargs int, stdout, stderr io.Writer) (*cli, []string, error) {
	fs := flag.NewFlagSet("sidecar "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", os.Getenv("TXSINK_ADDR"), "")
	tokenFile := fs.String("token-file", os.Getenv("TXSINK_TOKEN_FILE"), "")
	out := fs.String("o", "table", "")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: sidecar %s [flags]%s\n%s", name, argsUsage, cliHelp)
	}
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, nil, err
			}
			return nil, nil, &cliError{code: exitUsage, err: err}
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		rest = append(rest, args[0])
		args = args[1:]
	}
	if len(rest) != nargs {
		fs.Usage()
		return nil, nil, usageErr("%s takes %d argument(s)%s, got %d", name, nargs, argsUsage, len(rest))
	}
	if *out != "table" && *out != "json" {
		return nil, nil, usageErr("-o %q: want table or json", *out)
	}
	token := strings.TrimSpace(os.Getenv("TXSINK_TOKEN"))
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return nil, nil, usageErr("token file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	c, where, err := dial(*addr, token)
	if err != nil {
		return nil, nil, err
	}
	return &cli{c: c, addr: where, json: *out == "json", stdout: stdout, stderr: stderr}, rest, nil
}

// dial returns a client of addr: an http(s) URL or a Unix socket path.
func dial(addr, token string) (*client.Client, string, error) {
	if addr == "" {
		addr = defaultAddr
	}
	var opts []client.Option
	if token != "" {
		opts = append(opts, client.WithToken(token))
	}
	if strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://") {
		return client.New(addr, opts...), addr, nil
	}
	if strings.Contains(addr, "://") {
		return nil, "", usageErr("--addr %q: want an http:// or https:// URL or a Unix socket path", addr)
	}
	fi, err := os.Stat(addr)
	if err != nil {
		// Most often the sidecar is not running (its socket is removed on
		// a clean stop): that is "cannot reach" (exit 1), not a usage error.
		return nil, "", &cliError{code: exitProblem, err: fmt.Errorf("cannot reach the sidecar at %s: no Unix socket there "+
			"(is it running? an address is an http:// or https:// URL or a socket path): %w", addr, err)}
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return nil, "", usageErr("--addr %q is not a Unix socket", addr)
	}
	return client.NewUnix(addr, opts...), addr, nil
}

// fail turns a client error into a printed problem and exit code.
func (c *cli) fail(what string, err error) error {
	if e, ok := errors.AsType[*client.Error](err); ok {
		if e.Code == api.CodeDataLoss {
			return c.dataLoss(what, e.Detail)
		}
		msg := fmt.Sprintf("%s: %d %s", what, e.Status, e.Code)
		if e.Code == "" {
			msg = fmt.Sprintf("%s: HTTP %d %s", what, e.Status, e.Title)
		}
		if e.Detail != "" {
			msg += ": " + e.Detail
		}
		if e.Code == api.CodeUnauthorized {
			msg += " (pass the sidecar's token with --token-file, TXSINK_TOKEN_FILE or TXSINK_TOKEN)"
		}
		return &cliError{code: exitProblem, err: errors.New(msg)}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return &cliError{code: exitProblem, err: fmt.Errorf("%s: %w", what, err)}
	}
	return &cliError{code: exitProblem, err: fmt.Errorf("%s: cannot reach the sidecar at %s: %w", what, c.addr, err)}
}

// dataLoss prints the loudest message this tool has: the operator must act
// (replay the checkpoint's input) and nothing may read it as a success.
func (c *cli) dataLoss(what, detail string) error {
	bar := strings.Repeat("!", 72)
	fmt.Fprintf(c.stderr, "%s\nDATA LOSS: %s\n%s\nA sink had already aborted a transaction the journal decided to commit\n"+
		"(e.g. the Kafka transaction timeout expired). Its records are NOT in the sink.\n"+
		"Replay the input of this checkpoint; see the sidecar's error log.\n%s\n", bar, what, detail, bar)
	return &cliError{code: exitDataLoss, err: fmt.Errorf("%s: data loss", what)}
}

func (c *cli) printJSON(v any) error {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (c *cli) table() *tabwriter.Writer {
	return tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
}

// cliTimeout bounds one operator command: the sidecar answers these calls
// from memory, except commit and abort, which wait for the sinks.
const cliTimeout = 2 * time.Minute

// StatusReport is the JSON of "sidecar status -o json".
type StatusReport struct {
	Cluster     api.ClusterStatus `json:"cluster"`
	Ready       bool              `json:"ready"`
	ReadyDetail string            `json:"ready_detail,omitempty"`
	Jobs        int               `json:"jobs"`
	InDoubt     int               `json:"in_doubt"`
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, _, err := parseCLI("status", "", args, 0, stdout, stderr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	cl, err := c.c.Cluster(ctx)
	if err != nil {
		return c.fail("status", err)
	}
	jobs, err := c.c.Jobs(ctx)
	if err != nil {
		return c.fail("status", err)
	}
	rep := StatusReport{Cluster: cl, Ready: true, Jobs: len(jobs)}
	if err := c.c.Ready(ctx); err != nil {
		e, ok := errors.AsType[*client.Error](err)
		if !ok {
			return c.fail("status", err)
		}
		rep.Ready, rep.ReadyDetail = false, e.Detail
	}
	for _, j := range jobs {
		for _, w := range j.Writers {
			rep.InDoubt += len(w.InDoubt)
		}
	}
	if c.json {
		return c.printJSON(rep)
	}
	tw := c.table()
	fmt.Fprintf(tw, "node:\t%s\n", cl.Node)
	fmt.Fprintf(tw, "role:\t%s\n", cl.Role)
	leader := "none"
	if cl.Leader != "" {
		leader = cl.Leader + " (" + cl.LeaderAddr + ")"
	}
	fmt.Fprintf(tw, "leader:\t%s\n", leader)
	for i, m := range cl.Members {
		label := ""
		if i == 0 {
			label = "members:"
		}
		role := "nonvoter"
		if m.Voter {
			role = "voter"
		}
		line := m.ID + " " + m.Address + " " + role
		if m.APIAddr != "" {
			// A member this node cannot reach is what an operator looks for.
			line += " " + m.APIAddr
			if !m.Reachable {
				line += " UNREACHABLE"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\n", label, line)
	}
	fmt.Fprintf(tw, "last index:\t%d\n", cl.LastIndex)
	ready := "yes"
	if !rep.Ready {
		ready = "NO: " + rep.ReadyDetail
	}
	fmt.Fprintf(tw, "ready:\t%s\n", ready)
	fmt.Fprintf(tw, "jobs:\t%d\n", rep.Jobs)
	fmt.Fprintf(tw, "in doubt:\t%d checkpoint(s)\n", rep.InDoubt)
	for i, s := range cl.Sinks {
		label := ""
		if i == 0 {
			label = "sinks:"
		}
		extra := ""
		if s.TransactionTimeoutSeconds > 0 {
			extra = ", transaction timeout " + fmtDur(secs(s.TransactionTimeoutSeconds))
		}
		fmt.Fprintf(tw, "%s\t%s (%s%s)\n", label, s.Name, s.Kind, extra)
	}
	return tw.Flush()
}

func runJobs(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, _, err := parseCLI("jobs", "", args, 0, stdout, stderr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	jobs, err := c.c.Jobs(ctx)
	if err != nil {
		return c.fail("jobs", err)
	}
	slices.SortFunc(jobs, func(a, b twopc.JobInfo) int { return strings.Compare(a.Name, b.Name) })
	if c.json {
		if jobs == nil {
			jobs = []twopc.JobInfo{}
		}
		return c.printJSON(api.JobList{Jobs: jobs})
	}
	tw := c.table()
	fmt.Fprintln(tw, "JOB\tMODE\tGUARANTEE\tSINKS\tWRITER\tEPOCH\tOWNER\tLAST COMMITTED\tIN DOUBT")
	for _, j := range jobs {
		sinks := strings.Join(j.Sinks, ",")
		if sinks == "" {
			sinks = "(all)"
		}
		if len(j.Writers) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t-\t-\t-\t-\t-\n", j.Name, j.Commit, j.Guarantee.Norm(), sinks)
			continue
		}
		ws := slices.Clone(j.Writers)
		slices.SortFunc(ws, func(a, b twopc.WriterInfo) int { return strings.Compare(a.Name, b.Name) })
		for _, w := range ws {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\n", j.Name, j.Commit, j.Guarantee.Norm(), sinks, w.Name, w.Epoch,
				orDash(w.Owner), w.LastCommitted, int64List(w.InDoubt))
		}
	}
	return tw.Flush()
}

// unresolved reports whether a checkpoint status still needs a sink or an
// operator (everything but committed and aborted).
func unresolved(status string) bool {
	return status != twopc.StatusCommitted && status != twopc.StatusAborted
}

func runCheckpoints(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, rest, err := parseCLI("checkpoints", " JOB", args, 1, stdout, stderr)
	if err != nil {
		return err
	}
	job := rest[0]
	ctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	cps, err := c.c.Checkpoints(ctx, job)
	if err != nil {
		return c.fail("checkpoints "+job, err)
	}
	// The timeouts are optional context: an old sidecar or one without
	// cluster status still lists its checkpoints.
	timeouts := map[string]time.Duration{}
	if cl, err := c.c.Cluster(ctx); err == nil {
		for _, s := range cl.Sinks {
			if s.TransactionTimeoutSeconds > 0 {
				timeouts[s.Name] = secs(s.TransactionTimeoutSeconds)
			}
		}
	}
	// Unresolved first, oldest first: what an operator has to act on.
	slices.SortStableFunc(cps, func(a, b twopc.CheckpointInfo) int {
		ua, ub := unresolved(a.Status), unresolved(b.Status)
		if ua != ub {
			if ua {
				return -1
			}
			return 1
		}
		if d := cmp.Compare(b.AgeSeconds, a.AgeSeconds); d != 0 {
			return d
		}
		if d := strings.Compare(a.Writer, b.Writer); d != 0 {
			return d
		}
		return cmp.Compare(a.Checkpoint, b.Checkpoint)
	})
	if c.json {
		if cps == nil {
			cps = []twopc.CheckpointInfo{}
		}
		return c.printJSON(api.CheckpointList{Checkpoints: cps})
	}
	tw := c.table()
	fmt.Fprintln(tw, "WRITER\tCHECKPOINT\tEPOCH\tSTATUS\tAGE\tKAFKA TIMEOUT\tBRANCHES")
	var warnings, lost []string
	for _, cp := range cps {
		age := secs(cp.AgeSeconds)
		// The shortest timeout among the checkpoint's Kafka branches is
		// the one that expires first.
		var limit time.Duration
		var limitSink string
		for _, b := range cp.Branches {
			if t, ok := timeouts[b.Sink]; ok && (limit == 0 || t < limit) {
				limit, limitSink = t, b.Sink
			}
		}
		timeout := "-"
		if cp.Status == twopc.StatusDataLoss {
			lost = append(lost, fmt.Sprintf("%s checkpoint %d", cp.Writer, cp.Checkpoint))
		} else if limit > 0 && unresolved(cp.Status) {
			frac := age.Seconds() / limit.Seconds()
			timeout = fmt.Sprintf("%d%% of %s", int(frac*100), fmtDur(limit))
			if frac >= expiryWarn {
				timeout += " !"
				warnings = append(warnings, fmt.Sprintf("warning: %s checkpoint %d is %s old, %d%% of the transaction timeout of sink %s (%s): "+
					"commit or abort it before the broker aborts it (a later commit is data loss)",
					cp.Writer, cp.Checkpoint, fmtDur(age), int(frac*100), limitSink, fmtDur(limit)))
			}
		}
		var br []string
		for _, b := range cp.Branches {
			br = append(br, b.Sink+":"+b.Status)
		}
		status := cp.Status
		if status == twopc.StatusDataLoss {
			status = "DATA_LOSS"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\n", cp.Writer, cp.Checkpoint, cp.Epoch, status,
			fmtDur(age), timeout, orDash(strings.Join(br, " ")))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, w := range warnings {
		fmt.Fprintln(c.stderr, w)
	}
	if len(lost) > 0 {
		return c.dataLoss("checkpoints "+job, "checkpoints with status data_loss: "+strings.Join(lost, ", "))
	}
	return nil
}

func runDecide(ctx context.Context, name string, args []string, stdout, stderr io.Writer) error {
	c, rest, err := parseCLI(name, " JOB N", args, 2, stdout, stderr)
	if err != nil {
		return err
	}
	job := rest[0]
	n, err := strconv.ParseInt(rest[1], 10, 64)
	if err != nil || n <= 0 {
		return usageErr("%s: checkpoint %q must be a positive integer", name, rest[1])
	}
	ctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	call := c.c.Commit
	if name == "abort" {
		call = c.c.Abort
	}
	what := fmt.Sprintf("%s %s %d", name, job, n)
	res, err := call(ctx, job, n)
	if err != nil {
		// A commit that met a data loss answers a data_loss problem that
		// carries the result: name every lost writer and checkpoint.
		if errors.Is(err, twopc.ErrDataLoss) && len(res.DataLoss) > 0 {
			if c.json {
				_ = c.printJSON(res)
			}
			return c.dataLoss(what, "data_loss: "+lostList(res.DataLoss))
		}
		return c.fail(what, err)
	}
	if c.json {
		return c.printJSON(res)
	}
	var ws []string
	for w := range res.Writers {
		ws = append(ws, w)
	}
	slices.Sort(ws)
	switch res.Status {
	case twopc.StatusCommitting, twopc.StatusAborting:
		fmt.Fprintf(c.stdout, "%s: %s: the decision is durable; a sink has not confirmed yet and the sidecar keeps retrying "+
			"(watch: sidecar checkpoints %s)\n", what, res.Status, job)
	default:
		fmt.Fprintf(c.stdout, "%s: %s\n", what, res.Status)
	}
	if len(ws) == 0 {
		fmt.Fprintln(c.stdout, "no checkpoint was waiting for this decision")
		return nil
	}
	tw := c.table()
	fmt.Fprintln(tw, "WRITER\tDECIDED")
	for _, w := range ws {
		fmt.Fprintf(tw, "%s\t%s\n", w, int64List(res.Writers[w]))
	}
	return tw.Flush()
}

// lostList formats per-writer checkpoints as "w checkpoint N, …", sorted.
func lostList(lost map[string][]int64) string {
	var out []string
	for w, ns := range lost {
		for _, n := range ns {
			out = append(out, fmt.Sprintf("%s checkpoint %d", w, n))
		}
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// fmtDur rounds to what a person reads: ms below a second, then seconds.
func fmtDur(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func int64List(ns []int64) string {
	if len(ns) == 0 {
		return "-"
	}
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.FormatInt(n, 10)
	}
	return strings.Join(s, ",")
}
