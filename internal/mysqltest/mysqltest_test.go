package mysqltest_test

import (
	"context"
	"database/sql"
	"os"
	"testing"

	_ "github.com/go-sql-driver/mysql"

	"github.com/txsink/txsink/internal/mysqltest"
)

func query(t *testing.T, dsn, q string) string {
	t.Helper()
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var s string
	if err := db.QueryRowContext(context.Background(), q).Scan(&s); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return s
}

func TestDSN(t *testing.T) {
	dsn := mysqltest.DSN(t)
	if got := query(t, dsn, "SELECT DATABASE()"); len(got) < len("txsink_test_") {
		t.Fatalf("got database %q, want txsink_test_*", got)
	}
	if os.Getenv(mysqltest.EnvDSN) == "" {
		if got := query(t, dsn, "SELECT @@log_bin"); got != "1" {
			t.Fatalf("got log_bin %s, want 1", got)
		}
	}
}

func TestPrivateServerKill9Restart(t *testing.T) {
	s := mysqltest.PrivateServer(t)
	dsn := s.Database(t)
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (a INT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	s.Kill9()
	if err := db.PingContext(ctx); err == nil {
		t.Fatal("got ping ok after kill -9, want error")
	}
	s.Restart(t)
	if got := query(t, dsn, "SELECT COUNT(*) FROM t"); got != "1" {
		t.Fatalf("got %s rows after restart, want 1", got)
	}
}
