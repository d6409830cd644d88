package log

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// ReportOptions filters and shapes an access-review report.
type ReportOptions struct {
	// Since and Until bound the events' timestamps: Since inclusive, Until
	// exclusive. Zero means unbounded.
	Since, Until time.Time
	// WritesOnly keeps only state-changing calls (methods other than GET,
	// HEAD and OPTIONS). False keeps every call: through an admin-API
	// gateway, reads of keys and accounts are privileged too.
	WritesOnly bool
	// Actions name calls by pattern when the policy labels none: each is
	// "METHOD /segment/*/..." where * matches one segment and a final **
	// the rest; the first match is the action.
	Actions []string
}

// AccessReport is the access review: per identity, the privileged calls
// allowed and denied, by route and action, with the policy revisions that
// decided them.
type AccessReport struct {
	Since      *time.Time `json:"since,omitempty"`
	Until      *time.Time `json:"until,omitempty"`
	Events     int        `json:"events"`     // events counted, after filters and de-duplication
	Duplicates int        `json:"duplicates"` // events seen again with a decision id already counted
	Skipped    int        `json:"skipped"`    // lines that are not decision events (checkpoints, garbage)
	Identities []Identity `json:"identities"`
}

// Identity is one caller in the report.
type Identity struct {
	Subject string        `json:"subject"` // "" for unauthenticated callers
	Method  string        `json:"identity_method"`
	Allowed int           `json:"allowed"`
	Denied  int           `json:"denied"`
	Calls   []CallSummary `json:"calls"`
}

// CallSummary counts one identity's calls of one action on one route.
type CallSummary struct {
	Route     string    `json:"route"`
	Action    string    `json:"action"`
	Allowed   int       `json:"allowed"`
	Denied    int       `json:"denied"`
	Revisions []string  `json:"revisions"` // "bundle@revision", sorted
	First     time.Time `json:"first_seen"`
	Last      time.Time `json:"last_seen"`
}

// reportEvent is what the report reads from an event line.
type reportEvent struct {
	DecisionID     string            `json:"decision_id"`
	Timestamp      time.Time         `json:"timestamp"`
	Route          string            `json:"route"`
	Subject        string            `json:"subject"`
	IdentityMethod string            `json:"identity_method"`
	Allowed        bool              `json:"allowed"`
	Labels         map[string]string `json:"labels"`
	Bundles        map[string]struct {
		Revision string `json:"revision"`
	} `json:"bundles"`
	Input struct {
		Request struct {
			Method   string   `json:"method"`
			Path     string   `json:"path"`
			Segments []string `json:"segments"`
		} `json:"request"`
	} `json:"input"`
}

// actionPattern is a parsed ReportOptions.Actions entry.
type actionPattern struct {
	raw    string
	method string
	segs   []string
}

func parseActions(specs []string) ([]actionPattern, error) {
	var out []actionPattern
	for _, s := range specs {
		method, path, ok := strings.Cut(strings.TrimSpace(s), " ")
		path = strings.TrimSpace(path)
		if !ok || method == "" || !strings.HasPrefix(path, "/") {
			return nil, fmt.Errorf("action %q is not \"METHOD /path/pattern\"", s)
		}
		segs := strings.FieldsFunc(path, func(r rune) bool { return r == '/' })
		for i, sg := range segs {
			if sg == "**" && i != len(segs)-1 {
				return nil, fmt.Errorf("action %q: ** must be the last segment", s)
			}
		}
		out = append(out, actionPattern{raw: strings.ToUpper(method) + " " + path, method: strings.ToUpper(method), segs: segs})
	}
	return out, nil
}

func (p actionPattern) match(method string, segs []string) bool {
	if p.method != "*" && p.method != method {
		return false
	}
	for i, ps := range p.segs {
		if ps == "**" {
			return true
		}
		if i >= len(segs) || (ps != "*" && ps != segs[i]) {
			return false
		}
	}
	return len(segs) == len(p.segs)
}

// pathTemplate turns a concrete path into a template: segments that look
// like identifiers (digits, dots, @, :, upper case, percent escapes, or
// longer than 32 bytes) become "*", API words stay.
func pathTemplate(segs []string) string {
	if len(segs) == 0 {
		return "/"
	}
	var b strings.Builder
	for _, s := range segs {
		b.WriteByte('/')
		if isWord(s) {
			b.WriteString(s)
		} else {
			b.WriteByte('*')
		}
	}
	return b.String()
}

func isWord(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	if len(s) <= 3 && s[0] == 'v' && len(s) > 1 { // API versions: v1, v2, v10
		if _, err := strconv.Atoi(s[1:]); err == nil {
			return true
		}
	}
	for _, r := range s {
		if !(unicode.IsLower(r) && r < unicode.MaxASCII) && r != '-' && r != '_' {
			return false
		}
	}
	return true
}

