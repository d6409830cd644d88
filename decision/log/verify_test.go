package log_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	decisionlog "github.com/policygate/policygate/decision/log"
)

// signedLog writes n events to a fresh file with signed checkpoints (one at
// Close) and returns the file, its public key and the private key path.
func signedLog(t *testing.T, n int) (path, pubPath, keyPath string) {
	t.Helper()
	dir := t.TempDir()
	keyPath, pubPath, _ = keyPair(t, dir, "log")
	path = filepath.Join(dir, "decisions.jsonl")
	l := mustNew(t, decisionlog.Config{
		Output: "file", Path: path,
		Checkpoint: &decisionlog.CheckpointConfig{SigningKeyFile: keyPath, Every: "1h"},
	}, decisionlog.Options{})
	logAll(t, l, ids("ev", n)...)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path, pubPath, keyPath
}

func publicKey(t *testing.T, path string) decisionlog.VerifyOptions {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := decisionlog.ParsePublicKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	return decisionlog.VerifyOptions{PublicKey: pub}
}

// rehash rewrites the chain from line index from on, as an attacker with
// write access (but no signing key) would after editing an event.
func rehash(t *testing.T, lines [][]byte, from int) {
	t.Helper()
	prevHash := ""
	for i := range lines {
		if bytes.HasPrefix(lines[i], []byte(`{"checkpoint":`)) {
			continue
		}
		s := string(lines[i])
		if i >= from {
			if prevHash != "" {
				j := strings.Index(s, `"prev_hash":"`) + len(`"prev_hash":"`)
				s = s[:j] + prevHash + s[j+64:]
			}
			cut := strings.LastIndex(s, `,"hash":"`)
			sum := sha256.Sum256([]byte(s[:cut] + "}"))
			s = s[:cut] + `,"hash":"` + hex.EncodeToString(sum[:]) + `"}`
			lines[i] = []byte(s)
		}
		cut := strings.LastIndex(s, `,"hash":"`)
		prevHash = s[cut+9 : cut+9+64]
	}
}

func TestVerifyIntactLog(t *testing.T) {
	path, pub, _ := signedLog(t, 20)
	res, err := decisionlog.Verify([]string{path}, publicKey(t, pub))
	if err != nil {
		t.Fatal(err)
	}
	if res.Problem != nil {
		t.Fatalf("intact log: %v", res.Problem)
	}
	if res.Events != 20 || res.FirstSeq != 1 || res.LastSeq != 20 || res.Checkpoints != 1 || res.SignedThrough != 20 {
		t.Fatalf("result %+v", res)
	}
}

