package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/txsink/txsink/internal/mysqltest"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/twopc"
)

// mysqlEnv is the database side of env.
type mysqlEnv struct {
	mysqlDSN string // with the bench database selected; "" when there is none
	mysqlWhy string // why there is none
	db       *sql.DB
	// mysqldPid is the server's pid when it runs on this machine (from
	// @@pid_file), for the CPU accounting; 0 when unknown.
	mysqldPid int
}

const envBenchDSN = "TXSINK_BENCH_MYSQL_DSN"

// setupMySQL finds a server (TXSINK_BENCH_MYSQL_DSN, the shared private
// server of internal/mysqltest, or a private mariadbd started here), creates
// a database for this run and its tables. On failure mysqlDSN stays "" and
// mysqlWhy says why.
func (e *env) setupMySQL(ctx context.Context) {
	serverDSN, where, err := e.findMySQL(ctx)
	if err != nil {
		e.mysqlWhy = err.Error()
		logf("mysql: %v; the MySQL rows are skipped", err)
		return
	}
	cfg, _ := mysql.ParseDSN(serverDSN)
	var b [6]byte
	_, _ = crand.Read(b[:])
	name := "txsink_bench_" + hex.EncodeToString(b[:])
	root, err := sql.Open("mysql", cfg.FormatDSN())
	if err == nil {
		_, err = root.ExecContext(ctx, "CREATE DATABASE "+name)
	}
	if err != nil {
		e.mysqlWhy = "create database: " + err.Error()
		logf("mysql: %s; the MySQL rows are skipped", e.mysqlWhy)
		return
	}
	e.closers = append(e.closers, func() {
		defer root.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if c, err := root.Conn(ctx); err == nil {
			_, _ = c.ExecContext(ctx, "SET SESSION lock_wait_timeout = 10")
			if _, err := c.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name); err != nil {
				logf("mysql: drop database %s: %v", name, err)
			}
			c.Close()
		}
	})
	e.mysqldPid = localPid(ctx, root)
	cfg.DBName = name
	e.mysqlDSN = cfg.FormatDSN()
	e.db, err = sql.Open("mysql", e.mysqlDSN)
	if err != nil {
		e.mysqlDSN, e.mysqlWhy = "", err.Error()
		return
	}
	e.closers = append(e.closers, func() { e.db.Close() })
	for _, t := range []string{"bench", "bench_direct"} {
		if _, err := e.db.ExecContext(ctx, "CREATE TABLE "+t+` (
			id BIGINT AUTO_INCREMENT PRIMARY KEY,
			k VARCHAR(32) NOT NULL,
			v VARCHAR(200) NOT NULL) ENGINE=InnoDB`); err != nil {
			e.mysqlDSN, e.mysqlWhy = "", "create table: "+err.Error()
			logf("mysql: %s; the MySQL rows are skipped", e.mysqlWhy)
			return
		}
	}
	var version, logBin, syncBinlog string
	_ = e.db.QueryRowContext(ctx, "SELECT VERSION(), @@log_bin, @@sync_binlog").Scan(&version, &logBin, &syncBinlog)
	logf("mysql: %s (%s), database %s, log_bin=%s sync_binlog=%s", where, version, name, logBin, syncBinlog)
}

