package twopc

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"unicode"
	"unicode/utf8"
)

// Offsets are consumer-group offsets a checkpoint commits inside the Kafka
// transaction of one of its branches (KIP-98 AddOffsetsToTxn +
// TxnOffsetCommit): the group's committed offsets move exactly when the
// checkpoint's output commits, and not at all when it aborts. An app that
// reads its input from Kafka passes the next offset to read per partition.
//
// Generation, MemberID and GroupInstanceID are KIP-447's fencing fields for
// an app that is a member of the group: the group coordinator rejects the
// commit when they do not match the group's current generation. An app that
// assigns partitions itself leaves them empty (generation -1 on the wire).
type Offsets struct {
	// Sink is the Kafka sink of the job whose branch carries the offsets.
	Sink string `json:"sink"`
	// Group is the consumer group id.
	Group string `json:"group"`
	// Topics maps topic → partition → next offset to consume.
	Topics map[string]map[int32]int64 `json:"topics"`
	// Generation is the group's generation id (nil: -1, no member check).
	Generation *int32 `json:"generation,omitempty"`
	// MemberID is the app's member id in the group ("": none).
	MemberID string `json:"member_id,omitempty"`
	// GroupInstanceID is the static member id (KIP-345; "": none).
	GroupInstanceID string `json:"group_instance_id,omitempty"`
}

// MaxOffsetPartitions bounds the partitions of one checkpoint's Offsets.
const MaxOffsetPartitions = 10_000

// maxOffsetString bounds Group, MemberID and GroupInstanceID (Kafka has no
// limit of its own; these are ids, not payload).
const maxOffsetString = 255

// OffsetSink is implemented by sinks whose branches can carry consumer-group
// offsets (sinks/kafka). A checkpoint's Offsets may only name such a sink.
type OffsetSink interface {
	// ValidateOffsets checks the sink-specific rules of o (e.g. Kafka's
	// topic names) on the request path, after CheckOffsets; an invalid o
	// is an error wrapping ErrInvalid.
	ValidateOffsets(o *Offsets) error
}

// OffsetBranch is implemented by the branches of an OffsetSink.
type OffsetBranch interface {
	// AddOffsets adds o to the open transaction; it is called at most once
	// per branch, right before Prepare. The branch's commit (Commit or
	// the sink's Resolve from the handle) commits the offsets, its abort
	// drops them. An error fails the session, like a failed Prepare.
	AddOffsets(ctx context.Context, o *Offsets) error
}

// CheckOffsets checks the sink-independent rules of o: sink name, group,
// at least one topic, partitions and offsets ≥ 0, at most
// MaxOffsetPartitions partitions. Errors wrap ErrInvalid.
func CheckOffsets(o *Offsets) error {
	if err := CheckName("offsets sink", o.Sink); err != nil {
		return err
	}
	if err := checkID("offsets group", o.Group, true); err != nil {
		return err
	}
	if err := checkID("offsets member_id", o.MemberID, false); err != nil {
		return err
	}
	if err := checkID("offsets group_instance_id", o.GroupInstanceID, false); err != nil {
		return err
	}
	if o.Generation != nil && *o.Generation < -1 {
		return fmt.Errorf("%w: offsets generation must be -1 or more, got %d", ErrInvalid, *o.Generation)
	}
	if len(o.Topics) == 0 {
		return fmt.Errorf("%w: offsets topics must name at least one topic", ErrInvalid)
	}
	n := 0
	for _, t := range sortedKeys(o.Topics) {
		ps := o.Topics[t]
		if len(ps) == 0 {
			return fmt.Errorf("%w: offsets topic %q has no partitions", ErrInvalid, t)
		}
		n += len(ps)
		if n > MaxOffsetPartitions {
			return fmt.Errorf("%w: offsets name more than %d partitions", ErrInvalid, MaxOffsetPartitions)
		}
		for p, off := range ps {
			if p < 0 {
				return fmt.Errorf("%w: offsets topic %q: partition %d must be 0 or more", ErrInvalid, t, p)
			}
			if off < 0 {
				return fmt.Errorf("%w: offsets topic %q partition %d: offset %d must be 0 or more", ErrInvalid, t, p, off)
			}
		}
	}
	return nil
}

// checkID checks a group, member or instance id: at most maxOffsetString
// bytes of valid UTF-8 without control characters.
func checkID(what, s string, required bool) error {
	switch {
	case s == "" && required:
		return fmt.Errorf("%w: %s must not be empty", ErrInvalid, what)
	case len(s) > maxOffsetString:
		return fmt.Errorf("%w: %s is %d bytes; the limit is %d", ErrInvalid, what, len(s), maxOffsetString)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalid, what)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: %s %q contains a control character", ErrInvalid, what, s)
		}
	}
	return nil
}

// checkpointSum is the digest a retry of a checkpoint must repeat: of its
// state and, when set, its offsets (JSON sorts map keys, so equal offsets
// have equal bytes). Without offsets it is the state's digest alone.
func checkpointSum(state []byte, o *Offsets) uint64 {
	if o == nil {
		return maphash.Bytes(stateSeed, state)
	}
	var h maphash.Hash
	h.SetSeed(stateSeed)
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(state)))
	h.Write(n[:])
	h.Write(state)
	b, _ := json.Marshal(o) // plain data: cannot fail
	h.Write(b)
	return h.Sum64()
}
