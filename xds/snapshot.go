package xds

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"sort"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
)

// Resources is one node group's Envoy configuration.
type Resources struct {
	Listeners    []*listenerv3.Listener
	RouteConfigs []*routev3.RouteConfiguration
	Clusters     []*clusterv3.Cluster
	Endpoints    []*endpointv3.ClusterLoadAssignment
}

// Snapshot is a consistent, content-versioned snapshot of Resources.
type Snapshot struct {
	version   string
	versions  map[string]string // type URL → version
	resources *Resources
	cache     *cachev3.Snapshot
}

// Version is a content hash of every resource in the snapshot.
func (s *Snapshot) Version() string { return s.version }

// TypeVersion is the version of one resource type: a content hash of that
// type's resources, so a change to clusters leaves the listener's version,
// and Envoy's listener, alone.
func (s *Snapshot) TypeVersion(typeURL string) string { return s.versions[typeURL] }

// Resources returns the snapshot's resources. They must not be modified.
func (s *Snapshot) Resources() *Resources { return s.resources }

// Cache returns the go-control-plane snapshot, already checked Consistent.
func (s *Snapshot) Cache() *cachev3.Snapshot { return s.cache }

// Snapshot checks r (every resource valid by Envoy's own constraints, names
// unique per type, every route's cluster defined, every RDS and EDS
// reference satisfied: Consistent) and versions each type by a content hash
// of its deterministic protobuf encoding.
func (r *Resources) Snapshot() (*Snapshot, error) {
	groups := []struct {
		typeURL string
		items   []types.Resource
	}{
		{resourcev3.ClusterType, asResources(r.Clusters)},
		{resourcev3.EndpointType, asResources(r.Endpoints)},
		{resourcev3.ListenerType, asResources(r.Listeners)},
		{resourcev3.RouteType, asResources(r.RouteConfigs)},
	}
	snap := &Snapshot{versions: map[string]string{}, resources: r, cache: &cachev3.Snapshot{}}
	all := newHasher()
	for _, g := range groups {
		v, err := versionOf(g.typeURL, g.items)
		if err != nil {
			return nil, err
		}
		snap.versions[g.typeURL] = v
		snap.cache.Resources[cachev3.GetResponseType(g.typeURL)] = cachev3.NewResources(v, g.items)
		all.field(g.typeURL)
		all.field(v)
	}
	snap.version = all.sum()
	if err := snap.Consistent(); err != nil {
		return nil, err
	}
	return snap, nil
}

// Consistent checks the snapshot with go-control-plane's Consistent and
// with this package's own reference check, which also follows API
// listeners: go-control-plane reads RDS references from filter chains only,
// so a proxyless gRPC listener's route configuration looks unreferenced to
// it, and such snapshots rely on the own check alone.
func (s *Snapshot) Consistent() error {
	if err := s.resources.references(); err != nil {
		return fmt.Errorf("xds: snapshot %s is not consistent: %w", s.version, err)
	}
	for _, l := range s.resources.Listeners {
		if l.GetApiListener() != nil {
			return nil
		}
	}
	if err := s.cache.Consistent(); err != nil {
		return fmt.Errorf("xds: snapshot %s is not consistent: %w", s.version, err)
	}
	return nil
}