// findMySQL returns the DSN (no database) of a server that answers.
func (e *env) findMySQL(ctx context.Context) (dsn, where string, err error) {
	if dsn := os.Getenv(envBenchDSN); dsn != "" {
		cfg, err := mysql.ParseDSN(dsn)
		if err != nil {
			return "", "", fmt.Errorf("%s: %w", envBenchDSN, err)
		}
		cfg.DBName = ""
		if err := mysqltest.Ping(ctx, cfg.FormatDSN(), 10*time.Second); err != nil {
			return "", "", fmt.Errorf("%s: %w", envBenchDSN, err)
		}
		return cfg.FormatDSN(), envBenchDSN, nil
	}
	// The shared private server of internal/mysqltest, if it runs.
	cache := mysqltest.CacheDir()
	if dsn := socketDSN(filepath.Join(cache, "mysqld.sock")); mysqltest.Ping(ctx, dsn, time.Second) == nil {
		return dsn, "shared test server " + cache, nil
	}
	// A private server of our own, stopped at the end.
	server, installDB := findBinary("mariadbd", "mysqld"), findBinary("mariadb-install-db", "mysql_install_db")
	if server == "" || installDB == "" {
		return "", "", errors.New("no MariaDB: mariadbd/mariadb-install-db not found")
	}
	dir := filepath.Join(e.dir, "mariadb")
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	logf("mysql: starting a private mariadbd in %s", dir)
	inst := exec.CommandContext(ctx, installDB, "--no-defaults", "--datadir="+data, "--auth-root-authentication-method=normal")
	if os.Geteuid() == 0 {
		inst.Args = append(inst.Args, "--user=root")
	}
	if out, err := inst.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("%s: %v\n%s", installDB, err, out)
	}
	sock := filepath.Join(dir, "mysqld.sock")
	logPath := filepath.Join(dir, "mysqld.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return "", "", err
	}
	defer logFile.Close()
	cmd := exec.Command(server, "--no-defaults", "--datadir="+data, "--socket="+sock,
		"--pid-file="+filepath.Join(dir, "mysqld.pid"), "--skip-networking",
		"--log-bin="+filepath.Join(data, "binlog"), "--sync-binlog=1", "--server-id=1",
		"--innodb-buffer-pool-size=64M", "--max-connections=1000")
	if os.Geteuid() == 0 {
		cmd.Args = append(cmd.Args, "--user=root")
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return "", "", err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	e.closers = append(e.closers, func() { stopProcess(cmd, done, "mariadbd") })
	dsn = socketDSN(sock)
	deadline := time.Now().Add(90 * time.Second)
	for mysqltest.Ping(ctx, dsn, time.Second) != nil {
		select {
		case <-done:
			return "", "", fmt.Errorf("mariadbd exited; log:\n%s", tailFile(logPath))
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", "", fmt.Errorf("mariadbd did not answer on %s; log:\n%s", sock, tailFile(logPath))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return dsn, "private mariadbd " + dir, nil
}

func socketDSN(sock string) string {
	cfg := mysql.NewConfig()
	cfg.User, cfg.Net, cfg.Addr = "root", "unix", sock
	return cfg.FormatDSN()
}

func findBinary(names ...string) string {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
		for _, d := range []string{"/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"} {
			p := filepath.Join(d, n)
			if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
				return p
			}
		}
	}
	return ""
}

// mysqlCase: direct = one multi-row INSERT of batchSize rows per
// transaction; sidecar = batchSize db records per write call and a
// checkpoint after each.
//
// g (sidecar rows only) is the job's delivery guarantee (guarantees.go).
func mysqlCase(path, g string, writers int) *benchCase {
	c := &benchCase{name: caseName("mysql", path, g, 0, writers), kind: "mysql", path: path, guarantee: g, writers: writers}
	table := "bench"
	if path == "direct" {
		table = "bench_direct"
	}
	c.run = func(ctx context.Context, e *env, d time.Duration) (int64, time.Duration, error) {
		if _, err := e.db.ExecContext(ctx, "TRUNCATE TABLE "+table); err != nil {
			return 0, 0, err
		}
		if path == "direct" {
			return runWriters(ctx, c.name, writers, d, func(ctx context.Context, w int, end time.Time, n *atomic.Int64) (int64, error) {
				return mysqlDirectWriter(ctx, e, w, end, n)
			})
		}
		job := "bench-" + c.name
		if err := putJob(ctx, e.unix, job, []string{"db"}, g); err != nil {
			return 0, 0, err
		}
		wait := twopc.WaitCommitted
		if path == "async" {
			wait = twopc.WaitPrepared
		}
		return countXA(ctx, e, c, func() (int64, time.Duration, error) {
			return runWriters(ctx, c.name, writers, d, func(ctx context.Context, w int, end time.Time, n *atomic.Int64) (int64, error) {
				return mysqlSidecarWriter(ctx, e, job, w, end, n, wait)
			})
		})
	}
	c.verify = func(ctx context.Context, e *env, records int64) error {
		// wait=prepared rows: the last commits finish in the background
		// after the run, so the count may still be catching up; it must
		// reach exactly records within a few seconds and never pass it
		// (verifyTable).
		return errors.Join(verifyTable(ctx, e, c, table, records), checkXA(c, records/batchSize))
	}
	return c
}

