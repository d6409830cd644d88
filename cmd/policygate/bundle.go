package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/open-policy-agent/opa/v1/bundle"

	"github.com/policygate/policygate/bundles"
	"github.com/policygate/policygate/decision/rego"
)

const bundleUsage = `usage:
  policygate bundle build DIR -o FILE [--revision R] [--signing-key KEY] [--signing-alg RS256] [--signing-key-id default] [--claims-file FILE]
  policygate bundle inspect [--verification-key PUB] [--verification-key-id default] [--signing-alg RS256] [--scope S] FILE
`

func cmdBundle(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, bundleUsage)
		return errUsage
	}
	switch args[0] {
	case "build":
		return cmdBundleBuild(ctx, args[1:], stdout, stderr)
	case "inspect":
		return cmdBundleInspect(args[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "policygate bundle: unknown command %q\n%s", args[0], bundleUsage)
		return errUsage
	}
}

func cmdBundleBuild(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bundle build", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "output bundle file (.tar.gz)")
	var opts bundles.BuildOptions
	fs.StringVar(&opts.Revision, "revision", "", "manifest revision (default: keep the directory's .manifest revision)")
	fs.StringVar(&opts.SigningKey, "signing-key", "", "PEM private key file to sign the bundle with")
	fs.StringVar(&opts.SigningAlg, "signing-alg", bundles.DefaultAlg, "JWS signing algorithm")
	fs.StringVar(&opts.KeyID, "signing-key-id", bundles.DefaultKeyID, "key id recorded in the signature")
	fs.StringVar(&opts.ClaimsFile, "claims-file", "", "JSON file of extra signature claims (e.g. scope)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return errUsage
	}
	if len(pos) != 1 || *out == "" {
		fmt.Fprint(stderr, bundleUsage)
		return errUsage
	}
	dir := pos[0]
	b, err := bundles.Build(dir, opts)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return errFailed
	}
	// A bundle that does not compile would be rejected by every gateway.
	if _, err := rego.CompileBundles(ctx, map[string]*bundle.Bundle{filepath.Base(filepath.Clean(dir)): b}, nil); err != nil {
		fmt.Fprintln(stderr, err)
		return errFailed
	}
	raw, err := bundles.Encode(b)
	if err == nil {
		err = bundles.WriteFileAtomic(*out, raw, 0o644)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return errFailed
	}
	signed := "unsigned"
	if opts.SigningKey != "" {
		signed = "signed with key id " + opts.KeyID
	}
	rev := b.Manifest.Revision
	if rev == "" {
		rev = "(none: served under a content hash)"
	}
	fmt.Fprintf(stdout, "%s: revision %s, %d modules, %s\n", *out, rev, len(b.Modules), signed)
	return nil
}

func cmdBundleInspect(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bundle inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var sc bundles.SigningConfig
	fs.StringVar(&sc.PublicKeyFile, "verification-key", "", "PEM public key: verify the bundle's signature with it")
	fs.StringVar(&sc.KeyID, "verification-key-id", bundles.DefaultKeyID, "key id of the verification key")
	fs.StringVar(&sc.Algorithm, "signing-alg", bundles.DefaultAlg, "JWS algorithm of the verification key")
	fs.StringVar(&sc.Scope, "scope", "", "required signature scope")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return errUsage
	}
	if len(pos) != 1 {
		fmt.Fprint(stderr, bundleUsage)
		return errUsage
	}
	var vc *bundle.VerificationConfig
	if sc.PublicKeyFile != "" {
		if vc, err = sc.Verification(""); err != nil {
			fmt.Fprintln(stderr, "verification key:", err)
			return errFailed
		}
	}
	var b *bundle.Bundle
	if st, serr := os.Stat(pos[0]); serr == nil && st.IsDir() {
		b, err = bundles.ReadDir(pos[0], vc)
	} else if vc != nil {
		b, err = bundles.ReadFile(pos[0], 0, vc)
	} else {
		b, err = bundles.ReadFileUnverified(pos[0], 0)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return errFailed
	}
	info, err := bundles.Inspect(b, vc != nil)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return errFailed
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(info)
}
