package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	decisionlog "github.com/policygate/policygate/decision/log"
)

const reportUsage = `usage: policygate report --logs FILE... [--since T] [--until T] [--format csv|json]
                         [--writes-only] [--action "METHOD /path/*"]...
`

// cmdReport runs `policygate report`: the access review of decision logs —
// per identity, the calls allowed and denied by route and action, with the
// policy revisions that decided them.
func cmdReport(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var logs, actions stringList
	fs.Var(&logs, "logs", "decision-log file (repeatable; further files may follow)")
	since := fs.String("since", "", "only events at or after T (RFC 3339, YYYY-MM-DD, or a duration ago such as 24h)")
	until := fs.String("until", "", "only events before T (same forms)")
	format := fs.String("format", "csv", "csv or json")
	writesOnly := fs.Bool("writes-only", false, "only state-changing calls (not GET, HEAD, OPTIONS)")
	fs.Var(&actions, "action", `name calls the policy does not label: "METHOD /segment/*/**" (repeatable)`)
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return errUsage
	}
	files := append([]string(logs), rest...)
	if len(files) == 0 || (*format != "csv" && *format != "json") {
		fmt.Fprint(stderr, reportUsage)
		return errUsage
	}
	now := time.Now()
	opts := decisionlog.ReportOptions{WritesOnly: *writesOnly, Actions: actions}
	for _, f := range []struct {
		name string
		val  string
		dst  *time.Time
	}{{"since", *since, &opts.Since}, {"until", *until, &opts.Until}} {
		if f.val == "" {
			continue
		}
		t, err := parseWhen(f.val, now)
		if err != nil {
			fmt.Fprintf(stderr, "policygate report: --%s: %v\n", f.name, err)
			return errUsage
		}
		*f.dst = t
	}
	rep, err := decisionlog.BuildReport(files, opts)
	if err != nil {
		fmt.Fprintln(stderr, "policygate report:", err)
		return errFailed
	}
	if *format == "json" {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteCSV(stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, "policygate report:", err)
		return errFailed
	}
	return nil
}

// parseWhen reads an RFC 3339 time, a date (midnight UTC) or a duration
// before now.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is not an RFC 3339 time, a YYYY-MM-DD date or a positive duration", s)
}