func mysqlDirectWriter(ctx context.Context, e *env, w int, end time.Time, progress *atomic.Int64) (int64, error) {
	conn, err := e.db.Conn(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	q := "INSERT INTO bench_direct(k, v) VALUES " + strings.Repeat("(?, ?),", batchSize-1) + "(?, ?)"
	stmt, err := conn.PrepareContext(ctx, q)
	if err != nil {
		return 0, err
	}
	defer stmt.Close()
	args := make([]any, 2*batchSize)
	var committed int64
	prefix := strconv.Itoa(w) + ":"
	for time.Now().Before(end) {
		for i := range batchSize {
			args[2*i] = prefix + strconv.FormatInt(committed+int64(i), 10)
			args[2*i+1] = valueAt(w, committed+int64(i))
		}
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			return committed, err
		}
		if _, err := tx.StmtContext(ctx, stmt).ExecContext(ctx, args...); err != nil {
			tx.Rollback()
			return committed, err
		}
		if err := tx.Commit(); err != nil {
			return committed, err
		}
		committed += batchSize
		progress.Add(batchSize)
	}
	return committed, nil
}

// mysqlSidecarWriter writes and checkpoints batches of batchSize rows. With
// wait=prepared (the async rows) a checkpoint answers once its commit
// decision is durable (status committing) and the sidecar commits in the
// background while the app writes the next batch into a new branch: the
// pipelining an app gets when it needs durability of the decision but not
// visibility before it goes on. Too many checkpoints in flight answer 429,
// which the writer waits out and repeats.
func mysqlSidecarWriter(ctx context.Context, e *env, job string, w int, end time.Time, progress *atomic.Int64, wait twopc.Wait) (int64, error) {
	cl := e.unix
	writer := strconv.Itoa(w)
	sess, err := cl.OpenSession(ctx, job, writer, nil)
	if err != nil {
		return 0, fmt.Errorf("open session: %w", err)
	}
	var body bytes.Buffer
	var committed, seq int64
	for time.Now().Before(end) {
		body.Reset()
		for i := range batchSize {
			body.WriteString(`{"sink":"db","stmt":"ins","args":["`)
			body.WriteString(writer)
			body.WriteByte(':')
			body.WriteString(strconv.FormatInt(committed+int64(i), 10))
			body.WriteString(`","`)
			body.Write(valueAt(w, committed+int64(i)))
			body.WriteString("\"]}\n")
		}
		seq++
		if _, err := cl.WriteNDJSON(ctx, job, writer, sess.Epoch, client.Seq(seq), body.Bytes()); err != nil {
			return committed, errors.Join(fmt.Errorf("write: %w", err), e.sidecarAlive())
		}
		if err := checkpoint(ctx, e, cl, job, writer, sess.Epoch, seq, wait); err != nil {
			return committed, err
		}
		committed += batchSize
		progress.Add(batchSize)
	}
	return committed, nil
}

// runWriters runs writers goroutines until end, with a progress line on
// stderr every second; elapsed runs from the start until the last writer's
// final commit.
func runWriters(ctx context.Context, name string, writers int, d time.Duration,
	fn func(ctx context.Context, w int, end time.Time, progress *atomic.Int64) (int64, error)) (int64, time.Duration, error) {
	var progress atomic.Int64
	stop := showProgress(name, &progress)
	defer stop()
	start := time.Now()
	end := start.Add(d)
	counts := make([]int64, writers)
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() { counts[w], errs[w] = fn(ctx, w, end, &progress) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	var total int64
	for _, n := range counts {
		total += n
	}
	return total, elapsed, errors.Join(errs...)
}

func showProgress(name string, n *atomic.Int64) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				v := n.Load()
				logf("  %s: %d records so far (%s/s)", name, v, human(float64(v)/time.Since(start).Seconds()))
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// pool holds random alphanumerics (JSON-safe, about 6 bits of entropy a
// byte): values cut from it do not compress away, which a constant value
// would under the producers' default snappy compression.
var pool = func() []byte {
	r := rand.New(rand.NewPCG(1, 2))
	const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = alnum[r.IntN(len(alnum))]
	}
	return b
}()

// valueAt is the valueSize-byte value of writer w's record n; the same for
// the direct and the sidecar paths.
func valueAt(w int, n int64) []byte {
	o := (n*valueSize + int64(w)*7919) % int64(len(pool)-valueSize)
	return pool[o : o+valueSize : o+valueSize]
}

// localPid returns the pid of the server behind db when it runs on this
// machine: its @@pid_file names a process that is a mariadbd or mysqld.
func localPid(ctx context.Context, db *sql.DB) int {
	var f string
	if err := db.QueryRowContext(ctx, "SELECT @@pid_file").Scan(&f); err != nil {
		return 0
	}
	b, err := os.ReadFile(f)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if name := strings.TrimSpace(string(comm)); err != nil || (name != "mariadbd" && name != "mysqld") {
		return 0
	}
	return pid
}
