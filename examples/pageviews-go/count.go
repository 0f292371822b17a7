package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

// errDataLoss: the sidecar reported that a sink aborted a checkpoint it
// had decided to commit (502 data_loss on a checkpoint, or a session that
// restored over lost checkpoints: the client then returns an error with
// code data_loss). The app stops (exit 3) rather than count on.
var errDataLoss = errors.New("the sidecar reported data loss")

type countConfig struct {
	sidecar    string
	brokers    string
	input      string
	output     string
	job        string
	writer     int
	writers    int
	every      int
	interval   time.Duration
	exitIdle   time.Duration
	giveUp     time.Duration
	crashAfter int64
	pauseFile  string
	tokenFile  string
	offsets    string // "state": resume from the checkpoint state; "group": from the group's committed offsets
	group      string // consumer group of --offsets group ("": the job name)
}

func defaultCountConfig() countConfig {
	return countConfig{
		sidecar: "http://127.0.0.1:8470", brokers: "127.0.0.1:9092", input: "clicks", output: "pageviews",
		job: "pageviews", writers: 1, every: 500, interval: time.Second, giveUp: 2 * time.Minute,
		offsets: offsetsState,
	}
}

func (c *countConfig) bind(fs *flag.FlagSet) {
	fs.StringVar(&c.sidecar, "sidecar", c.sidecar, "sidecar URL: http://host:port or unix:///path/to/sidecar.sock; for a cluster, the nodes' URLs comma-separated (the client moves on to the next when one cannot be reached)")
	// generate binds -brokers and -input too; the demo binds both configs.
	if fs.Lookup("brokers") == nil {
		fs.StringVar(&c.brokers, "brokers", c.brokers, "Kafka bootstrap broker")
		fs.StringVar(&c.input, "input", c.input, "input topic of click events")
	}
	fs.StringVar(&c.output, "output", c.output, "Kafka topic for the per-checkpoint increments")
	fs.StringVar(&c.job, "job", c.job, "txsink job name")
	fs.IntVar(&c.writer, "writer", c.writer, "this instance's writer number; it reads the partitions p with p % writers == writer")
	fs.IntVar(&c.writers, "writers", c.writers, "number of parallel instances")
	fs.IntVar(&c.every, "every", c.every, "checkpoint after this many events")
	fs.DurationVar(&c.interval, "interval", c.interval, "checkpoint at least this often while events are pending; 0: only every --every events and at the end of the input read so far (no timer)")
	fs.DurationVar(&c.exitIdle, "exit-idle", c.exitIdle, "exit once caught up and checkpointed with no new event for this long (0: run until stopped)")
	fs.DurationVar(&c.giveUp, "give-up", c.giveUp, "exit when the sidecar has failed every call for this long")
	fs.Int64Var(&c.crashAfter, "crash-after", c.crashAfter, "demo a crash: exit 137 after sending the records of the first checkpoint past this many events, before checkpointing it")
	fs.StringVar(&c.tokenFile, "token-file", c.tokenFile, "file holding the sidecar's bearer token (its token_file), sent on every call")
	fs.StringVar(&c.offsets, "offsets", c.offsets, "where the input position lives: state (the checkpoint's state, restored with the session) or group (the consumer group --group's committed offsets, committed by the sidecar in each checkpoint's Kafka transaction; no state)")
	fs.StringVar(&c.group, "group", c.group, "consumer group of --offsets group (default: the --job name)")
	fs.StringVar(&c.pauseFile, "pause-file", c.pauseFile, "demo a slow app (make chaos uses it): when this file exists at a checkpoint, remove it and pause for the duration it holds (e.g. 7s) between sending the records and checkpointing")
}

// groupID is the consumer group of --offsets group: --group, else the job.
func (c countConfig) groupID() string {
	if c.group != "" {
		return c.group
	}
	return c.job
}

// The two places the input position can live (--offsets).
const (
	offsetsState = "state" // the checkpoint's state, restored by the session
	offsetsGroup = "group" // the consumer group's committed offsets (group.go)
)

// eventsSink is the Kafka sink the increments go to; in --offsets group
// mode its transaction also commits the group's offsets.
const eventsSink = "events"