// TestVerifyTampering edits copies of one signed log and checks that verify
// names the first tampered event by file:line and seq. Lines 1..20 hold seq
// 1..20; line 21 is the closing checkpoint.
func TestVerifyTampering(t *testing.T) {
	path, pub, _ := signedLog(t, 20)
	orig := fileLines(t, path)
	if len(orig) != 21 {
		t.Fatalf("%d lines, want 20 events and a checkpoint", len(orig))
	}
	_, _, otherKey := signedLog(t, 1)
	tests := []struct {
		name    string
		edit    func(lines [][]byte) [][]byte
		withKey bool
		line    int
		seq     uint64
		kind    string
		detail  string
	}{
		{
			name: "edited", line: 5, seq: 5, kind: decisionlog.KindEdited, detail: "does not match its hash",
			edit: func(ls [][]byte) [][]byte {
				ls[4] = bytes.Replace(ls[4], []byte(`"allowed":false`), []byte(`"allowed":true`), 1)
				return ls
			},
		},
		{
			name: "deleted", line: 7, seq: 8, kind: decisionlog.KindDeleted, detail: "seq 7 missing",
			edit: func(ls [][]byte) [][]byte { return append(ls[:6:6], ls[7:]...) },
		},
		{
			name: "deleted range", line: 3, seq: 6, kind: decisionlog.KindDeleted, detail: "seq 3..5 missing",
			edit: func(ls [][]byte) [][]byte { return append(ls[:2:2], ls[5:]...) },
		},
		{
			name: "reordered", line: 10, seq: 11, kind: decisionlog.KindReordered, detail: "comes before seq 10, which is at " + path + ":11",
			edit: func(ls [][]byte) [][]byte {
				ls[9], ls[10] = ls[10], ls[9]
				return ls
			},
		},
		{
			name: "moved to the end", line: 3, seq: 4, kind: decisionlog.KindReordered, detail: "comes before seq 3",
			edit: func(ls [][]byte) [][]byte {
				moved := ls[2]
				ls = append(ls[:2:2], ls[3:]...)
				return append(ls, moved)
			},
		},
		{
			name: "duplicated", line: 4, seq: 3, kind: decisionlog.KindInserted, detail: "appears twice",
			edit: func(ls [][]byte) [][]byte {
				return append(ls[:3:3], append([][]byte{ls[2]}, ls[3:]...)...)
			},
		},
		{
			name: "foreign line", line: 6, kind: decisionlog.KindInserted, detail: "without chain fields",
			edit: func(ls [][]byte) [][]byte {
				return append(ls[:5:5], append([][]byte{[]byte(`{"decision_id":"forged","allowed":true}`)}, ls[5:]...)...)
			},
		},
		{
			name: "garbage", line: 2, kind: decisionlog.KindEdited, detail: "not a JSON object",
			edit: func(ls [][]byte) [][]byte {
				ls[1] = []byte("hello")
				return ls
			},
		},
		{
			name: "edited and chain recomputed", line: 20, seq: 20, kind: decisionlog.KindEdited, detail: "does not match the checkpoint",
			edit: func(ls [][]byte) [][]byte {
				ls[4] = bytes.Replace(ls[4], []byte(`"allowed":false`), []byte(`"allowed":true`), 1)
				rehash(t, ls, 4)
				return ls
			},
		},
		{
			name: "edited, one hash recomputed", line: 5, seq: 5, kind: decisionlog.KindEdited, detail: "seq 6 at " + path + ":6 links to a different event",
			edit: func(ls [][]byte) [][]byte {
				ls[4] = bytes.Replace(ls[4], []byte(`"allowed":false`), []byte(`"allowed":true`), 1)
				rehash(t, ls[:5], 4)
				return ls
			},
		},
		{
			name: "tail deleted before the checkpoint", line: 18, seq: 20, kind: decisionlog.KindDeleted, detail: "events after seq 17",
			edit: func(ls [][]byte) [][]byte { return append(ls[:17:17], ls[20]) },
		},
		{
			name: "rewritten with a forged checkpoint", withKey: true, line: 21, seq: 20, kind: decisionlog.KindForged, detail: "does not verify",
			edit: func(ls [][]byte) [][]byte {
				ls[4] = bytes.Replace(ls[4], []byte(`"allowed":false`), []byte(`"allowed":true`), 1)
				rehash(t, ls, 4)
				ls[20] = forgeCheckpoint(t, otherKey, ls[19])
				return ls
			},
		},
		{
			name: "checkpoint removed", withKey: true, seq: 0, kind: decisionlog.KindUnsigned, detail: "no checkpoint signed",
			edit: func(ls [][]byte) [][]byte { return ls[:20] },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines := make([][]byte, len(orig))
			for i := range orig {
				lines[i] = bytes.Clone(orig[i])
			}
			writeLines(t, path, tt.edit(lines))
			defer writeLines(t, path, orig)
			opts := decisionlog.VerifyOptions{}
			if tt.withKey {
				opts = publicKey(t, pub)
			}
			res, err := decisionlog.Verify([]string{path}, opts)
			if err != nil {
				t.Fatal(err)
			}
			p := res.Problem
			if p == nil {
				t.Fatalf("tampering not detected; result %+v", res)
			}
			if p.File != path || p.Line != tt.line || p.Seq != tt.seq || p.Kind != tt.kind || !strings.Contains(p.Detail, tt.detail) {
				t.Fatalf("finding %q\nwant line %d seq %d kind %s detail containing %q", p, tt.line, tt.seq, tt.kind, tt.detail)
			}
		})
	}
}

