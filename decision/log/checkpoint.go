package log

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
)

// Checkpoints. A checkpoint is one line of its own, outside the chain, that
// the file and stdout sinks write after the event it covers:
//
//	{"checkpoint":{"seq":<n>,"hash":"<64 hex>","timestamp":"<RFC 3339>","key_id":"<16 hex>"},"signature":"<base64>"}
//
// The signature is Ed25519 over checkpointContext followed by the bytes of
// the "checkpoint" object exactly as written. key_id is the first 8 bytes,
// in hex, of the SHA-256 of the raw 32-byte public key. Whoever holds only
// write access to the log can recompute the hash chain after an edit, but
// not a checkpoint: with the public key, verify proves every event up to the
// last checkpoint unedited. Checkpoints are never uploaded (they are not
// decision events).
const checkpointContext = "policygate decision-log checkpoint v1\n"

// checkpointLine is the wire form of a checkpoint.
type checkpointLine struct {
	Checkpoint json.RawMessage `json:"checkpoint"`
	Signature  string          `json:"signature"`
}

// checkpointBody is the signed object.
type checkpointBody struct {
	Seq       uint64 `json:"seq"`
	Hash      string `json:"hash"`
	Timestamp string `json:"timestamp"`
	KeyID     string `json:"key_id"`
}

// signer writes checkpoints.
type signer struct {
	key   ed25519.PrivateKey
	keyID string
	every time.Duration
}

func newSigner(cs *checkpointSettings) (*signer, error) {
	raw, err := os.ReadFile(cs.keyFile)
	if err != nil {
		return nil, fmt.Errorf("checkpoint.signing_key_file: %w", err)
	}
	key, err := ParseSigningKey(raw)
	if err != nil {
		return nil, fmt.Errorf("checkpoint.signing_key_file: %s: %w", cs.keyFile, err)
	}
	return &signer{key: key, keyID: KeyID(key.Public().(ed25519.PublicKey)), every: cs.every}, nil
}

// line returns the checkpoint line (with its newline) for h at t.
func (s *signer) line(h head, t time.Time) []byte {
	body := make([]byte, 0, 160)
	body = append(body, `{"seq":`...)
	body = strconv.AppendUint(body, h.Seq, 10)
	body = append(body, `,"hash":"`...)
	body = append(body, h.Hash...)
	body = append(body, `","timestamp":"`...)
	body = t.UTC().AppendFormat(body, time.RFC3339Nano)
	body = append(body, `","key_id":"`...)
	body = append(body, s.keyID...)
	body = append(body, `"}`...)
	sig := ed25519.Sign(s.key, append([]byte(checkpointContext), body...))
	out := make([]byte, 0, len(body)+128)
	out = append(out, `{"checkpoint":`...)
	out = append(out, body...)
	out = append(out, `,"signature":"`...)
	out = base64.StdEncoding.AppendEncode(out, sig)
	out = append(out, '"', '}', '\n')
	return out
}

// parseCheckpoint reads a checkpoint line. ok is false when line is not one.
func parseCheckpoint(line []byte) (cp checkpointBody, raw []byte, sig []byte, ok bool, err error) {
	if !bytes.HasPrefix(line, []byte(`{"checkpoint":`)) {
		return cp, nil, nil, false, nil
	}
	var w checkpointLine
	if err := json.Unmarshal(line, &w); err != nil {
		return cp, nil, nil, true, fmt.Errorf("malformed checkpoint: %w", err)
	}
	if err := json.Unmarshal(w.Checkpoint, &cp); err != nil {
		return cp, nil, nil, true, fmt.Errorf("malformed checkpoint: %w", err)
	}
	sig, err = base64.StdEncoding.DecodeString(w.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return cp, nil, nil, true, errors.New("malformed checkpoint signature")
	}
	return cp, w.Checkpoint, sig, true, nil
}

// verifyCheckpoint checks sig over raw with pub.
func verifyCheckpoint(pub ed25519.PublicKey, raw, sig []byte) bool {
	return ed25519.Verify(pub, append([]byte(checkpointContext), raw...), sig)
}

// KeyID names an Ed25519 public key in checkpoints: the first 8 bytes of
// the SHA-256 of the raw key, in hex.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// ParseSigningKey reads a PEM "PRIVATE KEY" (PKCS#8) holding an Ed25519 key.
func ParseSigningKey(pemBytes []byte) (ed25519.PrivateKey, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM PRIVATE KEY (PKCS#8)")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, not Ed25519", k)
	}
	return ek, nil
}

// ParsePublicKey reads a PEM "PUBLIC KEY" (PKIX) holding an Ed25519 key.
func ParsePublicKey(pemBytes []byte) (ed25519.PublicKey, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, errors.New("not a PEM PUBLIC KEY")
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, not Ed25519", k)
	}
	return ek, nil
}
