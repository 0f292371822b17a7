package kafka

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/txsink/txsink/twopc"
)

// TxnHandle is the JSON form of a prepared branch's twopc.Handle: enough to
// end the transaction from any process with a raw EndTxn.
type TxnHandle struct {
	TransactionalID string `json:"transactional_id"`
	// ProducerID and Epoch of the open transaction (-1 when the branch
	// produced nothing: then there is no transaction in Kafka).
	ProducerID int64 `json:"producer_id"`
	Epoch      int16 `json:"epoch"`
	// Partitions the transaction wrote to; empty (and no Group) means
	// nothing to end.
	Partitions []TopicPartition `json:"partitions"`
	// Group is the consumer group whose offsets the transaction carries
	// (AddOffsetsToTxn; "": none). A transaction with offsets exists in
	// the broker even without partitions and must be ended by EndTxn.
	Group string `json:"group,omitempty"`
	// EndTxnVersion is the highest EndTxn version the transaction may be
	// ended with. 4 (what this package uses): EndTxn keeps the epoch, so
	// a repeated commit/abort is recognised as a retry for as long as the
	// slot is not reused. 5+ (KIP-890): the broker bumps the epoch on
	// every end; Resolve then sends v5 so the broker can detect the retry.
	EndTxnVersion int16 `json:"end_txn_version"`
}

// TopicPartition names one partition.
type TopicPartition struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
}

// endTxnVersion is the EndTxn version cap of every client of this package;
// see DESIGN.md ("EndTxn version").
const endTxnVersion = 4

// ParseHandle decodes a handle written by Prepare.
func ParseHandle(h twopc.Handle) (TxnHandle, error) {
	var th TxnHandle
	if err := json.Unmarshal(h, &th); err != nil {
		return th, fmt.Errorf("%w: kafka handle: %w", twopc.ErrInvalid, err)
	}
	if th.TransactionalID == "" {
		return th, fmt.Errorf("%w: kafka handle without transactional_id", twopc.ErrInvalid)
	}
	if (len(th.Partitions) > 0 || th.Group != "") && (th.ProducerID < 0 || th.Epoch < 0) {
		return th, fmt.Errorf("%w: kafka handle of %s has partitions or offsets but no producer id/epoch", twopc.ErrInvalid, th.TransactionalID)
	}
	return th, nil
}

// TransactionalID returns the transactional id of a slot:
// <prefix>.<job>.<writer>.<slot>. Dots inside job and writer names are
// doubled so that two different (job, writer) pairs never share an id
// (names cannot start with a dot, which keeps the encoding unambiguous).
func TransactionalID(prefix, job, writer string, slot int) string {
	var b strings.Builder
	b.Grow(len(prefix) + len(job) + len(writer) + 8)
	b.WriteString(prefix)
	b.WriteByte('.')
	b.WriteString(strings.ReplaceAll(job, ".", ".."))
	b.WriteByte('.')
	b.WriteString(strings.ReplaceAll(writer, ".", ".."))
	b.WriteByte('.')
	b.WriteString(strconv.Itoa(slot))
	return b.String()
}

// txnAborted reports whether a Kafka error answering EndTxn or produce
// means the transaction at our (producer id, epoch) is no longer open and
// was not committed by us: the broker aborted it (timeout) or someone
// fenced the epoch (InitProducerID), which aborts it too.
func txnAborted(err error) bool {
	return errors.Is(err, kerr.ProducerFenced) ||
		errors.Is(err, kerr.InvalidProducerEpoch) ||
		errors.Is(err, kerr.InvalidTxnState) ||
		errors.Is(err, kerr.InvalidProducerIDMapping) ||
		errors.Is(err, kerr.TransactionalIDNotFound)
}

// retriableTxn reports coordinator errors worth another EndTxn or
// InitProducerID attempt.
func retriableTxn(err error) bool {
	return errors.Is(err, kerr.ConcurrentTransactions) ||
		errors.Is(err, kerr.NotCoordinator) ||
		errors.Is(err, kerr.CoordinatorNotAvailable) ||
		errors.Is(err, kerr.CoordinatorLoadInProgress) ||
		errors.Is(err, kerr.RequestTimedOut)
}

// open reports whether th names a transaction in the broker: one that
// wrote records or added offsets.
func (th TxnHandle) open() bool { return len(th.Partitions) > 0 || th.Group != "" }