// state is what the app stores with each checkpoint: the next offset to read
// of each of its input partitions. After a restart it resumes exactly there.
type state struct {
	Topic   string           `json:"topic"`
	Offsets map[string]int64 `json:"offsets"` // partition -> next offset
}

// increment is the value of one record on the output topic: the views of one
// app counted in one checkpoint, with the input range it covers, so an
// independent checker can prove every input event was counted exactly once.
type increment struct {
	App        string           `json:"app"`
	Views      int64            `json:"views"`
	Job        string           `json:"job"`
	Writer     string           `json:"writer"`
	Checkpoint int64            `json:"checkpoint"`
	Topic      string           `json:"topic"`
	From       map[string]int64 `json:"from"` // partition -> first offset counted
	To         map[string]int64 `json:"to"`   // partition -> first offset not counted
}

// fatal marks an error that reopening the session cannot fix (restored
// state of another app, for instance): the app stops.
type fatal struct{ error }

func (f fatal) Unwrap() error { return f.error }

// retryable reports whether a session should be reopened after err (the
// sidecar restarted, fenced us, a sink failed, ...) rather than the app stop.
func retryable(err error) bool {
	if errors.As(err, new(fatal)) {
		return false
	}
	var e *client.Error
	if !errors.As(err, &e) {
		return true // connection refused or reset: the sidecar is restarting
	}
	switch e.Code {
	case "session_fenced", "session_lost", "no_session", "seq_conflict", "sink_failure", "backpressure", "unavailable", "internal":
		return true
	}
	return false
}

