package mysql

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/txsink/txsink/twopc"
)

// FormatID is the XA formatID of every branch txsink creates: "txs1" in
// ASCII. XA RECOVER rows with another formatID belong to someone else and
// are never touched.
const FormatID = 0x74787331 // 1954051889

// maxTag bounds the readable scope part of a gtrid so that the numbers after
// it always fit in 64 bytes.
const maxTag = 30

// xid is one branch's XA transaction id and what the sink needs to finish it
// from another session.
//
//	gtrid = <tag>@<epoch>.<seq>                       (hex numbers, ≤ 64 bytes)
//	bqual = <after>.<slot>.<conn id>.<boot id>        (hex numbers, ≤ 55 bytes)
//
// tag is "job/writer/sink" when that fits in 30 bytes, else its first 13
// bytes, "~" and 16 hex digits of its SHA-256: names never contain "/", "~"
// or "@", so both forms are unambiguous. conn id is the preparer's
// CONNECTION_ID() and boot id the server incarnation it ran on (see
// bootTable): recovery waits for that session to be gone.
type xid struct {
	gtrid, bqual []byte
	epoch, seq   uint64
	after        int64
	slot         int
	connID       uint64
	boot         string // 16 hex digits
}

// tag is the scope part of the gtrids of one writer in one sink.
func tag(job, writer, sink string) string {
	s := job + "/" + writer + "/" + sink
	if len(s) <= maxTag {
		return s
	}
	sum := sha256.Sum256([]byte(job + "\x00" + writer + "\x00" + sink))
	return s[:13] + "~" + hex.EncodeToString(sum[:8])
}

func hexu(v uint64) string { return strconv.FormatUint(v, 16) }

func newXID(id twopc.BranchID, connID uint64, boot string) xid {
	x := xid{epoch: id.Epoch, seq: id.Seq, after: id.After, slot: id.Slot, connID: connID, boot: boot}
	x.gtrid = []byte(tag(id.Job, id.Writer, id.Sink) + "@" + hexu(id.Epoch) + "." + hexu(id.Seq))
	x.bqual = []byte(hexu(uint64(id.After)) + "." + hexu(uint64(id.Slot)) + "." + hexu(connID) + "." + boot)
	return x
}

// parseXID decodes the gtrid and bqual of one of our branches.
func parseXID(gtrid, bqual []byte) (xid, string, error) {
	x := xid{gtrid: gtrid, bqual: bqual}
	g := string(gtrid)
	at := strings.LastIndexByte(g, '@')
	if at < 0 {
		return x, "", fmt.Errorf("gtrid %q: no @", g)
	}
	t := g[:at]
	nums := strings.Split(g[at+1:], ".")
	if len(nums) != 2 {
		return x, "", fmt.Errorf("gtrid %q: want <tag>@<epoch>.<seq>", g)
	}
	var err error
	if x.epoch, err = strconv.ParseUint(nums[0], 16, 64); err != nil {
		return x, "", fmt.Errorf("gtrid %q: %w", g, err)
	}
	if x.seq, err = strconv.ParseUint(nums[1], 16, 64); err != nil {
		return x, "", fmt.Errorf("gtrid %q: %w", g, err)
	}
	b := strings.Split(string(bqual), ".")
	if len(b) != 4 {
		return x, "", fmt.Errorf("bqual %q: want <after>.<slot>.<conn>.<boot>", bqual)
	}
	after, err1 := strconv.ParseUint(b[0], 16, 64)
	slot, err2 := strconv.ParseUint(b[1], 16, 16)
	conn, err3 := strconv.ParseUint(b[2], 16, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return x, "", fmt.Errorf("bqual %q: bad number", bqual)
	}
	x.after, x.slot, x.connID, x.boot = int64(after), int(slot), conn, b[3]
	return x, t, nil
}

// literal is the XID as XA statements take it (no placeholders there).
func (x xid) literal() string {
	return fmt.Sprintf("X'%x',X'%x',%d", x.gtrid, x.bqual, FormatID)
}

func (x xid) String() string { return fmt.Sprintf("%s,%s,%d", x.gtrid, x.bqual, FormatID) }

// handle is the JSON journaled with a prepared branch (twopc.Handle).
type handle struct {
	// Empty: the branch had no writes; nothing exists in the database.
	Empty    bool   `json:"empty,omitempty"`
	FormatID int64  `json:"format_id,omitempty"`
	Gtrid    string `json:"gtrid,omitempty"` // hex
	Bqual    string `json:"bqual,omitempty"` // hex
	// ConnID is the preparer's CONNECTION_ID() and Boot the server
	// incarnation (also inside bqual; here for people reading the journal).
	ConnID uint64 `json:"conn_id,omitempty"`
	Boot   string `json:"boot,omitempty"`
}

func (x xid) handle() twopc.Handle {
	b, _ := json.Marshal(handle{FormatID: FormatID, Gtrid: hex.EncodeToString(x.gtrid),
		Bqual: hex.EncodeToString(x.bqual), ConnID: x.connID, Boot: x.boot})
	return b
}

var emptyHandle = twopc.Handle(`{"empty":true}`)

// xidOf decodes h and checks that it names branch id of sink.
func xidOf(id twopc.BranchID, h twopc.Handle) (x xid, empty bool, err error) {
	var hd handle
	if err := json.Unmarshal(h, &hd); err != nil {
		return x, false, fmt.Errorf("%w: mysql handle of %v: %v", twopc.ErrInvalid, id, err)
	}
	if hd.Empty {
		return x, true, nil
	}
	if hd.FormatID != FormatID {
		return x, false, fmt.Errorf("%w: mysql handle of %v: format_id %d, want %d", twopc.ErrInvalid, id, hd.FormatID, FormatID)
	}
	g, err1 := hex.DecodeString(hd.Gtrid)
	b, err2 := hex.DecodeString(hd.Bqual)
	if err1 != nil || err2 != nil {
		return x, false, fmt.Errorf("%w: mysql handle of %v: bad hex", twopc.ErrInvalid, id)
	}
	x, t, err := parseXID(g, b)
	if err != nil {
		return x, false, fmt.Errorf("%w: mysql handle of %v: %v", twopc.ErrInvalid, id, err)
	}
	if t != tag(id.Job, id.Writer, id.Sink) || x.epoch != id.Epoch || x.seq != id.Seq {
		return x, false, fmt.Errorf("%w: mysql handle %s does not name branch %v", twopc.ErrInvalid, x, id)
	}
	return x, false, nil
}
