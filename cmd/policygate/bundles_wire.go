package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/open-policy-agent/opa/v1/bundle"

	"github.com/policygate/policygate/bundles"
	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/decision/rego"
)

// engineActivator compiles a complete bundle set with every route's rule
// path and, only when that succeeds, swaps the engine's policy. A set that
// does not compile leaves the serving policy untouched.
type engineActivator struct {
	engine *decision.Engine
	paths  []string
}

var _ bundles.Activator = (*engineActivator)(nil)

func (a *engineActivator) Activate(ctx context.Context, set map[string]*bundle.Bundle) (map[string]string, error) {
	if a.engine == nil {
		return nil, fmt.Errorf("no engine to activate")
	}
	p, err := rego.CompileBundles(ctx, set, a.paths)
	if err != nil {
		return nil, err
	}
	a.engine.Activate(p)
	return p.Bundles(), nil
}

// checkBundles verifies and compiles the file and directory bundles
// offline, for `policygate check`. With a URL source among them the set
// cannot be compiled as a whole, so only each local bundle's signature and
// format are checked.
func checkBundles(ctx context.Context, g *gateway) (string, error) {
	set, remote, err := g.bundles.LoadLocal()
	if err != nil {
		return "", err
	}
	if len(remote) > 0 {
		return fmt.Sprintf("%d local bundles verified, %d remote not checked", len(set), len(remote)), nil
	}
	p, err := rego.CompileBundles(ctx, set, g.cfg.policyPaths())
	if err != nil {
		return "", fmt.Errorf("bundles: %w", err)
	}
	return "bundles revision " + p.Revision(), nil
}

// statusDoc is the body of GET /v1/status.
type statusDoc struct {
	Ready   bool             `json:"ready"`
	Bundles []bundles.Status `json:"bundles"`
}

// statusHandler serves the bundles' status: each bundle's revision, last
// download, last activation and last error. With policy.dir the one
// directory loaded at start is reported. It answers 200 either way: /ready
// is the readiness probe.
func statusHandler(g *gateway, started time.Time) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		doc := statusDoc{Ready: g.engine.Ready(), Bundles: []bundles.Status{}}
		switch {
		case g.bundles != nil:
			doc.Bundles = g.bundles.Status()
		case g.policy != nil:
			doc.Bundles = append(doc.Bundles, bundles.Status{
				Name:           g.cfg.policyName,
				Type:           "dir",
				Source:         g.cfg.policyDir,
				Revision:       g.policy.Revision(),
				LastActivation: &started,
			})
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(doc)
	}
}