// references checks that the route configurations are exactly those the
// listeners load by RDS (through filter chains or API listeners), that the
// endpoints are exactly those the EDS clusters load, and that every route
// action names a defined cluster: Envoy would answer such routes with 503.
func (r *Resources) references() error {
	var errs []error
	rds := map[string]bool{}
	addHCM := func(hcm *hcmv3.HttpConnectionManager) {
		if name := hcm.GetRds().GetRouteConfigName(); name != "" {
			rds[name] = true
		}
	}
	for _, l := range r.Listeners {
		chains := l.GetFilterChains()
		if d := l.GetDefaultFilterChain(); d != nil {
			chains = append(chains[:len(chains):len(chains)], d)
		}
		for _, fc := range chains {
			for _, f := range fc.GetFilters() {
				if hcm := resourcev3.GetHTTPConnectionManager(f); hcm != nil {
					addHCM(hcm)
				}
			}
		}
		if a := l.GetApiListener().GetApiListener(); a != nil {
			hcm := &hcmv3.HttpConnectionManager{}
			if err := a.UnmarshalTo(hcm); err != nil {
				errs = append(errs, fmt.Errorf("xds: listener %q: api_listener: %w", l.GetName(), err))
				continue
			}
			addHCM(hcm)
		}
	}
	routeConfigs := map[string]bool{}
	for _, rc := range r.RouteConfigs {
		routeConfigs[rc.GetName()] = true
	}
	errs = append(errs, sameNames("route configuration", rds, routeConfigs)...)

	clusters, eds := map[string]bool{}, map[string]bool{}
	for _, c := range r.Clusters {
		clusters[c.GetName()] = true
		if c.GetType() == clusterv3.Cluster_EDS {
			name := c.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = c.GetName()
			}
			eds[name] = true
		}
	}
	endpoints := map[string]bool{}
	for _, e := range r.Endpoints {
		endpoints[e.GetClusterName()] = true
	}
	errs = append(errs, sameNames("cluster load assignment", eds, endpoints)...)

	for _, rc := range r.RouteConfigs {
		for _, vh := range rc.GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				if c := rt.GetRoute().GetCluster(); c != "" && !clusters[c] {
					errs = append(errs, fmt.Errorf("xds: route configuration %q route %q: cluster %q is not defined", rc.GetName(), rt.GetName(), c))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// sameNames reports referenced names that are missing and present names
// nothing references, in a stable order.
func sameNames(kind string, referenced, present map[string]bool) []error {
	var missing, unused []string
	for n := range referenced {
		if !present[n] {
			missing = append(missing, n)
		}
	}
	for n := range present {
		if !referenced[n] {
			unused = append(unused, n)
		}
	}
	sort.Strings(missing)
	sort.Strings(unused)
	var errs []error
	for _, n := range missing {
		errs = append(errs, fmt.Errorf("xds: %s %q is referenced but not defined", kind, n))
	}
	for _, n := range unused {
		errs = append(errs, fmt.Errorf("xds: %s %q is defined but not referenced", kind, n))
	}
	return errs
}

func asResources[T types.Resource](in []T) []types.Resource {
	out := make([]types.Resource, len(in))
	for i, m := range in {
		out[i] = m
	}
	return out
}

// validator is what Envoy's generated protos implement: the constraints of
// the API's validate annotations, all violations at once.
type validator interface{ ValidateAll() error }

// versionOf validates items, rejects duplicate names and hashes the
// deterministic encoding of every item in name order.
func versionOf(typeURL string, items []types.Resource) (string, error) {
	type named struct {
		name string
		b    []byte
	}
	list := make([]named, 0, len(items))
	seen := map[string]bool{}
	var errs []error
	for _, m := range items {
		name := cachev3.GetResourceName(m)
		if name == "" {
			errs = append(errs, fmt.Errorf("xds: %s: resource name is required", typeURL))
			continue
		}
		if seen[name] {
			errs = append(errs, fmt.Errorf("xds: %s: duplicate resource name %q", typeURL, name))
			continue
		}
		seen[name] = true
		if v, ok := m.(validator); ok {
			if err := v.ValidateAll(); err != nil {
				errs = append(errs, fmt.Errorf("xds: %s %q: %w", typeURL, name, err))
				continue
			}
		}
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			errs = append(errs, fmt.Errorf("xds: %s %q: marshal: %w", typeURL, name, err))
			continue
		}
		list = append(list, named{name, b})
	}
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	sort.Slice(list, func(i, j int) bool { return list[i].name < list[j].name })
	h := newHasher()
	h.field(typeURL)
	for _, n := range list {
		h.field(n.name)
		h.field(string(n.b))
	}
	return h.sum(), nil
}

// hasher hashes length-prefixed fields, so no two field lists collide by
// concatenation.
type hasher struct{ h hash.Hash }

func newHasher() *hasher { return &hasher{h: sha256.New()} }

func (h *hasher) field(s string) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(s)))
	h.h.Write(n[:])
	h.h.Write([]byte(s))
}

// sum is the first 64 bits of the SHA-256, in hex: short enough for Envoy's
// logs and stats, long enough that distinct configurations never share one.
func (h *hasher) sum() string { return hex.EncodeToString(h.h.Sum(nil)[:8]) }
