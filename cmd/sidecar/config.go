package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/txsink/txsink/twopc"
)

// Config is the sidecar's configuration file (YAML, strict: an unknown key
// is an error). Flags and TXSINK_* environment variables of the same names
// override the file: flag > environment > file > default.
type Config struct {
	NodeID   string `yaml:"node_id"`
	DataDir  string `yaml:"data_dir"`
	HTTPAddr string `yaml:"http_addr"`
	// Socket is the Unix socket path; default <data_dir>/sidecar.sock; "off" disables it.
	Socket   string `yaml:"socket"`
	RaftAddr string `yaml:"raft_addr"`
	// Cluster forming (cluster.go, docs/DESIGN.md §5): Join lists the HTTP
	// API addresses of members (comma separated, host:port or URLs);
	// BootstrapExpect N makes the first N voters that find each other
	// through Join bootstrap together; Voter false joins as a non-voter;
	// AdvertiseHTTP and AdvertiseRaft are the addresses other nodes use
	// (default: derived from http_addr and raft_addr; AdvertiseRaft may be
	// a DNS name, resolved by peers at every dial); JoinTimeout bounds
	// the start-up of a node that joins or forms a cluster.
	Join            string        `yaml:"join"`
	BootstrapExpect int           `yaml:"bootstrap_expect"`
	Voter           bool          `yaml:"voter"`
	AdvertiseHTTP   string        `yaml:"advertise_http"`
	AdvertiseRaft   string        `yaml:"advertise_raft"`
	JoinTimeout     time.Duration `yaml:"join_timeout"`
	// ClusterKeyFile (a shared secret, at least 32 bytes, mode 0600, or
	// 0640/0440 with a warning for a group such as Kubernetes' fsGroup) or the
	// RaftTLS* files (PEM; all three) authenticate raft peers. With neither
	// the node is a single node that accepts no raft connection.
	ClusterKeyFile  string `yaml:"cluster_key_file"`
	RaftTLSCertFile string `yaml:"raft_tls_cert_file"`
	RaftTLSKeyFile  string `yaml:"raft_tls_key_file"`
	RaftTLSCAFile   string `yaml:"raft_tls_ca_file"`
	// TokenFile holds the bearer token every /v1 call must carry. It must
	// not be readable by others (mode 0600 or 0640/0440 for a group).
	// Required when http_addr is not a loopback address, unless
	// InsecureNoToken.
	TokenFile string `yaml:"token_file"`
	// InsecureNoToken allows a non-loopback http_addr without a token.
	InsecureNoToken bool `yaml:"insecure_no_token"`
	// TLSCertFile and TLSKeyFile (PEM), set together, serve the TCP
	// listener over TLS. The Unix socket stays plain.
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
	// TLSCAFile (PEM) is what other nodes' API certificates chain to, for
	// the calls nodes make to each other (join, forwarded proposals);
	// the system roots and the certificates in tls_cert_file are trusted
	// too.
	TLSCAFile string `yaml:"tls_ca_file"`
	// Timeouts bound every call (zero: the default).
	Timeouts TimeoutsConfig `yaml:"timeouts"`
	Log      struct {
		Format string `yaml:"format"` // text | json
		Level  string `yaml:"level"`  // debug | info | warn | error
	} `yaml:"log"`
	Limits struct {
		MaxBodyBytes      int64 `yaml:"max_body_bytes"`
		MaxRecordsPerCall int   `yaml:"max_records_per_call"`
		// MaxSessions, MaxWritersPerJob and SessionIdleTimeout: see
		// twopc.Config (0: default; negative: no limit / never).
		MaxSessions        int           `yaml:"max_sessions"`
		MaxWritersPerJob   int           `yaml:"max_writers_per_job"`
		SessionIdleTimeout time.Duration `yaml:"session_idle_timeout"`
		// GCPercent (0: 400) and MemoryLimitMiB (0: 85% of the
		// container's memory limit, none outside one; negative: none)
		// tune Go's garbage collector, unless GOGC or GOMEMLIMIT are set
		// (gc.go says why and what they measured).
		GCPercent      int   `yaml:"gc_percent"`
		MemoryLimitMiB int64 `yaml:"memory_limit_mib"`
	} `yaml:"limits"`
	// ShutdownTimeout bounds a graceful stop.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// SinkWait is how long start-up waits for a sink's server to answer
	// (MariaDB restarting after a crash) before it gives up.
	SinkWait time.Duration         `yaml:"sink_wait"`
	Sinks    map[string]SinkConfig `yaml:"sinks"`
	// Jobs are created (PUT) at start-up, for deployments that declare them.
	Jobs map[string]JobConfig `yaml:"jobs"`
}

