package mysql

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"

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
	// MaxConns, if positive, bounds the connection pool. Leave it 0 unless
	// the server needs it: branches (writers × MaxInflight) plus one per
	// concurrent Resolve or Fence must fit, or calls wait for a connection.
	MaxConns int
	// MarkerTable is the table of marker rows (0: "txsink_xa_marker"),
	// created in the DSN's database if missing. The boot table is
	// MarkerTable + "_boot".
	MarkerTable string
	// Logger receives structured logs (nil: discard).
	Logger *slog.Logger
}

// DefaultConfig returns a Config with the defaults filled in.
func DefaultConfig() Config {
	return Config{MaxInflight: 4, MarkerTable: "txsink_xa_marker"}
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
