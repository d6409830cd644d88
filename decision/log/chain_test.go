package log

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// TestSealCanonicalEncoding checks the documented definition of the hash
// independently of seal: SHA-256 of the line without its final hash member,
// closed with a brace.
func TestSealCanonicalEncoding(t *testing.T) {
	h := genesis()
	bodies := []string{
		`{"decision_id":"a","input":{"x":"line\nbreak \u2028"}}`,
		`{"decision_id":"b"}`,
		`{}`,
	}
	var prev string = genesisHash
	for i, body := range bodies {
		line := seal(nil, &h, []byte(body))
		if !bytes.HasSuffix(line, []byte("\n")) || bytes.Count(line, []byte("\n")) != 1 {
			t.Fatalf("line %d is not one line: %q", i, line)
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("line %d is not JSON: %v", i, err)
		}
		if m["seq"] != float64(i+1) || m["prev_hash"] != prev {
			t.Fatalf("line %d: seq %v prev_hash %v, want %d %s", i, m["seq"], m["prev_hash"], i+1, prev)
		}
		s := strings.TrimSuffix(string(line), "\n")
		cut := strings.LastIndex(s, `,"hash":"`)
		sum := sha256.Sum256([]byte(s[:cut] + "}"))
		if want := hex.EncodeToString(sum[:]); m["hash"] != want || h.Hash != want {
			t.Fatalf("line %d: hash %v, head %s, want %s", i, m["hash"], h.Hash, want)
		}
		// The hashed bytes are the event without its hash, itself JSON.
		if err := json.Unmarshal([]byte(s[:cut]+"}"), &m); err != nil {
			t.Fatalf("hashed bytes are not JSON: %v", err)
		}
		c, err := parseChained(line)
		if err != nil || c.Seq != uint64(i+1) || c.PrevHash != prev || c.Hash != h.Hash {
			t.Fatalf("parseChained = %+v, %v", c, err)
		}
		if lh, ok := lineHead(line); !ok || lh != h {
			t.Fatalf("lineHead = %+v, %v; want %+v", lh, ok, h)
		}
		prev = h.Hash
	}
}

func TestParseChainedRejects(t *testing.T) {
	h := genesis()
	good := seal(nil, &h, []byte(`{"decision_id":"a","allowed":false}`))
	tests := []struct {
		name string
		line string
		want error
	}{
		{name: "edited value", line: strings.Replace(string(good), "false", "true", 1), want: errBadHash},
		{name: "edited seq", line: strings.Replace(string(good), `"seq":1`, `"seq":2`, 1), want: errBadHash},
		{name: "no chain", line: `{"decision_id":"a"}`, want: errNotChained},
		{name: "hash removed", line: string(good[:len(good)-sealLen-1]) + "}", want: errNotChained},
		{name: "not hex", line: strings.Replace(string(good), `"hash":"`, `"hash":"Z`, 1)[:len(good)], want: errNotChained},
		{name: "leading zero seq", line: strings.Replace(string(good), `"seq":1`, `"seq":01`, 1), want: errNotChained},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := parseChained([]byte(tt.line)); !errors.Is(err, tt.want) {
				t.Fatalf("parseChained(%q) = %v, want %v", tt.line, err, tt.want)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"4096", 4096, true}, {"64KiB", 64 << 10, true}, {"100MB", 100e6, true}, {"1GiB", 1 << 30, true},
		{"2 MiB", 2 << 20, true}, {"0", 0, false}, {"-1", 0, false}, {"1XB", 0, false}, {"", 0, false},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}
