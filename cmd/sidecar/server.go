package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/txsink/txsink/api"
	"github.com/txsink/txsink/raftlog"
	"github.com/txsink/txsink/sinks/kafka"
	"github.com/txsink/txsink/sinks/mysql"
	"github.com/txsink/txsink/twopc"
)

// sidecar is one running node: journal, sinks, coordinator and API.
type sidecar struct {
	cfg      Config
	log      *slog.Logger
	node     *raftlog.Node
	machine  *twopc.Machine
	journal  *raftJournal
	peers    *peers
	admin    *clusterAdmin
	svc      *lateService
	apiAddr  string // this node's API base URL as other nodes use it
	coord    *twopc.Coordinator
	srv      *api.Server
	sinks    map[string]twopc.Sink
	closers  []func()
	lns      []net.Listener
	cancel   context.CancelFunc
	runDone  chan struct{}
	httpAddr string
	ready    atomic.Pointer[readiness]
}

// openSinks connects every configured sink. A sink whose server does not
// answer yet is waited for (see openWithRetry); a bad sink (a statement that
// does not prepare, a wrong config) stops start-up with its name.
func openSinks(ctx context.Context, cfg Config, log *slog.Logger) (map[string]twopc.Sink, []func(), error) {
	sinks := map[string]twopc.Sink{}
	var closers []func()
	fail := func(err error) (map[string]twopc.Sink, []func(), error) {
		for _, c := range closers {
			c()
		}
		return nil, nil, err
	}
	for name, sc := range cfg.Sinks {
		// The sinks add the sink attribute to their logger themselves.
		l := log.With("sink", name)
		switch sc.Kind {
		case "kafka":
			s, err := openWithRetry(ctx, l, cfg.SinkWait, func() (*kafka.Sink, error) {
				return kafka.New(ctx, kafka.Config{Name: name, Brokers: sc.Brokers, DefaultTopic: sc.DefaultTopic, Topics: sc.Topics,
					TransactionalIDPrefix: sc.TransactionalIDPrefix, MaxInflight: sc.MaxInflight,
					TransactionTimeout: sc.TransactionTimeout, ExpireShare: sc.ExpireShare, CreateTopics: sc.CreateTopics,
					IdleClientTimeout: sc.IdleClientTimeout, DirectDeliveryTimeout: sc.DirectDeliveryTimeout, Logger: log})
			})
			if err != nil {
				return fail(fmt.Errorf("sink %s (kafka): %w", name, err))
			}
			sinks[name] = s
			closers = append(closers, s.Close)
		case "mysql":
			s, err := openWithRetry(ctx, l, cfg.SinkWait, func() (*mysql.Sink, error) {
				return mysql.New(ctx, mysql.Config{Name: name, DSN: sc.DSN, DSNFile: sc.DSNFile, Statements: sc.Statements,
					MaxInflight: sc.MaxInflight, MaxConns: sc.MaxConns, MarkerTable: sc.MarkerTable, Logger: log,
					ReservedConns: sc.ReservedConns, ConnWait: sc.ConnWait})
			})
			if err != nil {
				return fail(fmt.Errorf("sink %s (mysql): %w", name, err))
			}
			sinks[name] = s
			closers = append(closers, func() { s.Close() })
		}
	}
	return sinks, closers, nil
}

// permanentServerError reports whether err is an error the MySQL server sent
// that waiting will not fix (a rejected statement, access denied). Too many
// connections and a shutdown in progress pass.
func permanentServerError(err error) bool {
	var me *gomysql.MySQLError
	if !errors.As(err, &me) {
		return false
	}
	switch me.Number {
	case 1040, 1053: // ER_CON_COUNT_ERROR, ER_SERVER_SHUTDOWN
		return false
	}
	return true
}