// forgeCheckpoint signs a checkpoint for the event line ev with another
// key, through a real logger: an attacker's own key.
func forgeCheckpoint(t *testing.T, keyPath string, ev []byte) []byte {
	t.Helper()
	s := string(ev)
	cut := strings.LastIndex(s, `,"hash":"`)
	hash := s[cut+9 : cut+9+64]
	seq, _ := strconv.Atoi(s[len(`{"seq":`):strings.IndexByte(s, ',')])
	line, err := decisionlog.SignCheckpointForTest(keyPath, uint64(seq), hash, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(line, []byte("\n"))
}

// TestChainAcrossRotationAndRestart: the chain continues through size
// rotation and restarts; every rotated file ends with a checkpoint; verify
// accepts the files in any order.
func TestChainAcrossRotationAndRestart(t *testing.T) {
	dir := t.TempDir()
	keyPath, pubPath, _ := keyPair(t, dir, "log")
	path := filepath.Join(dir, "decisions.jsonl")
	cfg := decisionlog.Config{
		Output: "file", Path: path, MaxSize: "8KiB",
		Checkpoint: &decisionlog.CheckpointConfig{SigningKeyFile: keyPath, Every: "1h"},
	}
	total := 0
	for round := range 3 {
		l := mustNew(t, cfg, decisionlog.Options{})
		batch := ids(fmt.Sprintf("r%d-", round), 40)
		logAll(t, l, batch...)
		total += len(batch)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	files := logFiles(t, path)
	if len(files) < 4 {
		t.Fatalf("%d files, want several rotations of 8KiB", len(files))
	}
	var all []string
	for _, f := range files {
		lines := fileLines(t, f)
		if !bytes.HasPrefix(lines[len(lines)-1], []byte(`{"checkpoint":`)) {
			t.Errorf("%s does not end with a checkpoint", f)
		}
		if st, _ := os.Stat(f); f != path && st.Size() > 8<<10 {
			t.Errorf("%s is %d bytes, above max_size", f, st.Size())
		}
		all = append(all, eventIDs(t, bytes.Join(lines, []byte("\n")))...)
	}
	if len(all) != total {
		t.Fatalf("%d events in the files, want %d", len(all), total)
	}
	// Reversed order on the command line: verify sorts by seq.
	rev := append([]string(nil), files...)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	res, err := decisionlog.Verify(rev, publicKey(t, pubPath))
	if err != nil {
		t.Fatal(err)
	}
	if res.Problem != nil || res.Events != total || res.FirstSeq != 1 || res.LastSeq != uint64(total) || res.SignedThrough != uint64(total) {
		t.Fatalf("verify: problem %v, result %+v", res.Problem, res)
	}
	// Retention: only the newest rotated files stay; the chain still
	// verifies from where they start.
	l := mustNew(t, decisionlog.Config{Output: "file", Path: path, MaxSize: "8KiB", MaxFiles: 2}, decisionlog.Options{})
	logAll(t, l, ids("more-", 80)...)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	files = logFiles(t, path)
	if len(files) != 3 {
		t.Fatalf("%d files with max_files: 2, want 2 rotated and the live one", len(files))
	}
	res, err = decisionlog.Verify(files, decisionlog.VerifyOptions{})
	if err != nil || res.Problem != nil {
		t.Fatalf("verify after pruning: %v %v", err, res.Problem)
	}
	if len(res.Notes) == 0 || !strings.Contains(strings.Join(res.Notes, "\n"), "earlier events are not in these files") {
		t.Errorf("notes %q do not say the chain starts later", res.Notes)
	}
}

// TestAgeRotation rotates on an injected clock.
func TestAgeRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decisions.jsonl")
	var (
		mu  sync.Mutex
		now = time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	advance := func(d time.Duration) {
		mu.Lock()
		now = now.Add(d)
		mu.Unlock()
	}
	l := mustNew(t, decisionlog.Config{Output: "file", Path: path, MaxAge: "1h"}, decisionlog.Options{Now: clock})
	logAll(t, l, "a1", "a2")
	if err := l.LogSync(t.Context(), simpleEvent("a3")); err != nil {
		t.Fatal(err)
	}
	advance(61 * time.Minute)
	logAll(t, l, "b1")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	files := logFiles(t, path)
	if len(files) != 2 {
		t.Fatalf("files %v, want one rotated and the live one", files)
	}
	if !strings.Contains(filepath.Base(files[0]), "decisions-20250301T010100") {
		t.Errorf("rotated file %s is not stamped with the rotation time", files[0])
	}
	if got := eventIDs(t, bytes.Join(fileLines(t, files[1]), []byte("\n"))); len(got) != 1 || got[0] != "b1" {
		t.Errorf("live file holds %v, want [b1]", got)
	}
	if res, err := decisionlog.Verify(files, decisionlog.VerifyOptions{}); err != nil || res.Problem != nil || res.Events != 4 {
		t.Fatalf("verify: %v %v %+v", err, res.Problem, res)
	}
}

// TestTornTailRepaired: a line cut by a crash is removed on start and the
// chain continues from the last whole event.
func TestTornTailRepaired(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decisions.jsonl")
	l := mustNew(t, decisionlog.Config{Output: "file", Path: path}, decisionlog.Options{})
	logAll(t, l, "a", "b")
	l.Close()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"seq":3,"prev_hash":"00`)
	f.Close()
	l = mustNew(t, decisionlog.Config{Output: "file", Path: path}, decisionlog.Options{})
	logAll(t, l, "c")
	l.Close()
	raw, _ := os.ReadFile(path)
	if got := eventIDs(t, raw); strings.Join(got, ",") != "a,b,c" {
		t.Fatalf("events %v", got)
	}
	if res, err := decisionlog.Verify([]string{path}, decisionlog.VerifyOptions{}); err != nil || res.Problem != nil || res.LastSeq != 3 {
		t.Fatalf("verify: %v %v %+v", err, res.Problem, res)
	}
}
