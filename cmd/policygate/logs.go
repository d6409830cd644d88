package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	decisionlog "github.com/policygate/policygate/decision/log"
)

const logsUsage = "usage: policygate logs verify FILE... [--public-key PUB]\n"

// cmdLogs runs `policygate logs verify`: it checks the hash chain and the
// signed checkpoints of decision-log files and names the first edited,
// deleted, inserted or reordered event by file:line and seq.
func cmdLogs(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "verify" {
		fmt.Fprint(stderr, logsUsage)
		return errUsage
	}
	fs := flag.NewFlagSet("logs verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	pubFile := fs.String("public-key", "", "PEM Ed25519 public key the checkpoints are signed with")
	files, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return errUsage
	}
	if len(files) == 0 {
		fmt.Fprint(stderr, logsUsage)
		return errUsage
	}
	var opts decisionlog.VerifyOptions
	if *pubFile != "" {
		raw, err := os.ReadFile(*pubFile)
		if err != nil {
			fmt.Fprintln(stderr, "policygate logs verify:", err)
			return errFailed
		}
		if opts.PublicKey, err = decisionlog.ParsePublicKey(raw); err != nil {
			fmt.Fprintf(stderr, "policygate logs verify: %s: %v\n", *pubFile, err)
			return errFailed
		}
	}
	res, err := decisionlog.Verify(files, opts)
	if err != nil {
		fmt.Fprintln(stderr, "policygate logs verify:", err)
		return errFailed
	}
	for _, n := range res.Notes {
		fmt.Fprintln(stdout, "note:", n)
	}
	if res.Problem != nil {
		fmt.Fprintln(stdout, "FAILED:", res.Problem)
		return errFailed
	}
	signed := "signatures not checked (no --public-key)"
	if opts.PublicKey != nil {
		signed = fmt.Sprintf("signed through seq %d", res.SignedThrough)
	}
	fmt.Fprintf(stdout, "ok: %d events (seq %d..%d) in %d files; %d checkpoints, %s\n",
		res.Events, res.FirstSeq, res.LastSeq, len(res.Files), res.Checkpoints, signed)
	return nil
}

// parseInterspersed parses flags wherever they appear among the positional
// arguments (`verify FILE --public-key K`); everything after "--" is
// positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var tail []string
	for i, a := range args {
		if a == "--" {
			args, tail = args[:i], args[i+1:]
			break
		}
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return append(pos, tail...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }
