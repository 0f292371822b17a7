package mysql

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/txsink/txsink/twopc"
)

// Config configures a Sink.
type Config struct {
	// Name is the sink's configured name (twopc name rules).
	Name string
	// DSN is a go-sql-driver/mysql DSN, e.g. "user:pw@tcp(db:3306)/app".
	// interpolateParams and multiStatements are forced on: a write call's records
	// go to the server in one round trip (see DESIGN.md, "Writes").
	DSN string
	// DSNFile, if set, is a file holding the DSN (a secret); it wins over DSN.
	DSNFile string
	// Statements maps a statement name (what records name in "stmt") to SQL
	// with ? placeholders. No SQL ever comes from a client.
	Statements map[string]string
	// MaxInflight bounds the unresolved branches of one writer (0: 4). Each
	// open or prepared branch pins one connection: a session holding a
	// prepared XA branch cannot start another.
	MaxInflight int
	// MaxConns bounds the branches' connection pool (0: 64, well below
	// MariaDB's default max_connections of 151). Each open or prepared
	// branch pins one; a Begin that cannot get one within ConnWait fails
	// with twopc.ErrBackpressure (HTTP 429) instead of an error from the
	// server. Negative: unbounded.
	MaxConns int
	// ReservedConns is a separate pool for recovery (Resolve and Fence
	// from a new session), so recovery never waits behind writers
	// (0: 4).
	ReservedConns int
	// ConnWait is how long Begin waits for a free connection before it
	// answers backpressure (0: 1s).
	ConnWait time.Duration
	// MarkerTable is the table of marker rows (0: "txsink_xa_marker"),
	// created in the DSN's database if missing. The boot table is
	// MarkerTable + "_boot".
	MarkerTable string
	// Logger receives structured logs (nil: discard).
	Logger *slog.Logger
}

// DefaultConfig returns a Config with the defaults filled in.
func DefaultConfig() Config {
	return Config{MaxInflight: 4, MarkerTable: "txsink_xa_marker", MaxConns: 64, ReservedConns: 4, ConnWait: time.Second}
}

var tableRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,58}$`)

// Validate fills in defaults and checks the config.
func (c *Config) Validate() error {
	d := DefaultConfig()
	if c.MaxInflight == 0 {
		c.MaxInflight = d.MaxInflight
	}
	if c.MarkerTable == "" {
		c.MarkerTable = d.MarkerTable
	}
	if c.MaxConns == 0 {
		c.MaxConns = d.MaxConns
	}
	if c.ReservedConns == 0 {
		c.ReservedConns = d.ReservedConns
	}
	if c.ConnWait == 0 {
		c.ConnWait = d.ConnWait
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	var errs []error
	if err := twopc.CheckName("sink", c.Name); err != nil {
		errs = append(errs, err)
	}
	if c.DSN == "" && c.DSNFile == "" {
		errs = append(errs, errors.New("dsn or dsn_file is required"))
	}
	if c.MaxInflight < 1 || c.MaxInflight > 1<<16 {
		errs = append(errs, fmt.Errorf("max_inflight %d: want 1..65536", c.MaxInflight))
	}
	if c.ReservedConns < 1 {
		errs = append(errs, fmt.Errorf("reserved_conns %d: want at least 1", c.ReservedConns))
	}
	if c.ConnWait < 0 {
		errs = append(errs, fmt.Errorf("conn_wait %v: must not be negative", c.ConnWait))
	}
	if !tableRe.MatchString(c.MarkerTable) {
		errs = append(errs, fmt.Errorf("marker_table %q must match %s", c.MarkerTable, tableRe))
	}
	if len(c.Statements) == 0 {
		errs = append(errs, errors.New("statements: at least one is required"))
	}
	for name, q := range c.Statements {
		if name == "" || strings.TrimSpace(q) == "" {
			errs = append(errs, fmt.Errorf("statement %q: empty name or SQL", name))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("mysql sink %q: %w", c.Name, err)
	}
	return nil
}

func (c *Config) dsn() (string, error) {
	if c.DSNFile == "" {
		return c.DSN, nil
	}
	b, err := os.ReadFile(c.DSNFile)
	if err != nil {
		return "", fmt.Errorf("mysql sink %q: dsn_file: %w", c.Name, err)
	}
	return strings.TrimSpace(string(b)), nil
}
