package log

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
)

// Kinds of tampering Verify names.
const (
	KindEdited    = "edited"    // a line's bytes changed, or a rewritten chain no longer matches a checkpoint
	KindDeleted   = "deleted"   // events are missing from the sequence
	KindInserted  = "inserted"  // a line the log did not write, or a second event with a seq already seen
	KindReordered = "reordered" // an event is out of sequence
	KindForged    = "forged"    // a checkpoint's signature does not verify
	KindUnsigned  = "unsigned"  // a public key was given but no checkpoint is signed with it
)

// Finding locates the first problem Verify found.
type Finding struct {
	File   string
	Line   int    // 1-based; 0 when the finding is about the files as a whole
	Seq    uint64 // the event's seq; 0 when the line has none
	Kind   string
	Detail string
}

func (f Finding) String() string {
	loc := f.File
	if f.Line > 0 {
		loc = fmt.Sprintf("%s:%d", f.File, f.Line)
	}
	if f.Seq > 0 {
		return fmt.Sprintf("%s: seq %d: %s: %s", loc, f.Seq, f.Kind, f.Detail)
	}
	return fmt.Sprintf("%s: %s: %s", loc, f.Kind, f.Detail)
}

// VerifyOptions configures Verify.
type VerifyOptions struct {
	// PublicKey checks checkpoint signatures. Nil checks checkpoints
	// against the chain only: without a key, a rewritten chain with
	// recomputed hashes cannot be told from the original.
	PublicKey ed25519.PublicKey
}

// VerifyResult summarizes a verification.
type VerifyResult struct {
	Files         []string // in the order verified: by their first event's seq
	Events        int
	FirstSeq      uint64
	LastSeq       uint64
	Checkpoints   int
	SignedThrough uint64 // seq of the last checkpoint whose signature verified
	Notes         []string
	// Problem is the first edited, deleted, inserted or reordered event (or
	// bad checkpoint); nil when the files verify.
	Problem *Finding
}

// position of a chained event in the files.
type position struct {
	file string
	line int
	c    chained
}

func (p position) at() string { return fmt.Sprintf("%s:%d", p.file, p.line) }

// Verify checks the hash chain and the checkpoints of decision-log files
// (rotated files and the live one, in any order: they are sorted by their
// first event's seq) and names the first problem. The error is for files
// that cannot be read.
func Verify(paths []string, opts VerifyOptions) (*VerifyResult, error) {
	files, err := orderFiles(paths)
	if err != nil {
		return nil, err
	}
	v := &verifier{res: &VerifyResult{Files: files}, opts: opts, files: files}
	for i, path := range files {
		if err := v.file(i, path); err != nil {
			return nil, err
		}
		if v.res.Problem != nil {
			return v.res, nil
		}
	}
	v.finish()
	return v.res, nil
}

type verifier struct {
	res      *VerifyResult
	opts     VerifyOptions
	files    []string
	prev     *position
	lastCP   *position // the last event a matching checkpoint covered
	cpLine   string    // where that checkpoint is
	unsigned int       // events since the last signed (or, without a key, matching) checkpoint
}

func (v *verifier) fail(f Finding) { v.res.Problem = &f }

func (v *verifier) note(format string, args ...any) {
	v.res.Notes = append(v.res.Notes, fmt.Sprintf(format, args...))
}

func (v *verifier) file(idx int, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 256<<10)
	for n := 1; ; n++ {
		line, err := r.ReadBytes('\n')
		if len(line) == 0 && errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("verify: %s: %w", path, err)
		}
		if !bytes.HasSuffix(line, []byte("\n")) {
			if idx == len(v.files)-1 {
				v.note("%s:%d: incomplete last line ignored (being written?)", path, n)
				return nil
			}
			v.fail(Finding{File: path, Line: n, Kind: KindEdited, Detail: "incomplete line in the middle of the log"})
			return nil
		}
		v.line(idx, path, n, line)
		if v.res.Problem != nil {
			return nil
		}
	}
}