// SinkConfig configures one sink; Kind selects which fields apply.
type SinkConfig struct {
	Kind string `yaml:"kind"` // kafka | mysql
	// Kafka
	Brokers               []string      `yaml:"brokers"`
	DefaultTopic          string        `yaml:"default_topic"`
	Topics                []string      `yaml:"topics"`
	TransactionalIDPrefix string        `yaml:"transactional_id_prefix"`
	TransactionTimeout    time.Duration `yaml:"transaction_timeout"`
	ExpireShare           float64       `yaml:"expire_share"`
	CreateTopics          bool          `yaml:"create_topics"`
	// IdleClientTimeout closes a free slot's Kafka client after this long
	// (0: 1m; negative: never).
	IdleClientTimeout time.Duration `yaml:"idle_client_timeout"`
	// DirectDeliveryTimeout bounds the retries of a Kafka record of a job
	// with guarantee at_least_once or none (0: 2m).
	DirectDeliveryTimeout time.Duration `yaml:"direct_delivery_timeout"`
	// MySQL
	DSN         string            `yaml:"dsn"`
	DSNFile     string            `yaml:"dsn_file"`
	Statements  map[string]string `yaml:"statements"`
	MarkerTable string            `yaml:"marker_table"`
	MaxConns    int               `yaml:"max_conns"`
	// ReservedConns is the MySQL sink's separate recovery pool (0: 4).
	ReservedConns int `yaml:"reserved_conns"`
	// ConnWait is how long a MySQL branch waits for a connection before
	// the call answers 429 backpressure (0: 1s).
	ConnWait time.Duration `yaml:"conn_wait"`
	// Both
	MaxInflight int `yaml:"max_inflight"`
}

// TimeoutsConfig bounds every call (README "Timeouts"). A checkpoint or
// commit whose decision is journaled answers 202 committing at its deadline.
type TimeoutsConfig struct {
	Write      time.Duration `yaml:"write"`      // a write call (default 30s)
	Checkpoint time.Duration `yaml:"checkpoint"` // a checkpoint call (default 60s)
	Session    time.Duration `yaml:"session"`    // opening a session (default 60s)
	Commit     time.Duration `yaml:"commit"`     // an external commit or abort (default 60s)
	Read       time.Duration `yaml:"read"`       // an HTTP request's headers and body to arrive (default 60s)
	Idle       time.Duration `yaml:"idle"`       // an idle keep-alive connection (default 2m)
	Ready      time.Duration `yaml:"ready"`      // one sink ping of /readyz (default 2s)
}

// JobConfig declares a job.
type JobConfig struct {
	Commit    twopc.Mode      `yaml:"commit"`
	Sinks     []string        `yaml:"sinks"`
	Guarantee twopc.Guarantee `yaml:"guarantee"` // "" = exactly_once
}

// DefaultConfig returns the defaults (docs/DESIGN.md §6).
func DefaultConfig() Config {
	c := Config{NodeID: "node1", DataDir: "./data", HTTPAddr: "127.0.0.1:8470", RaftAddr: "127.0.0.1:8471",
		ShutdownTimeout: 30 * time.Second, SinkWait: 5 * time.Minute, Voter: true, JoinTimeout: DefaultJoinTimeout}
	c.Log.Format, c.Log.Level = "text", "info"
	return c
}

