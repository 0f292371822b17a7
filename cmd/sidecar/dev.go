package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
)

// defaultDevDSN is the local MariaDB/MySQL server's socket, as root.
const defaultDevDSN = "root@unix(/run/mysqld/mysqld.sock)/"

// devStatements are the dev db sink's statements: insert_event
// (docs/DESIGN.md §6) and upsert_pv, the page-view count of
// examples/pageviews-*. upsert_pv is deliberately not idempotent: a
// duplicate commit would show in the totals.
var devStatements = map[string]string{
	"insert_event": "INSERT INTO events(k, v) VALUES (?, ?)",
	"upsert_pv":    "INSERT INTO pv(app, views) VALUES (?, ?) ON DUPLICATE KEY UPDATE views = views + VALUES(views)",
}

// runDev starts a self-contained single node: a Kafka-protocol broker
// (kfake, persisted under <data-dir>/kafka) in a process of its own that
// survives a kill of the sidecar, the "events" Kafka sink, and the "db"
// MySQL sink when a server answers. A clean stop (Ctrl-C) stops the sidecar
// first, then the broker; --stop-broker stops a broker left running.
func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("sidecar dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bindCommon(fs, &cfg)
	kafkaAddr := fs.String("kafka-addr", "127.0.0.1:9092", "address of the dev Kafka-protocol broker (loopback only) [TXSINK_KAFKA_ADDR]")
	mysqlDSN := fs.String("mysql-dsn", "", `MySQL DSN for the "db" sink (default: the local server's socket if it answers; "off" disables) [TXSINK_MYSQL_DSN]`)
	logFormat := fs.String("log-format", "text", "text or json [TXSINK_LOG_FORMAT]")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error [TXSINK_LOG_LEVEL]")
	stopBroker := fs.Bool("stop-broker", false, "stop the Kafka broker of --data-dir left running by a killed sidecar, then exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := applyEnv(fs); err != nil {
		return err
	}
	cfg.Log.Format, cfg.Log.Level = *logFormat, *logLevel
	log := newLogger(stderr, cfg.Log.Format, cfg.Log.Level)

	host, portStr, err := net.SplitHostPort(*kafkaAddr)
	if err != nil || (host != "127.0.0.1" && host != "localhost") {
		return fmt.Errorf("--kafka-addr %q: want 127.0.0.1:<port> (the dev broker listens on loopback only)", *kafkaAddr)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return fmt.Errorf("--kafka-addr %q: bad port", *kafkaAddr)
	}
	kdir := filepath.Join(cfg.DataDir, "kafka")
	if *stopBroker {
		sock := cfg.Socket
		if sock == "" {
			sock = filepath.Join(cfg.DataDir, "sidecar.sock")
		}
		return stopDevBroker(ctx, stdout, kdir, sock)
	}
	if err := os.MkdirAll(kdir, 0o750); err != nil {
		return err
	}
	broker, err := ensureDevBroker(ctx, log, kdir, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return err
	}
	// Registered before the sidecar starts, so it runs after sc.close: the
	// sidecar ends its branches while the broker still answers. A broker
	// reused from an earlier sidecar is left alone if this one fails to
	// start (another sidecar may be using it); a clean stop stops it.
	started := false
	defer func() {
		if !started && !broker.started {
			return
		}
		log.Info("stopping the Kafka broker", "pid", broker.PID)
		if err := broker.stop(context.Background()); err != nil {
			log.Error("the Kafka broker did not stop; stop it with "+stopBrokerCommand(os.Args[0], cfg.DataDir), "err", err)
		}
	}()
	brokers := []string{broker.Addr}
	cfg.Sinks = map[string]SinkConfig{
		// CreateTopics: kfake persists auto-created topics only on a clean
		// stop; should the broker itself be killed, their committed records
		// would be lost. Topics made by CreateTopics are persisted.
		"events": {Kind: "kafka", Brokers: brokers, DefaultTopic: "events", Topics: []string{"*"}, CreateTopics: true},
	}
	mysqlNote := "not configured (no server answered; pass --mysql-dsn)"
	if *mysqlDSN != "off" {
		dsn := *mysqlDSN
		if dsn == "" {
			dsn = defaultDevDSN
		}
		dbDSN, err := prepareDevDB(ctx, dsn)
		if err != nil && *mysqlDSN != "" {
			// A server named explicitly is awaited like any sink's
			// (sink_wait): it may be restarting, e.g. in make chaos.
			dbDSN, err = waitDevDB(ctx, log, dsn, cfg.SinkWait, err)
		}
		switch {
		case err == nil:
			cfg.Sinks["db"] = SinkConfig{Kind: "mysql", DSN: dbDSN, Statements: devStatements}
			mysqlNote = `sink "db": database txsink_dev, tables events and pv, statements insert_event and upsert_pv`
		case *mysqlDSN != "":
			return fmt.Errorf("--mysql-dsn: %w", err)
		default:
			log.Info("no local MySQL server answered; running without the db sink", "dsn", dsn, "err", err)
		}
	}
	if err := cfg.Finish(); err != nil {
		return err
	}
	sc, err := startSidecar(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer sc.close()
	started = true
	printBanner(stdout, bannerInfo{httpAddr: sc.httpAddr, socket: cfg.Socket, broker: broker.Addr, brokerPID: broker.PID,
		dataDir: cfg.DataDir, mysqlNote: mysqlNote, withDB: cfg.Sinks["db"].Kind != "", self: os.Args[0]})
	<-ctx.Done()
	log.Info("stopping")
	return nil
}

// waitDevDB retries prepareDevDB every second until it succeeds, wait
// has passed or ctx ends; first is the first attempt's error.
func waitDevDB(ctx context.Context, log *slog.Logger, dsn string, wait time.Duration, first error) (string, error) {
	log.Warn("MySQL server not ready; waiting for it (sink_wait)", "wait", wait, "err", first)
	deadline := time.Now().Add(wait)
	for {
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(time.Second):
		}
		dbDSN, err := prepareDevDB(ctx, dsn)
		if err == nil || time.Now().After(deadline) {
			return dbDSN, err
		}
	}
}