// BuildReport reads decision-log files and builds the access review. Events
// are de-duplicated by decision id (the last one read wins), so replays
// and repeated uploads never count twice.
func BuildReport(paths []string, opts ReportOptions) (*AccessReport, error) {
	pats, err := parseActions(opts.Actions)
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	rep := &AccessReport{}
	if !opts.Since.IsZero() {
		rep.Since = &opts.Since
	}
	if !opts.Until.IsZero() {
		rep.Until = &opts.Until
	}
	byID := map[string]*reportEvent{}
	var order []string
	for _, p := range paths {
		if err := readEvents(p, func(ev *reportEvent) {
			if ev == nil {
				rep.Skipped++
				return
			}
			if _, seen := byID[ev.DecisionID]; seen {
				rep.Duplicates++
			} else {
				order = append(order, ev.DecisionID)
			}
			byID[ev.DecisionID] = ev
		}); err != nil {
			return nil, err
		}
	}
	type callKey struct{ subject, method, route, action string }
	idents := map[[2]string]*Identity{}
	calls := map[callKey]*CallSummary{}
	revs := map[callKey]map[string]bool{}
	for _, id := range order {
		ev := byID[id]
		if !opts.Since.IsZero() && ev.Timestamp.Before(opts.Since) {
			continue
		}
		if !opts.Until.IsZero() && !ev.Timestamp.Before(opts.Until) {
			continue
		}
		method := strings.ToUpper(ev.Input.Request.Method)
		if opts.WritesOnly && (method == "GET" || method == "HEAD" || method == "OPTIONS") {
			continue
		}
		rep.Events++
		segs := ev.Input.Request.Segments
		if segs == nil {
			segs = strings.FieldsFunc(ev.Input.Request.Path, func(r rune) bool { return r == '/' })
		}
		action := ev.Labels["action"]
		if action == "" {
			for _, p := range pats {
				if p.match(method, segs) {
					action = p.raw
					break
				}
			}
		}
		if action == "" {
			action = method + " " + pathTemplate(segs)
		}
		ik := [2]string{ev.Subject, ev.IdentityMethod}
		ident := idents[ik]
		if ident == nil {
			ident = &Identity{Subject: ev.Subject, Method: ev.IdentityMethod}
			idents[ik] = ident
		}
		ck := callKey{ev.Subject, ev.IdentityMethod, ev.Route, action}
		cs := calls[ck]
		if cs == nil {
			cs = &CallSummary{Route: ev.Route, Action: action, First: ev.Timestamp, Last: ev.Timestamp}
			calls[ck] = cs
			revs[ck] = map[string]bool{}
		}
		if ev.Allowed {
			ident.Allowed++
			cs.Allowed++
		} else {
			ident.Denied++
			cs.Denied++
		}
		if ev.Timestamp.Before(cs.First) {
			cs.First = ev.Timestamp
		}
		if ev.Timestamp.After(cs.Last) {
			cs.Last = ev.Timestamp
		}
		for name, b := range ev.Bundles {
			revs[ck][name+"@"+b.Revision] = true
		}
	}
	for ck, cs := range calls {
		for r := range revs[ck] {
			cs.Revisions = append(cs.Revisions, r)
		}
		sort.Strings(cs.Revisions)
		if cs.Revisions == nil {
			cs.Revisions = []string{}
		}
		ident := idents[[2]string{ck.subject, ck.method}]
		ident.Calls = append(ident.Calls, *cs)
	}
	for _, ident := range idents {
		sort.Slice(ident.Calls, func(a, b int) bool {
			x, y := ident.Calls[a], ident.Calls[b]
			if x.Route != y.Route {
				return x.Route < y.Route
			}
			return x.Action < y.Action
		})
		rep.Identities = append(rep.Identities, *ident)
	}
	sort.Slice(rep.Identities, func(a, b int) bool {
		x, y := rep.Identities[a], rep.Identities[b]
		if x.Subject != y.Subject {
			return x.Subject < y.Subject
		}
		return x.Method < y.Method
	})
	if rep.Identities == nil {
		rep.Identities = []Identity{}
	}
	return rep, nil
}

// readEvents calls fn for each decision event in path, and with nil for
// each other line.
func readEvents(path string, fn func(*reportEvent)) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 256<<10)
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 {
			var ev reportEvent
			if json.Unmarshal(line, &ev) != nil || ev.DecisionID == "" {
				fn(nil)
			} else {
				fn(&ev)
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("report: %s: %w", path, err)
		}
	}
}

// WriteCSV writes the report as CSV, one row per identity, route and
// action.
func (r *AccessReport) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"subject", "identity_method", "route", "action", "allowed", "denied", "revisions", "first_seen", "last_seen"})
	for _, id := range r.Identities {
		for _, c := range id.Calls {
			_ = cw.Write([]string{
				csvSafe(id.Subject), csvSafe(id.Method), csvSafe(c.Route), csvSafe(c.Action),
				strconv.Itoa(c.Allowed), strconv.Itoa(c.Denied), csvSafe(strings.Join(c.Revisions, " ")),
				c.First.UTC().Format(time.RFC3339Nano), c.Last.UTC().Format(time.RFC3339Nano),
			})
		}
	}
	cw.Flush()
	return cw.Error()
}

// csvSafe defuses values a spreadsheet would run as a formula: subjects and
// paths come from callers.
func csvSafe(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

// WriteJSON writes the report as one indented JSON document.
func (r *AccessReport) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