// count runs the app: sessions, one after the other, until done or a
// non-retryable error.
func count(ctx context.Context, c countConfig, out io.Writer) error {
	if c.writers < 1 || c.writer < 0 || c.writer >= c.writers || c.every < 1 {
		return fmt.Errorf("count: want 0 <= --writer < --writers and --every >= 1")
	}
	switch c.offsets {
	case offsetsState:
	case offsetsGroup:
		c.group = c.groupID()
	default:
		return fmt.Errorf("count: --offsets %q: want state or group", c.offsets)
	}
	var opts []client.Option
	if c.tokenFile != "" {
		b, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return fmt.Errorf("count: token: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return fmt.Errorf("count: token file %s is empty", c.tokenFile)
		}
		opts = append(opts, client.WithToken(tok))
	}
	cl, err := newClient(c.sidecar, opts...)
	if err != nil {
		return err
	}
	a := &app{cfg: c, cl: cl, out: out, name: strconv.Itoa(c.writer)}
	lastOK := time.Now()
	backoff := 100 * time.Millisecond
	for {
		done, err := a.session(ctx)
		if done && err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, twopc.ErrDataLoss) || errors.Is(err, errDataLoss) {
			// The sidecar could not commit a decided checkpoint: said loudly.
			fmt.Fprintf(out, "writer %s: DATA LOSS reported by the sidecar: %v\n", a.name, err)
			return exitCode(3)
		}
		if !retryable(err) {
			return err
		}
		if a.progressed {
			lastOK, backoff, a.progressed = time.Now(), 100*time.Millisecond, false
		}
		if time.Since(lastOK) > c.giveUp {
			return fmt.Errorf("giving up after %s of failures: %w", c.giveUp, err)
		}
		fmt.Fprintf(out, "writer %s: %v; reopening the session in %s (at %s)\n", a.name, err, backoff, cl.Endpoint())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// newClient is the client of --sidecar: one URL (http(s):// or unix://),
// or the URLs of a cluster's nodes, comma-separated. With several, the
// client sends every call to one node and moves on to the next when that
// one cannot be reached; a session call that got no answer comes back as
// an error (client.ErrReopen), and the app reopens its session, on the
// node now in use, as after any failure (count's loop).
func newClient(spec string, opts ...client.Option) (*client.Client, error) {
	var urls []string
	for u := range strings.SplitSeq(spec, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	if len(urls) == 0 {
		return nil, fmt.Errorf("--sidecar %q names no URL", spec)
	}
	for i, u := range urls {
		if strings.HasPrefix(u, "unix://") && i > 0 {
			return nil, fmt.Errorf("--sidecar %q: only the first URL may be a Unix socket (unix://); the other nodes are reached over TCP", spec)
		}
		if !strings.HasPrefix(u, "unix://") && !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			return nil, fmt.Errorf("--sidecar %q: %q is not an http://, https:// or unix:// URL", spec, u)
		}
	}
	if len(urls) > 1 {
		opts = append(opts, client.WithEndpoints(urls[1:]...))
	}
	if path, ok := strings.CutPrefix(urls[0], "unix://"); ok {
		return client.NewUnix(path, opts...), nil
	}
	return client.New(urls[0], opts...), nil
}

type app struct {
	cfg        countConfig
	cl         *client.Client
	out        io.Writer
	name       string
	progressed bool  // a checkpoint succeeded since the last failure
	sent       int64 // events whose increments this process has sent
}

// session opens a session, resumes the input from the restored state and
// counts until it is done (caught up and idle, done=true) or a call fails.
func (a *app) session(ctx context.Context) (done bool, err error) {
	c := a.cfg
	if _, err := a.cl.PutJob(ctx, c.job, twopc.ModeAuto, nil); err != nil {
		return false, fmt.Errorf("put job: %w", err)
	}
	sess, err := a.cl.OpenSession(ctx, c.job, a.name, nil)
	if err != nil {
		return false, fmt.Errorf("open session: %w", err)
	}
	st := state{Topic: c.input, Offsets: map[string]int64{}}
	switch {
	case c.offsets == offsetsGroup && sess.State != nil:
		// Resuming from the group instead would count the input again.
		return false, fatal{fmt.Errorf("restored checkpoint %d carries a state: job %q was counted with --offsets state; run it that way, or count with --offsets group under another --job", sess.Checkpoint, c.job)}
	case c.offsets == offsetsState && sess.Checkpoint > 0 && sess.State == nil:
		return false, fatal{fmt.Errorf("restored checkpoint %d carries no state: job %q was counted with --offsets group (the position is in a consumer group); run it that way, or use another --job", sess.Checkpoint, c.job)}
	case sess.State != nil:
		if err := json.Unmarshal(sess.State, &st); err != nil {
			return false, fatal{fmt.Errorf("restored state of checkpoint %d: %w (not ours?)", sess.Checkpoint, err)}
		}
	}
	if st.Topic != c.input {
		return false, fatal{fmt.Errorf("restored state is for topic %q, not %q", st.Topic, c.input)}
	}

	kc, err := kgo.NewClient(kgo.SeedBrokers(c.brokers), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		return false, err
	}
	defer kc.Close()
	adm := kadm.NewClient(kc)
	ends, err := adm.ListEndOffsets(ctx, c.input)
	if err != nil {
		return false, fmt.Errorf("list %q: %w", c.input, err)
	}
	if err := ends.Error(); err != nil {
		return false, fmt.Errorf("list %q: %w", c.input, err) // e.g. not created yet: retried
	}
	var parts []int32 // this writer's partitions
	ends.Each(func(o kadm.ListedOffset) {
		if o.Partition >= 0 && int(o.Partition)%c.writers == c.writer {
			parts = append(parts, o.Partition)
		}
	})
	if len(parts) == 0 {
		return false, fmt.Errorf("topic %q has no partition for writer %d of %d", c.input, c.writer, c.writers)
	}
	from := "state"
	if c.offsets == offsetsGroup {
		if st.Offsets, err = a.groupOffsets(ctx, adm, sess.Checkpoint, parts); err != nil {
			return false, err // retried: a new session, a new look at the group
		}
		from = fmt.Sprintf("group %q's committed", c.group)
	}
	assign := map[int32]kgo.Offset{}
	for _, part := range parts {
		p := strconv.Itoa(int(part))
		if _, ok := st.Offsets[p]; !ok {
			st.Offsets[p] = 0
		}
		assign[part] = kgo.NewOffset().At(st.Offsets[p])
	}
	kc.AddConsumePartitions(map[string]map[int32]kgo.Offset{c.input: assign})
	fmt.Fprintf(a.out, "writer %s: session epoch %d, resuming after checkpoint %d at %s offsets %v (at %s)\n",
		a.name, sess.Epoch, sess.Checkpoint, from, st.Offsets, a.cl.Endpoint())

	s := &counting{app: a, epoch: sess.Epoch, next: sess.Checkpoint + 1, pos: st, from: copyOffsets(st.Offsets),
		views: map[string]int64{}, lastCkpt: time.Now()}
	idleSince := time.Now()
	for {
		pctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		fs := kc.PollRecords(pctx, 1000)
		cancel()
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				ferr = err
			}
		})
		if ferr != nil {
			return false, fmt.Errorf("read %q: %w", c.input, ferr)
		}
		got := 0
		fs.EachRecord(func(r *kgo.Record) {
			var ck click
			if err := json.Unmarshal(r.Value, &ck); err != nil || ck.App == "" {
				// A malformed event is skipped but its offset is passed, so
				// it is skipped the same way on every replay.
				fmt.Fprintf(a.out, "writer %s: skipping malformed event at %d/%d\n", a.name, r.Partition, r.Offset)
			} else {
				s.views[ck.App]++
			}
			s.pos.Offsets[strconv.Itoa(int(r.Partition))] = r.Offset + 1
			s.pending++
			got++
			if s.pending >= int64(c.every) && ferr == nil {
				ferr = s.checkpoint(ctx)
			}
		})
		if ferr != nil {
			return false, ferr
		}
		// Caught up: nothing came and the end offsets say there is nothing
		// more, so with --interval 0 checkpoint boundaries depend only on
		// the input (every --every events, and at its current end).
		caughtUp := false
		if got == 0 {
			behind, err := s.behind(ctx, adm)
			if err != nil {
				return false, err
			}
			caughtUp = behind == 0
		}
		if s.pending > 0 && (caughtUp || (c.interval > 0 && time.Since(s.lastCkpt) >= c.interval)) {
			if err := s.checkpoint(ctx); err != nil {
				return false, err
			}
		}
		if !caughtUp {
			idleSince = time.Now()
		}
		if caughtUp && c.exitIdle > 0 && time.Since(idleSince) >= c.exitIdle {
			fmt.Fprintf(a.out, "writer %s: caught up at offsets %v (checkpoint %d committed); exiting\n",
				a.name, s.pos.Offsets, s.next-1)
			return true, nil
		}
	}
}