// openWithRetry calls open until it succeeds, fails for a reason waiting
// cannot fix, wait passes or ctx ends. A sink's server that does not answer
// yet (MariaDB restarting after a crash, a broker still starting) is waited
// for: a sidecar that exited instead would crash-loop and take its other
// sinks and the recovery of prepared branches down with it. An error the
// server itself sent (a statement it rejects, access denied) or a config
// error ends the wait at once.
func openWithRetry[S any](ctx context.Context, log *slog.Logger, wait time.Duration, open func() (S, error)) (S, error) {
	deadline := time.Now().Add(wait)
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		s, err := open()
		if err == nil || !errors.Is(err, twopc.ErrSinkFailure) || permanentServerError(err) {
			return s, err
		}
		if time.Now().Add(backoff).After(deadline) {
			return s, fmt.Errorf("not reachable for %s (sink_wait): %w", wait, err)
		}
		log.Warn("sink not reachable yet; retrying", "attempt", attempt, "retry_in", backoff, "err", err)
		select {
		case <-ctx.Done():
			return s, err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// nodeLease is how long a node keeps acting for its writers without hearing
// from the journal's leader (twopc.Config.Lease); twopc's default handover
// wait (2.5 s) exceeds it by a margin for requests in flight. It is longer
// than an election here (heartbeat timeout 300–600 ms plus the vote), so a
// leader change alone does not stop the sessions of the other nodes.
const nodeLease = 1500 * time.Millisecond

// startSidecar opens the journal, the sinks, runs recovery and serves the API.
func startSidecar(ctx context.Context, cfg Config, log *slog.Logger) (_ *sidecar, err error) {
	sc := &sidecar{cfg: cfg, log: log, runDone: make(chan struct{})}
	defer func() {
		if err != nil {
			sc.close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, err
	}
	tuneGC(cfg, log, cgroupFiles)
	var tokenFromFile string
	if cfg.TokenFile != "" {
		if tokenFromFile, err = readTokenFile(cfg.TokenFile, log); err != nil {
			return nil, err
		}
	} else if !loopback(cfg.HTTPAddr) {
		log.Warn("the HTTP API is reachable from other hosts without a token (insecure_no_token)", "http_addr", cfg.HTTPAddr)
	}
	failpoint, err := failpointFromEnv()
	if err != nil {
		return nil, err
	}

	// The journal first (opening it does not wait), then the API, served
	// from now on: a node forming a cluster answers the others' GET
	// /v1/cluster while it waits for them, and every application call
	// answers 503 until start-up is done (lateService).
	sc.machine = twopc.NewMachine()
	rcfg := cfg.raftConfig()
	rcfg.Logger = log.With("component", "raft")
	sc.node, err = raftlog.Open(rcfg, sc.machine)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	if sc.peers, err = newPeers(cfg, tokenFromFile); err != nil {
		return nil, err
	}
	sc.journal = &raftJournal{n: sc.node, m: sc.machine, peers: sc.peers, log: log.With("component", "journal")}
	sc.admin = &clusterAdmin{cfg: cfg, node: sc.node, machine: sc.machine, journal: sc.journal, peers: sc.peers}
	sc.svc = &lateService{}
	met := newMetrics(sc.machine, sc.node)
	// Session calls for a writer another node owns are passed to it
	// (owner.go); the journal names owners and members' API addresses.
	sc.srv, err = api.New(sc.svc, api.Config{
		MaxBodyBytes: cfg.Limits.MaxBodyBytes, MaxRecordsPerCall: cfg.Limits.MaxRecordsPerCall,
		Token: tokenFromFile, Logger: log.With("component", "api"),
		Cluster: sc.clusterStatus, Ready: sc.readyz, Admin: sc.admin,
		Metrics:     promhttp.HandlerFor(met.reg, promhttp.HandlerOpts{}),
		Observe:     met.observeRequest,
		ReadTimeout: cfg.Timeouts.Read, IdleTimeout: cfg.Timeouts.Idle,
		Node:         cfg.NodeID,
		SessionOwner: sessionOwner(sc.machine, cfg.NodeID),
		ObserveProxy: met.observeProxy,
		WriteTimeout: cfg.Timeouts.Write, CheckpointTimeout: cfg.Timeouts.Checkpoint,
	})
	if err != nil {
		return nil, err
	}
	if err := sc.listen(); err != nil {
		return nil, err
	}
	if err := sc.formCluster(ctx); err != nil {
		return nil, err
	}

	// The MySQL driver logs through a package-level logger; route it into ours.
	_ = gomysql.SetLogger(driverLogger{log.With("component", "mysql-driver")})
	sc.sinks, sc.closers, err = openSinks(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	pingers := map[string]pinger{}
	for name, s := range sc.sinks {
		if p, ok := s.(pinger); ok {
			pingers[name] = p
		}
	}
	sc.ready.Store(newReadiness(func() string { return sc.node.Status().LeaderID }, pingers, cfg.Timeouts.Ready, 0))
	sc.coord, err = twopc.NewCoordinator(twopc.Config{
		Node: cfg.NodeID, Journal: met.journal(sc.journal), Machine: sc.machine, Sinks: met.wrapSinks(sc.sinks),
		IsLeader: sc.node.IsLeader, Lease: func() bool { return sc.node.HasLease(nodeLease) },
		NodeAlive:         func(id string) bool { return !sc.node.PeerDown(id) },
		MaxRecordsPerCall: cfg.Limits.MaxRecordsPerCall,
		Timeouts: twopc.Timeouts{Write: cfg.Timeouts.Write, Checkpoint: cfg.Timeouts.Checkpoint,
			Session: cfg.Timeouts.Session, Commit: cfg.Timeouts.Commit},
		Logger: log.With("component", "coordinator"), Metrics: met, Failpoint: failpoint,
		MaxSessions: cfg.Limits.MaxSessions, MaxWritersPerJob: cfg.Limits.MaxWritersPerJob,
		SessionIdleTimeout: cfg.Limits.SessionIdleTimeout,
	})
	if err != nil {
		return nil, err
	}
	met.registerResourceGauges(sc.coord, sc.sinks)
	checkpointTimeout := cfg.Timeouts.Checkpoint
	if checkpointTimeout == 0 {
		checkpointTimeout = twopc.DefaultTimeouts().Checkpoint
	}
	for _, w := range commitWindowWarnings(sc.sinks, checkpointTimeout) {
		log.Warn(w)
	}
	// Before serving: finish what the journal decided. Fencing what a dead
	// process left open is per writer and runs in the background (Run),
	// so start-up does not scale with idle writers; a session open fences
	// its own writer first.
	sc.coord.RecoverDecided(ctx)
	for name, j := range cfg.Jobs {
		if _, err := sc.coord.PutJob(ctx, twopc.JobSpec{Name: name, Commit: j.Commit, Sinks: j.Sinks, Guarantee: j.Guarantee}); err != nil {
			return nil, fmt.Errorf("job %s: %w", name, err)
		}
	}
	runCtx, cancelRun := context.WithCancel(context.Background())
	sc.cancel = cancelRun
	go func() {
		defer close(sc.runDone)
		sc.coord.Run(runCtx)
	}()

	sc.svc.c.Store(sc.coord)
	log.Info("txsink ready", "http", sc.httpAddr, "tls", cfg.TLSCertFile != "", "socket", cfg.Socket, "node", cfg.NodeID,
		"data_dir", cfg.DataDir, "api_addr", sc.apiAddr)
	return sc, nil
}

// listen opens the TCP listener (TLS when configured), the Unix socket and
// the optional pprof listener, and serves the API on the first two.
func (sc *sidecar) listen() error {
	cfg, log := sc.cfg, sc.log
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("http: %w", err)
	}
	sc.lns = append(sc.lns, ln)
	sc.httpAddr = ln.Addr().String()
	if ln, err = tlsListener(ln, cfg); err != nil {
		return err
	}
	sc.lns[len(sc.lns)-1] = ln
	// Set before serving: GET /v1/cluster reports it.
	sc.apiAddr = cfg.advertisedAPI(sc.httpAddr)
	if cfg.Socket != "off" {
		uln, err := api.ListenUnix(cfg.Socket)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		sc.lns = append(sc.lns, uln)
	}
	for _, l := range sc.lns {
		go func() {
			if err := sc.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("serve", "addr", l.Addr().String(), "err", err)
			}
		}()
	}
	if addr := os.Getenv("TXSINK_PPROF_ADDR"); addr != "" {
		// Opt-in profiling on its own listener, never on the API's.
		pln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("TXSINK_PPROF_ADDR: %w", err)
		}
		sc.lns = append(sc.lns, pln)
		go func() { _ = http.Serve(pln, pprofMux()) }()
		log.Info("pprof listening", "addr", pln.Addr().String())
	}
	return nil
}

func (sc *sidecar) clusterStatus(ctx context.Context) (api.ClusterStatus, error) {
	out := sc.admin.status(ctx, sc.apiAddr)
	if c := sc.svc.c.Load(); c != nil {
		// Sinks are listed once start-up opened them all.
		out.Sinks = sinkStatuses(sc.cfg, sc.sinks)
	}
	return out, nil
}

// sinkStatuses lists the sinks sorted by name, with the Kafka transaction
// timeout each one actually uses (asked from the broker when not set).
func sinkStatuses(cfg Config, sinks map[string]twopc.Sink) []api.SinkStatus {
	out := make([]api.SinkStatus, 0, len(sinks))
	for name, s := range sinks {
		st := api.SinkStatus{Name: name, Kind: cfg.Sinks[name].Kind}
		if t, ok := s.(interface{ TransactionTimeout() time.Duration }); ok {
			st.TransactionTimeoutSeconds = t.TransactionTimeout().Seconds()
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b api.SinkStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// readyz: start-up is done, the journal has a leader and every sink
// answers (see readiness).
func (sc *sidecar) readyz(ctx context.Context) error {
	r := sc.ready.Load()
	if r == nil || sc.svc.c.Load() == nil {
		return errors.New("starting (joining the cluster, opening the sinks or recovering)")
	}
	return r.check(ctx)
}

// close stops gracefully: stop taking calls, abort open branches, finish
// background commits, close the journal (handing over leadership when there
// are other voters) and the sinks.
func (sc *sidecar) close() {
	ctx, cancel := context.WithTimeout(context.Background(), sc.cfg.ShutdownTimeout)
	defer cancel()
	if sc.srv != nil {
		_ = sc.srv.Shutdown(ctx)
	}
	for _, l := range sc.lns {
		_ = l.Close()
	}
	if sc.coord != nil {
		sc.coord.Close()
	}
	if sc.cancel != nil {
		sc.cancel()
		<-sc.runDone
	}
	sc.leave()
	if sc.peers != nil {
		sc.peers.close()
	}
	if sc.node != nil {
		if err := sc.node.Close(); err != nil {
			sc.log.Warn("journal close", "err", err)
		}
	}
	for _, c := range sc.closers {
		c()
	}
}

// driverLogger adapts slog to go-sql-driver/mysql's Logger.
type driverLogger struct{ l *slog.Logger }

func (d driverLogger) Print(v ...any) { d.l.Warn(strings.TrimSpace(fmt.Sprint(v...))) }

func pprofMux() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("/debug/pprof/", pprof.Index)
	m.HandleFunc("/debug/pprof/profile", pprof.Profile)
	m.HandleFunc("/debug/pprof/trace", pprof.Trace)
	m.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	return m
}

// commitWindowWarnings names the Kafka sinks whose commit window (see
// kafka.Sink.CommitWindow) is shorter than a checkpoint call may take: a
// journaled branch could then be aborted by the broker before its commit
// is even tried, which is data loss. Raise the transaction timeout (the
// broker's transaction.max.timeout.ms) or lower expire_share.
func commitWindowWarnings(sinks map[string]twopc.Sink, checkpointTimeout time.Duration) []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(sinks)) {
		w, ok := sinks[name].(interface{ CommitWindow() time.Duration })
		if ok && w.CommitWindow() < checkpointTimeout {
			out = append(out, fmt.Sprintf("sink %s: a journaled Kafka transaction may have only %s left before the broker "+
				"aborts it, less than the checkpoint timeout %s; raise transaction_timeout (and the broker's "+
				"transaction.max.timeout.ms) or lower expire_share", name, w.CommitWindow(), checkpointTimeout))
		}
	}
	return out
}

// raftConfig is the journal's configuration, with peers authenticated by
// the cluster key or the Raft TLS files. Without join the node bootstraps
// itself as a single voter when its dir is empty; with join it starts
// empty and waits to be added or bootstraps together with the others
// (cluster.go). On a dir with state neither happens.
func (c *Config) raftConfig() raftlog.Config {
	rcfg := raftlog.DefaultConfig()
	rcfg.NodeID, rcfg.Dir, rcfg.BindAddr = c.NodeID, filepath.Join(c.DataDir, "raft"), c.RaftAddr
	rcfg.Bootstrap = strings.TrimSpace(c.Join) == ""
	rcfg.AdvertiseAddr = c.AdvertiseRaft
	rcfg.ClusterKeyFile = c.ClusterKeyFile
	rcfg.TLSCertFile, rcfg.TLSKeyFile, rcfg.TLSCAFile = c.RaftTLSCertFile, c.RaftTLSKeyFile, c.RaftTLSCAFile
	return rcfg
}