func (v *verifier) line(idx int, path string, n int, line []byte) {
	if len(bytes.TrimSpace(line)) == 0 {
		v.fail(Finding{File: path, Line: n, Kind: KindInserted, Detail: "blank line"})
		return
	}
	if cp, raw, sig, ok, err := parseCheckpoint(line); ok {
		v.checkpoint(path, n, cp, raw, sig, err)
		return
	}
	c, err := parseChained(line)
	switch {
	case errors.Is(err, errNotChained):
		var obj map[string]json.RawMessage
		if json.Unmarshal(line, &obj) != nil {
			v.fail(Finding{File: path, Line: n, Kind: KindEdited, Detail: "not a JSON object"})
		} else if _, ok := obj["seq"]; ok {
			v.fail(Finding{File: path, Line: n, Kind: KindEdited, Detail: "chain fields altered"})
		} else {
			v.fail(Finding{File: path, Line: n, Kind: KindInserted, Detail: "an event without chain fields: not written by the log"})
		}
		return
	case errors.Is(err, errBadHash):
		v.fail(Finding{File: path, Line: n, Seq: c.Seq, Kind: KindEdited, Detail: "the line does not match its hash"})
		return
	}
	cur := position{file: path, line: n, c: c}
	p := v.prev
	switch {
	case p == nil:
		if c.Seq != 1 || c.PrevHash != genesisHash {
			v.note("%s: the chain starts at seq %d; earlier events are not in these files", cur.at(), c.Seq)
		}
		v.res.FirstSeq = c.Seq
	case c.Seq == p.c.Seq+1 && c.PrevHash == p.c.Hash:
		// the expected successor
	case c.Seq == 1 && c.PrevHash == genesisHash:
		v.note("%s: a new chain starts (the log restarted without its chain head)", cur.at())
	case c.Seq == p.c.Seq+1:
		v.fail(Finding{File: p.file, Line: p.line, Seq: p.c.Seq, Kind: KindEdited,
			Detail: fmt.Sprintf("seq %d at %s links to a different event: this one was edited (its hash recomputed) or replaced", c.Seq, cur.at())})
		return
	case c.Seq == p.c.Seq:
		v.fail(Finding{File: path, Line: n, Seq: c.Seq, Kind: KindInserted,
			Detail: fmt.Sprintf("seq %d appears twice (also at %s)", c.Seq, p.at())})
		return
	case c.Seq < p.c.Seq:
		v.fail(Finding{File: path, Line: n, Seq: c.Seq, Kind: KindReordered,
			Detail: fmt.Sprintf("comes after seq %d at %s", p.c.Seq, p.at())})
		return
	default: // a gap
		want := p.c.Seq + 1
		if at, ok := v.find(idx, path, n, want); ok {
			v.fail(Finding{File: path, Line: n, Seq: c.Seq, Kind: KindReordered,
				Detail: fmt.Sprintf("comes before seq %d, which is at %s", want, at)})
		} else {
			missing := fmt.Sprintf("seq %d", want)
			if c.Seq-1 > want {
				missing = fmt.Sprintf("seq %d..%d", want, c.Seq-1)
			}
			v.fail(Finding{File: path, Line: n, Seq: c.Seq, Kind: KindDeleted,
				Detail: fmt.Sprintf("%s missing between %s and this line", missing, p.at())})
		}
		return
	}
	v.prev = &cur
	v.res.Events++
	v.res.LastSeq = c.Seq
	v.unsigned++
}

