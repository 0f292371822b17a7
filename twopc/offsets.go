package twopc

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
