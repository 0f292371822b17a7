package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/twmb/franz-go/pkg/kfake"
)

// defaultDevDSN is the local MariaDB/MySQL server's socket, as root.
const defaultDevDSN = "root@unix(/run/mysqld/mysqld.sock)/"

// devStatements are the dev db sink's statements: insert_event (DESIGN.md
// §6) and upsert_pv, the page-view count of examples/pageviews-* (DESIGN.md
// §4's MySQL record). upsert_pv is deliberately not idempotent: a duplicate
// commit would show in the totals.
var devStatements = map[string]string{
	"insert_event": "INSERT INTO events(k, v) VALUES (?, ?)",
	"upsert_pv":    "INSERT INTO pv(app, views) VALUES (?, ?) ON DUPLICATE KEY UPDATE views = views + VALUES(views)",
}

// runDev starts a self-contained single node: an embedded Kafka-protocol
// broker (kfake, persisted under <data-dir>/kafka), the "events" Kafka sink,
// and the "db" MySQL sink when a server answers.
func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("sidecar dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bindCommon(fs, &cfg)
	kafkaAddr := fs.String("kafka-addr", "127.0.0.1:9092", "address of the embedded Kafka-protocol broker (loopback only) [TXSINK_KAFKA_ADDR]")
	mysqlDSN := fs.String("mysql-dsn", "", `MySQL DSN for the "db" sink (default: the local server's socket if it answers; "off" disables) [TXSINK_MYSQL_DSN]`)
	logFormat := fs.String("log-format", "text", "text or json [TXSINK_LOG_FORMAT]")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error [TXSINK_LOG_LEVEL]")
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
		return fmt.Errorf("--kafka-addr %q: want 127.0.0.1:<port> (the embedded broker listens on loopback only)", *kafkaAddr)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return fmt.Errorf("--kafka-addr %q: bad port", *kafkaAddr)
	}
	kdir := filepath.Join(cfg.DataDir, "kafka")
	if err := os.MkdirAll(kdir, 0o750); err != nil {
		return err
	}
	broker, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.DataDir(kdir), kfake.SyncWrites(),
		kfake.AllowAutoTopicCreation(), kfake.SeedTopics(1, "events"))
	if err != nil {
		return fmt.Errorf("embedded broker on %s: %w", *kafkaAddr, err)
	}
	defer broker.Close()
	brokers := broker.ListenAddrs()
	cfg.Sinks = map[string]SinkConfig{
		// CreateTopics: kfake persists auto-created topics only on a clean
		// stop; a kill -9 of this process (and so of the broker) would lose
		// their committed records. Topics made by CreateTopics are persisted.
		"events": {Kind: "kafka", Brokers: brokers, DefaultTopic: "events", Topics: []string{"*"}, CreateTopics: true},
	}
	mysqlNote := "not configured (no server answered; pass --mysql-dsn)"
	if *mysqlDSN != "off" {
		dsn := *mysqlDSN
		if dsn == "" {
			dsn = defaultDevDSN
		}
		dbDSN, err := prepareDevDB(ctx, dsn)
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
	printBanner(stdout, sc.httpAddr, cfg.Socket, brokers[0], mysqlNote, cfg.Sinks["db"].Kind != "")
	<-ctx.Done()
	log.Info("stopping")
	return nil
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

func printBanner(w io.Writer, httpAddr, socket, broker, mysqlNote string, withDB bool) {
	fmt.Fprintf(w, `
txsink dev sidecar is ready (single node, data in the --data-dir).
  HTTP API   http://%[1]s   and Unix socket %[2]s
  Kafka      %[3]s (embedded kfake broker); sink "events", default topic events, any topic allowed
  MySQL      %[4]s

Try it (use the epoch the session call returns):
  curl -X PUT %[1]s/v1/jobs/demo -d '{"commit":"auto"}'
  curl -X POST %[1]s/v1/jobs/demo/writers/0/session
  curl -X POST '%[1]s/v1/jobs/demo/writers/0/records?epoch=1' -H 'Content-Type: application/x-ndjson' \
       --data-binary $'{"sink":"events","key":"k1","value":"hello"}\n{"sink":"events","key":"k2","value":{"n":2}}\n'
  curl -X POST '%[1]s/v1/jobs/demo/writers/0/checkpoints/1?epoch=1' -d '{"state":"b2Zmc2V0PTI="}'
  kcat -C -b %[3]s -t events -X isolation.level=read_committed -e
`, httpAddr, socket, broker, mysqlNote)
	if withDB {
		fmt.Fprintf(w, `  curl -X POST '%[1]s/v1/jobs/demo/writers/0/records?epoch=1' -H 'Content-Type: application/x-ndjson' \
       --data-binary $'{"sink":"db","stmt":"insert_event","args":["k1","hello"]}\n'
  curl -X POST '%[1]s/v1/jobs/demo/writers/0/checkpoints/2?epoch=1' -d '{}'
  mariadb txsink_dev -e 'SELECT * FROM events'
`, httpAddr)
	}
	fmt.Fprintln(w)
}