func (v *verifier) checkpoint(path string, n int, cp checkpointBody, raw, sig []byte, err error) {
	loc := fmt.Sprintf("%s:%d", path, n)
	if err != nil {
		v.fail(Finding{File: path, Line: n, Kind: KindEdited, Detail: err.Error()})
		return
	}
	if v.opts.PublicKey != nil && !verifyCheckpoint(v.opts.PublicKey, raw, sig) {
		detail := "the checkpoint's signature does not verify with the given public key"
		if cp.KeyID != KeyID(v.opts.PublicKey) {
			detail += fmt.Sprintf(" (signed by key %s, the given key is %s)", cp.KeyID, KeyID(v.opts.PublicKey))
		}
		v.fail(Finding{File: path, Line: n, Seq: cp.Seq, Kind: KindForged, Detail: detail})
		return
	}
	v.res.Checkpoints++
	p := v.prev
	switch {
	case p == nil:
		v.note("%s: checkpoint for seq %d precedes every event in these files", loc, cp.Seq)
		return
	case cp.Seq > p.c.Seq:
		v.fail(Finding{File: path, Line: n, Seq: cp.Seq, Kind: KindDeleted,
			Detail: fmt.Sprintf("the checkpoint covers seq %d but the events after seq %d (%s) are missing", cp.Seq, p.c.Seq, p.at())})
		return
	case cp.Seq < p.c.Seq:
		v.fail(Finding{File: path, Line: n, Seq: cp.Seq, Kind: KindReordered,
			Detail: fmt.Sprintf("checkpoint for seq %d comes after seq %d (%s)", cp.Seq, p.c.Seq, p.at())})
		return
	case cp.Hash != p.c.Hash:
		since := "the start of these files"
		if v.lastCP != nil {
			since = fmt.Sprintf("seq %d (checkpoint at %s)", v.lastCP.c.Seq, v.cpLine)
		}
		v.fail(Finding{File: p.file, Line: p.line, Seq: p.c.Seq, Kind: KindEdited,
			Detail: fmt.Sprintf("does not match the checkpoint at %s: events between %s and seq %d were edited and the chain recomputed", loc, since, p.c.Seq)})
		return
	}
	v.lastCP, v.cpLine, v.unsigned = p, loc, 0
	if v.opts.PublicKey != nil {
		v.res.SignedThrough = cp.Seq
	}
}

func (v *verifier) finish() {
	if v.prev == nil {
		v.note("no events")
		return
	}
	switch {
	case v.opts.PublicKey != nil && v.res.SignedThrough == 0:
		v.fail(Finding{File: v.prev.file, Kind: KindUnsigned,
			Detail: "no checkpoint signed by the given key: nothing proves the chain was not rewritten"})
	case v.unsigned > 0 && v.res.Checkpoints > 0:
		v.note("%d events after the last checkpoint (seq %d..%d) are protected by the hash chain only", v.unsigned, v.res.LastSeq-uint64(v.unsigned)+1, v.res.LastSeq)
	case v.res.Checkpoints == 0:
		v.note("no checkpoints: the hash chain shows edits, deletions and reordering, but a rewrite with recomputed hashes needs signed checkpoints to be detected")
	}
}

// find looks for the event with seq want after line n of files[idx].
func (v *verifier) find(idx int, path string, n int, want uint64) (string, bool) {
	for i := idx; i < len(v.files); i++ {
		f, err := os.Open(v.files[i])
		if err != nil {
			return "", false
		}
		r := bufio.NewReaderSize(f, 256<<10)
		for ln := 1; ; ln++ {
			line, err := r.ReadBytes('\n')
			if len(line) > 0 && (i > idx || ln > n) {
				if h, ok := lineHead(line); ok && h.Seq == want {
					f.Close()
					return fmt.Sprintf("%s:%d", v.files[i], ln), true
				}
			}
			if err != nil {
				break
			}
		}
		f.Close()
	}
	return "", false
}

// orderFiles sorts paths by the seq of their first event; files without
// one keep their relative order at the end.
func orderFiles(paths []string) ([]string, error) {
	type entry struct {
		path  string
		first uint64
		ok    bool
	}
	es := make([]entry, 0, len(paths))
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
		r := bufio.NewReaderSize(f, 256<<10)
		e := entry{path: p}
		for {
			line, err := r.ReadBytes('\n')
			if h, ok := lineHead(line); ok {
				e.first, e.ok = h.Seq, true
				break
			}
			if err != nil {
				break
			}
		}
		f.Close()
		es = append(es, e)
	}
	sort.SliceStable(es, func(a, b int) bool {
		if es[a].ok != es[b].ok {
			return es[a].ok
		}
		return es[a].ok && es[a].first < es[b].first
	})
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.path
	}
	return out, nil
}