// counting is one session's counting state.
type counting struct {
	*app
	epoch    uint64
	next     int64            // the next checkpoint number
	seq      int64            // the last records call's seq in this session
	pos      state            // next offsets (what the next checkpoint stores)
	from     map[string]int64 // offsets at the last checkpoint
	views    map[string]int64 // views counted since the last checkpoint
	pending  int64            // events read since the last checkpoint
	lastCkpt time.Time
}

// checkpoint sends this checkpoint's increments and checkpoints with the
// input position as state. On success the increments are committed in Kafka
// and MySQL together with that position: exactly once.
func (s *counting) checkpoint(ctx context.Context) error {
	c := s.cfg
	var body bytes.Buffer
	enc := json.NewEncoder(&body) // one JSON value a line: NDJSON
	for _, appName := range sortedKeys(s.views) {
		v := s.views[appName]
		inc := increment{App: appName, Views: v, Job: c.job, Writer: s.name, Checkpoint: s.next, Topic: c.input,
			From: s.from, To: s.pos.Offsets}
		if err := enc.Encode(map[string]any{"sink": eventsSink, "topic": c.output, "key": appName, "value": inc}); err != nil {
			return err
		}
		if err := enc.Encode(map[string]any{"sink": "db", "stmt": "upsert_pv", "args": []any{appName, v}}); err != nil {
			return err
		}
	}
	if body.Len() > 0 {
		s.seq++
		if _, err := s.cl.WriteNDJSON(ctx, c.job, s.name, s.epoch, client.Seq(s.seq), body.Bytes()); err != nil {
			return fmt.Errorf("write records: %w", err)
		}
	}
	// A pause here lets the checkpoint's Kafka transaction age: the sidecar
	// must refuse to journal it (502 sink_failure) and this app replays.
	paused := time.Duration(0)
	if body.Len() > 0 {
		if d := s.pauseRequested(); d > 0 {
			fmt.Fprintf(s.out, "writer %s: pausing %s between the records and checkpoint %d (--pause-file)\n", s.name, d, s.next)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(d):
			}
			paused = d
		}
	}
	s.sent += s.pending
	if c.crashAfter > 0 && s.sent >= c.crashAfter {
		fmt.Fprintf(s.out, "writer %s: simulating a crash: the records of checkpoint %d are sent, not checkpointed (exit 137)\n", s.name, s.next)
		os.Exit(137)
	}
	var err error
	req := api.CheckpointRequest{Wait: twopc.WaitCommitted}
	if c.offsets == offsetsGroup {
		// No state: the sidecar commits the position as the group's
		// offsets in this checkpoint's transaction of the Kafka sink.
		req.Offsets = s.groupCommit()
	} else if req.State, err = json.Marshal(s.pos); err != nil {
		return err
	}
	res, err := s.cl.CheckpointWith(ctx, c.job, s.name, s.epoch, s.next, req)
	if paused > 0 {
		var outcome string
		if err != nil {
			outcome = err.Error() // "txsink: 502 sink_failure: …" from the client
		} else {
			outcome = "status " + res.Status
		}
		fmt.Fprintf(s.out, "writer %s: checkpoint %d after the pause: %s\n", s.name, s.next, outcome)
	}
	if err != nil {
		return fmt.Errorf("checkpoint %d: %w", s.next, err)
	}
	switch res.Status {
	case "committed", "committing": // committing: the decision is durable; the sidecar finishes it
	case "data_loss":
		return fmt.Errorf("checkpoint %d: %w", s.next, errDataLoss)
	default:
		return fatal{fmt.Errorf("checkpoint %d: unexpected status %q", s.next, res.Status)}
	}
	s.progressed = true
	fmt.Fprintf(s.out, "writer %s: checkpoint %d %s: %d events, offsets %v\n", s.name, s.next, res.Status, s.pending, s.pos.Offsets)
	s.next++
	s.from = copyOffsets(s.pos.Offsets)
	s.views = map[string]int64{}
	s.pending = 0
	s.lastCkpt = time.Now()
	return nil
}

