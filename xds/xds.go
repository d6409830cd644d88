// Package xds builds the Envoy configuration policygate serves over xDS:
// from the gateway's routes it produces one ingress Listener (HTTP
// connection manager with the ext_authz filter pointing at policygate, then
// the router), its RouteConfiguration, a Cluster per upstream plus the
// ext_authz cluster, and ClusterLoadAssignments, packed into consistent
// go-control-plane snapshots whose versions are content hashes. The ADS
// server that publishes them lives in xds/server.
//
// The builder is pure: no I/O, no clock, no network; the same routes give
// byte-identical resources and the same versions. It must not import
// decision, bundles or gateway/proxy; routes arrive as this package's Route,
// which the caller fills from the gateway's routing table.
//
// Concurrency: a *Builder is immutable after New and safe for concurrent
// use. Resources, Snapshot and Set values are immutable once returned.
package xds

import (
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// Route is one gateway route as the Envoy configuration needs it. The
// fields mean what they mean in the gateway's routing table.
type Route struct {
	// Name is the route's unique name; it names the Envoy route and reaches
	// policygate's ext_authz as the RouteContextKey context extension.
	Name string
	// Host is the canonical host the route matches; "" matches any.
	Host string
	// PathPrefix matches on a segment boundary; "" or "/" matches all.
	PathPrefix string
	// Upstream is the backend: http or https, host and optional port.
	Upstream *url.URL
	// Timeout bounds the upstream's answer. Zero leaves Envoy's default.
	Timeout time.Duration
	// AllowEncodedSlash keeps %2F in paths for this route's listener
	// instead of rejecting it.
	AllowEncodedSlash bool
}

// Builder turns routes into Envoy resources under one Config.
type Builder struct {
	s *settings
}

// New validates cfg and returns a Builder. Errors name the key relative to
// the xds section (e.g. "ext_authz.address: ...") and are all reported at
// once.
func New(cfg Config) (*Builder, error) {
	s, err := cfg.parse()
	if err != nil {
		return nil, err
	}
	return &Builder{s: s}, nil
}

// Node group keys. Every node maps to exactly one group; each group has
// one snapshot.
const (
	// DefaultGroup is the group of nodes no nodes entry selects: they get
	// every route.
	DefaultGroup       = "default"
	groupIDPrefix      = "id/"
	groupClusterPrefix = "cluster/"
)

// NodeKey returns the snapshot group of a node: its nodes entry by id, else
// by cluster, else DefaultGroup.
func (b *Builder) NodeKey(node *corev3.Node) string {
	id, cluster := node.GetId(), node.GetCluster()
	for _, n := range b.s.nodes {
		if n.ID != "" && n.ID == id {
			return groupIDPrefix + n.ID
		}
	}
	for _, n := range b.s.nodes {
		if n.Cluster != "" && n.Cluster == cluster {
			return groupClusterPrefix + n.Cluster
		}
	}
	return DefaultGroup
}

// Set is the snapshot of every node group for one set of routes.
type Set struct {
	// Snapshots maps a group key (NodeKey) to its snapshot.
	Snapshots map[string]*Snapshot
}

// Version is a content hash of every group's snapshot.
func (s *Set) Version() string {
	keys := make([]string, 0, len(s.Snapshots))
	for k := range s.Snapshots {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := newHasher()
	for _, k := range keys {
		h.field(k)
		h.field(s.Snapshots[k].Version())
	}
	return h.sum()
}

// Build validates routes and returns the snapshot of every node group:
// DefaultGroup with every route, and one per nodes entry with its routes.
// Errors name the route ("routes[2].upstream: ...") or the nodes entry.
func (b *Builder) Build(routes []Route) (*Set, error) {
	if err := validateRoutes(routes); err != nil {
		return nil, err
	}
	byName := make(map[string]Route, len(routes))
	for _, r := range routes {
		byName[r.Name] = r
	}
	var errs []error
	groups := map[string][]Route{DefaultGroup: routes}
	for i, n := range b.s.nodes {
		var sel []Route
		for j, name := range n.Routes {
			r, ok := byName[name]
			if !ok {
				errs = append(errs, fmt.Errorf("nodes[%d].routes[%d]: unknown route %q", i, j, name))
				continue
			}
			sel = append(sel, r)
		}
		key := groupIDPrefix + n.ID
		if n.ID == "" {
			key = groupClusterPrefix + n.Cluster
		}
		groups[key] = sel
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	set := &Set{Snapshots: make(map[string]*Snapshot, len(groups))}
	for key, rs := range groups {
		res, err := b.Resources(rs)
		if err != nil {
			return nil, fmt.Errorf("xds: group %s: %w", key, err)
		}
		snap, err := res.Snapshot()
		if err != nil {
			return nil, fmt.Errorf("xds: group %s: %w", key, err)
		}
		set.Snapshots[key] = snap
	}
	return set, nil
}

// validateRoutes checks what the builder relies on; the gateway's routing
// table guarantees it already, other callers may not.
func validateRoutes(routes []Route) error {
	var errs []error
	names := map[string]bool{}
	for i, r := range routes {
		key := fmt.Sprintf("routes[%d]", i)
		if r.Name == "" {
			errs = append(errs, fmt.Errorf("%s.name: required", key))
		} else if names[r.Name] {
			errs = append(errs, fmt.Errorf("%s.name: duplicate route name %q", key, r.Name))
		}
		names[r.Name] = true
		if r.PathPrefix != "" && (!strings.HasPrefix(r.PathPrefix, "/") || strings.ContainsAny(r.PathPrefix, "?#")) {
			errs = append(errs, fmt.Errorf("%s.path_prefix: %q is not a path", key, r.PathPrefix))
		}
		if u := r.Upstream; u == nil {
			errs = append(errs, fmt.Errorf("%s.upstream: required", key))
		} else if (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
			errs = append(errs, fmt.Errorf("%s.upstream: %q must be an http or https URL with a host", key, u.String()))
		} else if _, err := upstreamPort(u); err != nil {
			errs = append(errs, fmt.Errorf("%s.upstream: %w", key, err))
		}
		if r.Timeout < 0 {
			errs = append(errs, fmt.Errorf("%s.timeout: %s is negative", key, r.Timeout))
		}
	}
	return errors.Join(errs...)
}
