package kafka

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/txsink/txsink/twopc"
)

// Defaults applied by New to zero fields of Config.
const (
	DefaultTransactionalIDPrefix = "txsink"
	DefaultMaxInflight           = 4
	// DefaultIdleClientTimeout is how long a free slot keeps its client.
	DefaultIdleClientTimeout = time.Minute
	// FallbackTransactionTimeout is used when TransactionTimeout is zero
	// and the broker does not tell us its transaction.max.timeout.ms
	// (Kafka's default maximum).
	FallbackTransactionTimeout = 15 * time.Minute
	// DefaultExpireShare is the share of the transaction timeout after
	// which an open branch counts as expired.
	DefaultExpireShare = 0.5
	// DefaultDirectDeliveryTimeout bounds the retries of a record of a
	// direct branch (guarantee at_least_once or none).
	DefaultDirectDeliveryTimeout = 2 * time.Minute
)

// Config configures a Sink. The zero value of every field except Name,
// Brokers and one of DefaultTopic/Topics is useful.
type Config struct {
	// Name is the sink's configured name (twopc.ValidName).
	Name string
	// Brokers are the seed brokers, host:port.
	Brokers []string
	// DefaultTopic is used for records without a topic; it is always
	// allowed.
	DefaultTopic string
	// Topics is the allow-list of topics records may name; "*" allows any
	// topic. Empty means only DefaultTopic.
	Topics []string
	// TransactionalIDPrefix starts every transactional id:
	// <prefix>.<job>.<writer>.<slot>. Default "txsink".
	TransactionalIDPrefix string
	// MaxInflight is the number of transactional ids (slots) per writer,
	// which bounds its unresolved branches. Default 4.
	MaxInflight int
	// TransactionTimeout is requested for every transaction. Zero asks the
	// broker for transaction.max.timeout.ms (fallback 15m): a prepared
	// branch should live as long as the broker allows.
	TransactionTimeout time.Duration
	// ExpireShare is the share of the transaction timeout (0 < share < 1,
	// default 0.5) a branch may stay open, counted from its first Write.
	// Past it the branch is expired: Write and Prepare fail with
	// ErrExpired, so no checkpoint ever journals a transaction the broker
	// may abort before it is committed. The rest of the timeout is the
	// margin left for journaling and committing.
	ExpireShare float64
	// CreateTopics makes the sink create a topic with CreateTopics (the
	// broker's default partitions and replication) the first time a record
	// names it, instead of relying on the broker's auto-creation. For
	// clusters with auto.create.topics.enable=false, and for the dev
	// mode's kfake, which persists auto-created topics only on a clean
	// stop (a kill -9 of the broker would lose their committed records).
	CreateTopics bool
	// IdleClientTimeout closes a slot's cached client once the slot has
	// been free (no open or prepared branch) for this long, so idle
	// writers hold no goroutines, connections or buffers. The next branch
	// on the slot opens a new client, which runs InitProducerID at its
	// first produce (safe: the slot is free). Zero means
	// DefaultIdleClientTimeout; negative keeps clients until Close.
	IdleClientTimeout time.Duration
	// DirectDeliveryTimeout is how long the shared producer of direct
	// branches (jobs with guarantee at_least_once or none) retries a
	// record before failing it: at_least_once then fails the checkpoint
	// (the app replays), none counts the record as failed. Zero means
	// DefaultDirectDeliveryTimeout.
	DirectDeliveryTimeout time.Duration
	// Logger receives the sink's and franz-go's logs (nil: discard).
	Logger *slog.Logger
}

// DefaultConfig returns a Config with every default filled in.
func DefaultConfig() Config {
	return Config{
		TransactionalIDPrefix: DefaultTransactionalIDPrefix,
		MaxInflight:           DefaultMaxInflight,
		ExpireShare:           DefaultExpireShare,
		IdleClientTimeout:     DefaultIdleClientTimeout,
		DirectDeliveryTimeout: DefaultDirectDeliveryTimeout,
	}
}

// withDefaults fills zero fields.
func (c Config) withDefaults() Config {
	if c.TransactionalIDPrefix == "" {
		c.TransactionalIDPrefix = DefaultTransactionalIDPrefix
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = DefaultMaxInflight
	}
	if c.ExpireShare == 0 {
		c.ExpireShare = DefaultExpireShare
	}
	if c.IdleClientTimeout == 0 {
		c.IdleClientTimeout = DefaultIdleClientTimeout
	}
	if c.DirectDeliveryTimeout == 0 {
		c.DirectDeliveryTimeout = DefaultDirectDeliveryTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports every problem of c (zero fields that have defaults are
// fine). The error wraps twopc.ErrInvalid.
func (c Config) Validate() error {
	var errs []error
	if err := twopc.CheckName("sink", c.Name); err != nil {
		errs = append(errs, err)
	}
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("no brokers"))
	}
	if c.DefaultTopic != "" {
		if err := checkTopic(c.DefaultTopic); err != nil {
			errs = append(errs, fmt.Errorf("default topic: %w", err))
		}
	}
	for _, t := range c.Topics {
		if t == "*" {
			continue
		}
		if err := checkTopic(t); err != nil {
			errs = append(errs, fmt.Errorf("topics: %w", err))
		}
	}
	if c.DefaultTopic == "" && len(c.Topics) == 0 {
		errs = append(errs, errors.New("neither a default topic nor an allow-list of topics"))
	}
	if c.TransactionalIDPrefix != "" && !twopc.ValidName(c.TransactionalIDPrefix) {
		errs = append(errs, fmt.Errorf("transactional id prefix %q must be a valid name", c.TransactionalIDPrefix))
	}
	if c.MaxInflight < 0 || c.MaxInflight > 64 {
		errs = append(errs, fmt.Errorf("max inflight %d not in 1..64", c.MaxInflight))
	}
	if c.TransactionTimeout < 0 {
		errs = append(errs, fmt.Errorf("negative transaction timeout %v", c.TransactionTimeout))
	} else if c.TransactionTimeout > 0 && c.TransactionTimeout < time.Second {
		errs = append(errs, fmt.Errorf("transaction timeout %v below 1s", c.TransactionTimeout))
	}
	if c.ExpireShare < 0 || c.ExpireShare >= 1 {
		errs = append(errs, fmt.Errorf("expire share %v not in (0, 1)", c.ExpireShare))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: kafka sink %q: %w", twopc.ErrInvalid, c.Name, errors.Join(errs...))
}

// checkTopic applies Kafka's topic name rules.
func checkTopic(t string) error {
	if t == "" || len(t) > 249 || t == "." || t == ".." {
		return fmt.Errorf("invalid topic name %q", t)
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("invalid topic name %q: only [a-zA-Z0-9._-]", t)
		}
	}
	return nil
}