// behind is the number of events of this writer's partitions not read yet.
// It compares with the high watermark, which is right for the generator's
// non-transactional input. For input written in transactions, commit markers
// take offsets a consumer never sees: compare with the last stable offset
// and allow for markers there.
func (s *counting) behind(ctx context.Context, adm *kadm.Client) (int64, error) {
	ends, err := adm.ListEndOffsets(ctx, s.cfg.input)
	if err != nil {
		return 0, err
	}
	var n int64
	if err := ends.Error(); err != nil {
		return 0, fmt.Errorf("list %q: %w", s.cfg.input, err)
	}
	ends.Each(func(o kadm.ListedOffset) {
		if pos, ok := s.pos.Offsets[strconv.Itoa(int(o.Partition))]; ok && o.Offset > pos {
			n += o.Offset - pos
		}
	})
	return n, nil
}

// pauseRequested consumes the --pause-file trigger and returns the pause it
// asks for (0: none).
func (a *app) pauseRequested() time.Duration {
	if a.cfg.pauseFile == "" {
		return 0
	}
	b, err := os.ReadFile(a.cfg.pauseFile)
	if err != nil {
		return 0 // no trigger (the usual case)
	}
	if err := os.Remove(a.cfg.pauseFile); err != nil {
		fmt.Fprintf(a.out, "writer %s: --pause-file: %v\n", a.name, err)
		return 0
	}
	d, err := time.ParseDuration(strings.TrimSpace(string(b)))
	if err != nil || d <= 0 {
		fmt.Fprintf(a.out, "writer %s: --pause-file %s: want a positive duration such as 7s, got %q; not pausing\n", a.name, a.cfg.pauseFile, b)
		return 0
	}
	return d
}

func copyOffsets(m map[string]int64) map[string]int64 {
	c := make(map[string]int64, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
