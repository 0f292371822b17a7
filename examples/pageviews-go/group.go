package main

// --offsets group: the input position lives in a Kafka consumer group
// instead of the checkpoint's state. Each checkpoint passes the next offset
// of every partition of the writer as "offsets"; the sidecar commits them
// inside that checkpoint's transaction of the Kafka sink (AddOffsetsToTxn +
// TxnOffsetCommit), so the group's committed offsets move exactly when the
// increments commit, and not at all when the checkpoint aborts. A session
// resumes from the group's committed offsets, which any Kafka tool can
// show (and lag monitoring sees the app's progress).
//
// The one subtlety is a checkpoint whose transaction is decided but not
// finished in Kafka yet (the sidecar answers "committing", or restarted
// mid-commit): its offsets are pending, and the committed offsets are the
// previous checkpoint's. Resuming from those would count the checkpoint
// again. So the offsets are read with require_stable (KIP-447): the broker
// answers UNSTABLE_OFFSET_COMMIT for a group with offsets in an open
// transaction, and the app waits until the transaction ends.
//
// kfake (the dev broker) answers GROUP_ID_NOT_FOUND instead while the
// group's very first offsets are pending. The app therefore also waits when
// the session restored a checkpoint (every checkpoint of this mode carries
// the offsets of all the writer's partitions) and the group holds none of
// the writer's partitions.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/txsink/txsink/twopc"
)

// stableWait bounds how long a session start waits for the group's offsets
// to become stable; after it the session fails and is reopened (count's
// loop, with its --give-up).
var stableWait = 15 * time.Second

// groupOffsets returns the group's committed offsets of parts of the input
// (partition -> next offset; 0 for a partition without one), once they are
// stable. restored is the checkpoint the session restored.
func (a *app) groupOffsets(ctx context.Context, adm *kadm.Client, restored int64, parts []int32) (map[string]int64, error) {
	c := a.cfg
	deadline := time.Now().Add(stableWait)
	for waited := false; ; waited = true {
		offs, unstable, err := fetchGroupOffsets(ctx, adm, c.group, c.input, parts)
		if err != nil {
			return nil, fmt.Errorf("offsets of group %q: %w", c.group, err)
		}
		var why string
		switch {
		case len(unstable) > 0:
			why = fmt.Sprintf("partitions %v have offsets in an open transaction (a checkpoint being finished)", unstable)
		case restored > 0 && len(offs) == 0:
			why = fmt.Sprintf("checkpoint %d is restored but the group holds no offset of partitions %v yet", restored, parts)
		}
		if why == "" {
			if waited {
				fmt.Fprintf(a.out, "writer %s: group %q's offsets are stable\n", a.name, c.group)
			}
			for _, p := range parts {
				if _, ok := offs[strconv.Itoa(int(p))]; !ok {
					offs[strconv.Itoa(int(p))] = 0
				}
			}
			return offs, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("group %q: %s after waiting %s", c.group, why, stableWait)
		}
		if !waited {
			fmt.Fprintf(a.out, "writer %s: group %q: %s; waiting\n", a.name, c.group, why)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// fetchGroupOffsets reads the group's committed offsets of parts of topic
// with require_stable: unstable lists the partitions whose offsets are in
// an open transaction. A group that does not exist has no offsets.
func fetchGroupOffsets(ctx context.Context, adm *kadm.Client, group, topic string, parts []int32) (offs map[string]int64, unstable []int32, err error) {
	resps, err := adm.FetchOffsets(kadm.RequireStable(ctx), group)
	if errors.Is(err, kerr.GroupIDNotFound) {
		return map[string]int64{}, nil, nil // kfake's answer for an unknown group; Kafka's is an empty list
	}
	if err != nil {
		return nil, nil, err
	}
	offs = map[string]int64{}
	for _, p := range parts {
		r, ok := resps.Lookup(topic, p)
		switch {
		case !ok:
		case errors.Is(r.Err, kerr.UnstableOffsetCommit):
			unstable = append(unstable, p)
		case r.Err != nil:
			return nil, nil, fmt.Errorf("partition %d: %w", p, r.Err)
		case r.At >= 0:
			offs[strconv.Itoa(int(p))] = r.At
		}
	}
	return offs, unstable, nil
}

// groupCommit is the checkpoint's "offsets": the next offset of each of the
// writer's partitions, for the group, in the events sink's transaction. The
// app assigns its partitions itself (no group membership), so generation
// and member id stay empty.
func (s *counting) groupCommit() *twopc.Offsets {
	ps := make(map[int32]int64, len(s.pos.Offsets))
	for p, off := range s.pos.Offsets {
		n, err := strconv.ParseInt(p, 10, 32)
		if err != nil {
			continue // cannot happen: the keys are partition numbers we wrote
		}
		ps[int32(n)] = off
	}
	return &twopc.Offsets{Sink: eventsSink, Group: s.cfg.group, Topics: map[string]map[int32]int64{s.cfg.input: ps}}
}
