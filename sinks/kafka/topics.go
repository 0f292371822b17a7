package kafka

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/txsink/txsink/twopc"
)

// Kafka's default message.max.bytes, used when the broker does not say.
const defaultMaxMessageBytes = 1048588

// How long Validate trusts what it learnt about a topic: a topic that
// exists is re-read after topicTTL, or after topicRecheck when a record
// names a partition beyond the known count (partitions may have been
// added) or the topic did not exist yet (it may have been created since).
const (
	topicTTL     = time.Minute
	topicRecheck = time.Second
	topicTimeout = 5 * time.Second // bound of the metadata requests of Validate
)

// recordOverhead bounds what a record adds to its bytes in a batch of its
// own: the batch header (61 bytes) and the record's varints; each header
// adds two more length varints.
const (
	recordOverhead = 61 + 5 + 1 + 10 + 5 + 5 + 5 + 5
	headerOverhead = 10
)

// topicInfo is what Validate knows about a topic.
type topicInfo struct {
	parts    int32 // 0: the topic does not exist (yet); it will be created
	maxBytes int32 // max.message.bytes of the topic (or the broker's)
	at       time.Time
}

// topicCache holds topicInfo by topic name. Validate reads it for every
// record, so it is a sync.Map (read-mostly, no lock on the hot path) of
// immutable entries, and last remembers the entry read most recently: the
// records of a call mostly name one topic, and comparing a name is cheaper
// than hashing it. Only topics that passed topicAllowed are ever stored
// (checkRecord runs after it), which lets topicAllowed trust last too.
type topicCache struct {
	m    sync.Map // topic name → *topicEntry
	last atomic.Pointer[topicEntry]
}

type topicEntry struct {
	name string
	ti   topicInfo
}

func (c *topicCache) load(topic string) (topicInfo, bool) {
	if e := c.last.Load(); e != nil && e.name == topic {
		return e.ti, true
	}
	v, ok := c.m.Load(topic)
	if !ok {
		return topicInfo{}, false
	}
	e := v.(*topicEntry)
	c.last.Store(e)
	return e.ti, true
}

func (c *topicCache) store(topic string, ti topicInfo) {
	e := &topicEntry{name: topic, ti: ti}
	c.m.Store(topic, e)
	c.last.Store(e)
}

// known reports whether topic is the last one looked up, and so was
// allowed before.
func (c *topicCache) known(topic string) bool {
	e := c.last.Load()
	return e != nil && e.name == topic
}

// checkRecord refuses (ErrInvalid) a record the broker would refuse for
// good: one larger than the topic's max.message.bytes, or one for a
// partition the topic does not have. A topic that does not exist yet is
// allowed (auto-creation or create_topics makes it). If the broker cannot
// be asked, the record passes: the produce decides.
func (s *Sink) checkRecord(r *twopc.Record) error {
	ti := s.topicInfo(r.Topic, r.Partition)
	size := recordOverhead + len(r.KeyB64) + len(r.ValueB64)
	for k, v := range r.Headers {
		size += len(k) + len(v) + headerOverhead
	}
	if size > int(ti.maxBytes) {
		return fmt.Errorf("%w: kafka sink %q: record of about %d bytes is larger than topic %q takes (max.message.bytes %d)",
			twopc.ErrInvalid, s.cfg.Name, size, r.Topic, ti.maxBytes)
	}
	if r.Partition != nil && ti.parts > 0 && *r.Partition >= ti.parts {
		return fmt.Errorf("%w: kafka sink %q: topic %q has no partition %d (it has %d)",
			twopc.ErrInvalid, s.cfg.Name, r.Topic, *r.Partition, ti.parts)
	}
	return nil
}

// topicInfo returns the cached info of topic, asking the broker when it is
// unknown or stale.
func (s *Sink) topicInfo(topic string, partition *int32) topicInfo {
	ti, ok := s.topics.load(topic)
	age := time.Since(ti.at)
	recheck := ti.parts == 0 || (partition != nil && *partition >= ti.parts)
	if ok && age < topicTTL && (!recheck || age < topicRecheck) {
		return ti
	}
	ctx, cancel := context.WithTimeout(s.ctx, topicTimeout)
	defer cancel()
	fresh, err := s.fetchTopic(ctx, topic)
	if err != nil {
		s.log.Debug("cannot read topic metadata; the produce will decide", "topic", topic, "err", err)
		if ok {
			return ti
		}
		return topicInfo{maxBytes: s.maxMessage}
	}
	s.topics.store(topic, fresh)
	return fresh
}

// fetchTopic reads a topic's partition count and max.message.bytes.
func (s *Sink) fetchTopic(ctx context.Context, topic string) (topicInfo, error) {
	ti := topicInfo{maxBytes: s.maxMessage, at: time.Now()}
	// A raw metadata request: kadm's ListTopics retries an unknown topic
	// until its context ends, and Validate must not wait for a topic that
	// is only going to be created.
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	req.AllowAutoTopicCreation = false
	resp, err := req.RequestWith(ctx, s.admin)
	if err != nil {
		return ti, err
	}
	if len(resp.Topics) != 1 {
		return ti, fmt.Errorf("metadata for %q: %d topics in the answer", topic, len(resp.Topics))
	}
	switch err := kerr.ErrorForCode(resp.Topics[0].ErrorCode); {
	case errors.Is(err, kerr.UnknownTopicOrPartition):
		return ti, nil
	case err != nil:
		return ti, err
	}
	ti.parts = int32(len(resp.Topics[0].Partitions))
	adm := kadm.NewClient(s.admin)
	rcs, err := adm.DescribeTopicConfigs(ctx, topic)
	if err != nil {
		return ti, err
	}
	for _, rc := range rcs {
		if rc.Err != nil {
			return ti, rc.Err
		}
		for _, c := range rc.Configs {
			// Only the topic's own override: otherwise the broker's
			// message.max.bytes applies (kfake reports its static
			// default here even when the broker's differs).
			if c.Key == "max.message.bytes" && c.Value != nil && c.Source == kmsg.ConfigSourceDynamicTopicConfig {
				if n, err := strconv.ParseInt(*c.Value, 10, 32); err == nil && n >= 512 {
					ti.maxBytes = int32(n)
				}
			}
		}
	}
	return ti, nil
}

// batchMaxBytes is franz-go's per-topic batch limit: what the topic takes,
// so that franz-go and the broker agree on what is too large.
func (s *Sink) batchMaxBytes(topic string) int32 {
	if ti, ok := s.topics.load(topic); ok && ti.maxBytes > 0 {
		return ti.maxBytes
	}
	return s.maxMessage
}