// prepareDevDB creates database txsink_dev and its tables (events, pv) if
// missing and returns the DSN of that database.
func prepareDevDB(ctx context.Context, dsn string) (string, error) {
	c, err := gomysql.ParseDSN(dsn)
	if err != nil {
		return "", err
	}
	c.DBName = ""
	c.Timeout = 2 * time.Second
	db, err := sql.Open("mysql", c.FormatDSN())
	if err != nil {
		return "", err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, q := range []string{
		"CREATE DATABASE IF NOT EXISTS txsink_dev",
		"CREATE TABLE IF NOT EXISTS txsink_dev.events(id BIGINT AUTO_INCREMENT PRIMARY KEY, k VARCHAR(255), v TEXT)",
		"CREATE TABLE IF NOT EXISTS txsink_dev.pv(app VARCHAR(64) PRIMARY KEY, views BIGINT NOT NULL)",
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return "", err
		}
	}
	c.DBName = "txsink_dev"
	return c.FormatDSN(), nil
}

// stopDevBroker is --stop-broker: it stops the running broker of kdir
// cleanly, if there is one. It refuses while a sidecar still answers on the
// data dir's socket: that sidecar would lose its broker (Ctrl-C of it stops
// both in the right order).
func stopDevBroker(ctx context.Context, stdout io.Writer, kdir, socket string) error {
	if c, err := net.DialTimeout("unix", socket, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("a sidecar is still running on %s (it answers on %s); stop it first (Ctrl-C or SIGTERM stops it and then its broker)",
			filepath.Dir(kdir), socket)
	}
	b, ok, err := findDevBroker(ctx, kdir)
	if err != nil {
		return err
	}
	if !ok {
		fmt.Fprintf(stdout, "no Kafka broker is running for the data dir %s\n", filepath.Dir(kdir))
		return nil
	}
	if err := b.stop(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "stopped the Kafka broker (pid %d, %s)\n", b.PID, b.Addr)
	return nil
}

// bannerInfo is what printBanner shows.
type bannerInfo struct {
	httpAddr, socket, broker, dataDir, mysqlNote string
	// self is the binary as it was invoked (os.Args[0], e.g. bin/sidecar
	// under make run), so the printed stop command runs when pasted.
	self      string
	brokerPID int
	withDB    bool
}

// stopBrokerCommand is the command line that stops a dev broker left
// running in dataDir, for the binary invoked as self.
func stopBrokerCommand(self, dataDir string) string {
	return self + " dev --stop-broker --data-dir " + dataDir
}

func printBanner(w io.Writer, bi bannerInfo) {
	fmt.Fprintf(w, `
txsink dev sidecar is ready (single node, data in the --data-dir).
  HTTP API   http://%[1]s   and Unix socket %[2]s
  Kafka      %[3]s (kfake broker); sink "events", default topic events, any topic allowed
  MySQL      %[4]s

The Kafka broker runs as pid %[5]d, a process of its own: it survives a kill of the sidecar,
and a restarted "sidecar dev" on the same --data-dir reuses it. Ctrl-C stops the sidecar, then
the broker. Stop a broker left running by a killed sidecar with:
  %[6]s

Try it (use the epoch the session call returns):
  curl -X PUT %[1]s/v1/jobs/demo -d '{"commit":"auto"}'
  curl -X POST %[1]s/v1/jobs/demo/writers/0/session
  curl -X POST '%[1]s/v1/jobs/demo/writers/0/records?epoch=1' -H 'Content-Type: application/x-ndjson' \
       --data-binary $'{"sink":"events","key":"k1","value":"hello"}\n{"sink":"events","key":"k2","value":{"n":2}}\n'
  curl -X POST '%[1]s/v1/jobs/demo/writers/0/checkpoints/1?epoch=1' -d '{"state":"b2Zmc2V0PTI="}'
  kcat -C -b %[3]s -t events -X isolation.level=read_committed -e
`, bi.httpAddr, bi.socket, bi.broker, bi.mysqlNote, bi.brokerPID, stopBrokerCommand(bi.self, bi.dataDir))
	if bi.withDB {
		fmt.Fprintf(w, `  curl -X POST '%[1]s/v1/jobs/demo/writers/0/records?epoch=1' -H 'Content-Type: application/x-ndjson' \
       --data-binary $'{"sink":"db","stmt":"insert_event","args":["k1","hello"]}\n'
  curl -X POST '%[1]s/v1/jobs/demo/writers/0/checkpoints/2?epoch=1' -d '{}'
  mariadb txsink_dev -e 'SELECT * FROM events'
`, bi.httpAddr)
	}
	fmt.Fprintln(w)
}
