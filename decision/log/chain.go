package log

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
)

// The hash chain. Every event line the log writes has the form
//
//	{"seq":<n>,"prev_hash":"<64 hex>",<event members>,"hash":"<64 hex>"}\n
//
// seq counts events from 1 and never repeats within a chain; prev_hash is
// the hash of event n-1 (64 zeros for the first event of a chain). hash is
// the lowercase hex SHA-256 of the line as written with its final
// `,"hash":"<64 hex>"` member removed — the bytes from the opening brace up
// to, not including, the comma before "hash", followed by a closing brace.
// Those bytes are themselves a JSON object (the event without its hash), so
// the canonical encoding is simply "as written": keys in the order the log
// wrote them, no whitespace, Go's JSON escaping (control characters, U+2028
// and U+2029 escaped, so one event is always one line). A verifier never
// re-encodes JSON; any change to a byte of the line changes the hash.
//
// The chain runs across file rotation and restarts: the head (seq and hash
// of the last event) is recovered on start from the spool, the newest log
// file or the state file in spool_dir.

const (
	hashHexLen = 2 * sha256.Size
	// hashMember opens the final member of a chained line.
	hashMember = `,"hash":"`
	// sealLen is the length of `,"hash":"<64 hex>"}` at the end of a line
	// (without the newline).
	sealLen = len(hashMember) + hashHexLen + len(`"}`)
	// linePrefix starts every chained line.
	linePrefix = `{"seq":`
	prevMember = `,"prev_hash":"`
)

// genesisHash is the prev_hash of the first event of a chain.
var genesisHash = string(bytes.Repeat([]byte("0"), hashHexLen))

// head is a position in the chain: the last event's seq and hash. The zero
// seq with genesisHash is the empty chain.
type head struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

func genesis() head { return head{Hash: genesisHash} }

// later returns whichever of h and o is further along the chain.
func (h head) later(o head) head {
	if o.Seq > h.Seq && len(o.Hash) == hashHexLen {
		return o
	}
	return h
}

// seal appends to dst the chained line for body (one JSON object without
// a trailing newline, as Encode produces it), as the successor of h, and
// advances h.
func seal(dst []byte, h *head, body []byte) []byte {
	start := len(dst)
	seq := h.Seq + 1
	dst = append(dst, linePrefix...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, prevMember...)
	dst = append(dst, h.Hash...)
	dst = append(dst, '"')
	if members := bytes.TrimSpace(body); len(members) > 2 {
		dst = append(dst, ',')
		dst = append(dst, members[1:len(members)-1]...)
	}
	dst = append(dst, '}')
	sum := sha256.Sum256(dst[start:])
	dst = dst[:len(dst)-1]
	dst = append(dst, hashMember...)
	dst = hex.AppendEncode(dst, sum[:])
	dst = append(dst, '"', '}', '\n')
	h.Seq, h.Hash = seq, hex.EncodeToString(sum[:])
	return dst
}

// Reasons a line is not a valid chained event.
var (
	errNotChained = errors.New("not a chained event (no seq/prev_hash/hash)")
	errBadHash    = errors.New("hash does not match the line")
)

// chained is what a chained line says about itself.
type chained struct {
	Seq      uint64
	PrevHash string
	Hash     string
}

// parseChained reads the chain fields of line (with or without its newline)
// and checks the line's own hash. It returns errNotChained when the line
// does not have the chained form and errBadHash (with the fields filled in)
// when the bytes were changed after sealing.
func parseChained(line []byte) (chained, error) {
	line = bytes.TrimSuffix(line, []byte("\n"))
	var c chained
	rest, ok := bytes.CutPrefix(line, []byte(linePrefix))
	if !ok {
		return c, errNotChained
	}
	i := 0
	for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
		i++
	}
	if i == 0 || i > 20 || (i > 1 && rest[0] == '0') {
		return c, errNotChained
	}
	seq, err := strconv.ParseUint(string(rest[:i]), 10, 64)
	if err != nil || seq == 0 {
		return c, errNotChained
	}
	rest, ok = bytes.CutPrefix(rest[i:], []byte(prevMember))
	if !ok || len(rest) < hashHexLen+1 || rest[hashHexLen] != '"' || !isHex(rest[:hashHexLen]) {
		return c, errNotChained
	}
	c.Seq, c.PrevHash = seq, string(rest[:hashHexLen])
	if len(line) < len(linePrefix)+sealLen {
		return c, errNotChained
	}
	tail := line[len(line)-sealLen:]
	if !bytes.HasPrefix(tail, []byte(hashMember)) || !bytes.HasSuffix(tail, []byte(`"}`)) {
		return c, errNotChained
	}
	got := tail[len(hashMember) : len(hashMember)+hashHexLen]
	if !isHex(got) {
		return c, errNotChained
	}
	c.Hash = string(got)
	h := sha256.New()
	h.Write(line[:len(line)-sealLen])
	h.Write([]byte("}"))
	if hex.EncodeToString(h.Sum(nil)) != c.Hash {
		return c, errBadHash
	}
	return c, nil
}

// lineHead reads seq and hash of a line this process sealed, without
// rehashing it.
func lineHead(line []byte) (head, bool) {
	line = bytes.TrimSuffix(line, []byte("\n"))
	rest, ok := bytes.CutPrefix(line, []byte(linePrefix))
	if !ok || len(line) < sealLen {
		return head{}, false
	}
	i := bytes.IndexByte(rest, ',')
	if i <= 0 {
		return head{}, false
	}
	seq, err := strconv.ParseUint(string(rest[:i]), 10, 64)
	if err != nil {
		return head{}, false
	}
	tail := line[len(line)-sealLen:]
	if !bytes.HasPrefix(tail, []byte(hashMember)) {
		return head{}, false
	}
	return head{Seq: seq, Hash: string(tail[len(hashMember) : len(hashMember)+hashHexLen])}, true
}

func isHex(b []byte) bool {
	for _, c := range b {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
