package kafkatest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// GroupOffsets reads a consumer group's committed offsets (topic →
// partition → next offset) from the broker at addr, as an independent
// reader: require_stable (KIP-447), so offsets still in an open transaction
// are never reported as committed; while some are (UNSTABLE_OFFSET_COMMIT)
// it retries every 50 ms for up to wait, then fails. A group that does not
// exist has no offsets (an empty map; kfake answers GROUP_ID_NOT_FOUND
// where Kafka answers an empty list).
func GroupOffsets(ctx context.Context, addr, group string, wait time.Duration) (map[string]map[int32]int64, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	deadline := time.Now().Add(wait)
	for {
		got, unstable, err := fetchStable(ctx, adm, group)
		if err != nil {
			return nil, fmt.Errorf("offsets of group %q: %w", group, err)
		}
		if unstable == "" {
			return got, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("offsets of group %q: %s still unstable (open transaction) after %s", group, unstable, wait)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func fetchStable(ctx context.Context, adm *kadm.Client, group string) (map[string]map[int32]int64, string, error) {
	got := map[string]map[int32]int64{}
	resps, err := adm.FetchOffsets(kadm.RequireStable(ctx), group)
	if errors.Is(err, kerr.GroupIDNotFound) {
		return got, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	for _, r := range resps.Sorted() {
		switch {
		case errors.Is(r.Err, kerr.UnstableOffsetCommit):
			return nil, fmt.Sprintf("%s/%d", r.Topic, r.Partition), nil
		case r.Err != nil:
			return nil, "", fmt.Errorf("%s/%d: %w", r.Topic, r.Partition, r.Err)
		case r.At < 0:
			continue // no commit
		}
		if got[r.Topic] == nil {
			got[r.Topic] = map[int32]int64{}
		}
		got[r.Topic][r.Partition] = r.At
	}
	return got, "", nil
}