// LoadConfig reads a YAML file strictly over the defaults.
func LoadConfig(path string) (Config, error) {
	c := DefaultConfig()
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// bindCommon binds the flags shared by run and dev to c.
func bindCommon(fs *flag.FlagSet, c *Config) {
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "directory for the journal, the socket and (dev) the Kafka broker's data [TXSINK_DATA_DIR]")
	fs.StringVar(&c.HTTPAddr, "http-addr", c.HTTPAddr, "TCP address of the HTTP API [TXSINK_HTTP_ADDR]")
	fs.StringVar(&c.Socket, "socket", c.Socket, `Unix socket of the HTTP API (default <data-dir>/sidecar.sock; "off" disables) [TXSINK_SOCKET]`)
	fs.StringVar(&c.NodeID, "node-id", c.NodeID, "this node's id in the journal [TXSINK_NODE_ID]")
	fs.StringVar(&c.RaftAddr, "raft-addr", c.RaftAddr, "TCP address of the Raft transport [TXSINK_RAFT_ADDR]")
	fs.StringVar(&c.ClusterKeyFile, "cluster-key-file", c.ClusterKeyFile, "file holding the secret that authenticates Raft peers [TXSINK_CLUSTER_KEY_FILE]")
	fs.StringVar(&c.RaftTLSCertFile, "raft-tls-cert-file", c.RaftTLSCertFile, "PEM certificate of this node for mutual TLS between Raft peers [TXSINK_RAFT_TLS_CERT_FILE]")
	fs.StringVar(&c.RaftTLSKeyFile, "raft-tls-key-file", c.RaftTLSKeyFile, "PEM private key of --raft-tls-cert-file [TXSINK_RAFT_TLS_KEY_FILE]")
	fs.StringVar(&c.RaftTLSCAFile, "raft-tls-ca-file", c.RaftTLSCAFile, "PEM CA certificate of the Raft peers [TXSINK_RAFT_TLS_CA_FILE]")
	fs.StringVar(&c.TokenFile, "token-file", c.TokenFile, "file holding the bearer token /v1 calls must carry [TXSINK_TOKEN_FILE]")
	fs.BoolVar(&c.InsecureNoToken, "insecure-no-token", c.InsecureNoToken, "allow a non-loopback --http-addr without --token-file [TXSINK_INSECURE_NO_TOKEN]")
	fs.StringVar(&c.TLSCertFile, "tls-cert-file", c.TLSCertFile, "PEM certificate: serve the TCP listener over TLS (with --tls-key-file) [TXSINK_TLS_CERT_FILE]")
	fs.StringVar(&c.TLSKeyFile, "tls-key-file", c.TLSKeyFile, "PEM private key of --tls-cert-file [TXSINK_TLS_KEY_FILE]")
}

// applyEnv overrides c from TXSINK_* variables for flags not set explicitly.
func applyEnv(fs *flag.FlagSet) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		env := "TXSINK_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

// Finish fills derived defaults and checks c.
func (c *Config) Finish() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir is required"))
	}
	if c.Socket == "" {
		c.Socket = filepath.Join(c.DataDir, "sidecar.sock")
	}
	if err := twopc.CheckName("node", c.NodeID); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.checkCluster())
	switch c.Log.Format {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log.format %q: want text or json", c.Log.Format))
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		errs = append(errs, err)
	}
	if c.SinkWait < 0 || c.ShutdownTimeout < 0 {
		return errors.New("sink_wait and shutdown_timeout must not be negative")
	}
	errs = append(errs, c.checkTimeouts(), c.checkExposure(), c.raftConfig().Validate())
	if c.Limits.GCPercent < 0 {
		errs = append(errs, fmt.Errorf("limits.gc_percent %d: want 0 (default 400) or more", c.Limits.GCPercent))
	}
	if m := c.Limits.MemoryLimitMiB; m > 0 && m < minMemoryLimitMiB {
		errs = append(errs, fmt.Errorf("limits.memory_limit_mib %d: want at least %d, 0 (default: 85%% of the container's limit) or negative (none)", m, minMemoryLimitMiB))
	}
	if len(c.Sinks) == 0 {
		errs = append(errs, errors.New("no sinks configured"))
	}
	names := make([]string, 0, len(c.Sinks))
	for n := range c.Sinks {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		s := c.Sinks[n]
		if err := twopc.CheckName("sink", n); err != nil {
			errs = append(errs, err)
		}
		switch s.Kind {
		case "kafka":
			if len(s.Brokers) == 0 {
				errs = append(errs, fmt.Errorf("sink %s: kafka needs brokers", n))
			}
			if len(s.Statements) > 0 || s.DSN != "" || s.DSNFile != "" {
				errs = append(errs, fmt.Errorf("sink %s: kafka sinks take no dsn or statements", n))
			}
		case "mysql":
			if s.DSN == "" && s.DSNFile == "" {
				errs = append(errs, fmt.Errorf("sink %s: mysql needs dsn or dsn_file", n))
			}
			if len(s.Brokers) > 0 || len(s.Topics) > 0 || s.DefaultTopic != "" {
				errs = append(errs, fmt.Errorf("sink %s: mysql sinks take no brokers or topics", n))
			}
		default:
			errs = append(errs, fmt.Errorf("sink %s: kind %q: want kafka or mysql", n, s.Kind))
		}
	}
	for n, j := range c.Jobs {
		if err := twopc.CheckName("job", n); err != nil {
			errs = append(errs, err)
		}
		for _, s := range j.Sinks {
			if _, ok := c.Sinks[s]; !ok {
				errs = append(errs, fmt.Errorf("job %s: unknown sink %q", n, s))
			}
		}
	}
	return errors.Join(errs...)
}
