package xds

import (
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// flavor is who consumes the resources: Envoy, or a proxyless gRPC client,
// which supports a subset (no ext_authz filter, no path_separated_prefix,
// no STRICT_DNS, TLS only through its own certificate providers).
type flavor int

const (
	envoyFlavor flavor = iota
	proxylessFlavor
)

const (
	upstreamConnectTimeout = 5 * time.Second
	authzConnectTimeout    = time.Second
	earlyMutationName      = "policygate.strip_untrusted_headers"
	httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// untrustedHeaders are removed from every request before Envoy routes it or
// asks policygate, as the gateway's own front door removes them: method
// overrides (the policy must see the method the upstream acts on) and
// forwarding or path-override headers, which only a trusted proxy may set.
// Envoy rebuilds X-Forwarded-For and X-Forwarded-Proto itself
// (use_remote_address).
var untrustedHeaders = []string{
	"x-http-method-override", "x-http-method", "x-method-override",
	"forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
	"x-forwarded-port", "x-forwarded-uri", "x-forwarded-path", "x-forwarded-prefix",
	"x-forwarded-method", "x-original-url", "x-original-uri", "x-original-method",
	"x-rewrite-url", "x-envoy-original-path", "x-real-ip", "x-client-ip",
	"true-client-ip", "cf-connecting-ip",
	"x-decision-id",
}

// gatewayHeaderPrefix names the headers policygate sets for upstreams; a
// client must not be able to send them.
const gatewayHeaderPrefix = "x-policygate-"

// Resources returns the Envoy resources for routes: the ingress listener,
// its route configuration, the ext_authz cluster, one cluster per distinct
// upstream and the endpoints of upstreams given by IP address.
func (b *Builder) Resources(routes []Route) (*Resources, error) {
	if err := validateRoutes(routes); err != nil {
		return nil, err
	}
	rs := ordered(routes)
	keepEncodedSlash := false
	for _, r := range rs {
		keepEncodedSlash = keepEncodedSlash || r.AllowEncodedSlash
	}
	lis, err := b.listener(keepEncodedSlash)
	if err != nil {
		return nil, err
	}
	rc, err := routeConfig(RouteConfigName, rs, envoyFlavor)
	if err != nil {
		return nil, err
	}
	authz, err := b.authzCluster()
	if err != nil {
		return nil, err
	}
	res := &Resources{
		Listeners:    []*listenerv3.Listener{lis},
		RouteConfigs: []*routev3.RouteConfiguration{rc},
		Clusters:     []*clusterv3.Cluster{authz},
	}
	if err := b.addUpstreams(res, rs, envoyFlavor); err != nil {
		return nil, err
	}
	return res, nil
}

// Proxyless returns resources for a proxyless gRPC client dialing
// "xds:///name": an API listener named name that loads the route
// configuration named name by RDS, the routes' clusters and endpoints.
// gRPC has no ext_authz filter, so these routes are not checked by
// policygate: publish them only for upstreams that enforce policy
// themselves. https upstreams are refused (gRPC needs its own xDS
// certificate providers for TLS).
func (b *Builder) Proxyless(name string, routes []Route) (*Resources, error) {
	if name == "" {
		return nil, fmt.Errorf("xds: proxyless listener name is required")
	}
	if err := validateRoutes(routes); err != nil {
		return nil, err
	}
	rs := ordered(routes)
	lis, err := ProxylessListener(name, name)
	if err != nil {
		return nil, err
	}
	rc, err := routeConfig(name, rs, proxylessFlavor)
	if err != nil {
		return nil, err
	}
	res := &Resources{
		Listeners:    []*listenerv3.Listener{lis},
		RouteConfigs: []*routev3.RouteConfiguration{rc},
	}
	if err := b.addUpstreams(res, rs, proxylessFlavor); err != nil {
		return nil, err
	}
	return res, nil
}

// ProxylessListener returns the API listener a proxyless gRPC client
// resolves for "xds:///name": an HTTP connection manager that loads
// routeConfig over ADS, with only the router filter.
func ProxylessListener(name, routeConfig string) (*listenerv3.Listener, error) {
	router, err := typedAny(&routerv3.Router{})
	if err != nil {
		return nil, err
	}
	hcm, err := typedAny(&hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: routeConfig,
		}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: wellknown.Router, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
	})
	if err != nil {
		return nil, err
	}
	return &listenerv3.Listener{
		Name:        name,
		ApiListener: &listenerv3.ApiListener{ApiListener: hcm},
	}, nil
}

// listener is the ingress listener: ext_authz, then the router. Envoy
// normalizes the path (RFC 3986 dot-segments, merged slashes) before any
// filter runs, so policygate is asked about exactly the path Envoy
// forwards; encoded slashes are rejected unless a route allows them.
func (b *Builder) listener(keepEncodedSlash bool) (*listenerv3.Listener, error) {
	authz := &extauthzv3.ExtAuthz{
		Services: &extauthzv3.ExtAuthz_GrpcService{GrpcService: &corev3.GrpcService{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: ExtAuthzClusterName}},
			Timeout:         durationpb.New(b.s.authzTimeout),
		}},
		TransportApiVersion:    corev3.ApiVersion_V3,
		FailureModeAllow:       b.s.failureAllow,
		IncludePeerCertificate: true,
		// An unreachable or failing policygate is an outage, not a denial
		// the policy made.
		StatusOnError: &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable},
	}
	if b.s.bodyBytes > 0 {
		authz.WithRequestBody = &extauthzv3.BufferSettings{
			MaxRequestBytes: b.s.bodyBytes,
			// Larger bodies are forwarded whole and the check sees the
			// prefix marked truncated, as in the gateway.
			AllowPartialMessage: true,
			PackAsBytes:         true,
		}
	}
	authzAny, err := typedAny(authz)
	if err != nil {
		return nil, err
	}
	routerAny, err := typedAny(&routerv3.Router{})
	if err != nil {
		return nil, err
	}
	mutations := make([]*mutationv3.HeaderMutation, 0, len(untrustedHeaders)+1)
	for _, h := range untrustedHeaders {
		mutations = append(mutations, &mutationv3.HeaderMutation{Action: &mutationv3.HeaderMutation_Remove{Remove: h}})
	}
	mutations = append(mutations, &mutationv3.HeaderMutation{Action: &mutationv3.HeaderMutation_RemoveOnMatch_{
		RemoveOnMatch: &mutationv3.HeaderMutation_RemoveOnMatch{KeyMatcher: &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: gatewayHeaderPrefix},
			IgnoreCase:   true,
		}},
	}})
	early, err := typedAny(&headermutationv3.HeaderMutation{Mutations: mutations})
	if err != nil {
		return nil, err
	}
	slashes := hcmv3.HttpConnectionManager_REJECT_REQUEST
	if keepEncodedSlash {
		// policygate still rejects %2F for every route that does not
		// allow it: its check canonicalizes with the matched route's rules.
		slashes = hcmv3.HttpConnectionManager_KEEP_UNCHANGED
	}
	hcm, err := typedAny(&hcmv3.HttpConnectionManager{
		StatPrefix: ListenerName,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: RouteConfigName,
		}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: ExtAuthzFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: authzAny}},
			{Name: wellknown.Router, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: routerAny}},
		},
		EarlyHeaderMutationExtensions: []*corev3.TypedExtensionConfig{{Name: earlyMutationName, TypedConfig: early}},
		NormalizePath:                 wrapperspb.Bool(true),
		MergeSlashes:                  true,
		PathWithEscapedSlashesAction:  slashes,
		UseRemoteAddress:              wrapperspb.Bool(true),
		// Route by host without port, as the gateway canonicalizes it.
		StripPortMode: &hcmv3.HttpConnectionManager_StripAnyHostPort{StripAnyHostPort: true},
	})
	if err != nil {
		return nil, err
	}
	return &listenerv3.Listener{
		Name:    ListenerName,
		Address: socketAddress(b.s.listenAddr, b.s.listenPort),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       wellknown.HTTPConnectionManager,
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm},
			}},
		}},
	}, nil
}

// ordered sorts routes as the gateway matches them: hosted before any-host,
// then longest prefix, then name for a stable order.
func ordered(routes []Route) []Route {
	rs := append([]Route(nil), routes...)
	sort.SliceStable(rs, func(i, j int) bool {
		a, b := rs[i], rs[j]
		if (a.Host != "") != (b.Host != "") {
			return a.Host != ""
		}
		if pa, pb := trimPrefix(a.PathPrefix), trimPrefix(b.PathPrefix); len(pa) != len(pb) {
			return len(pa) > len(pb)
		}
		return a.Name < b.Name
	})
	return rs
}

func trimPrefix(p string) string { return strings.TrimSuffix(p, "/") }

// routeConfig has one virtual host per route host and one for any host.
// A host's virtual host lists its own routes and then the any-host ones,
// because the gateway falls back to an any-host route when no route of
// the host matches the path.
func routeConfig(name string, rs []Route, f flavor) (*routev3.RouteConfiguration, error) {
	var hosts []string
	byHost := map[string][]Route{}
	var anyHost []Route
	for _, r := range rs {
		if r.Host == "" {
			anyHost = append(anyHost, r)
			continue
		}
		if _, ok := byHost[r.Host]; !ok {
			hosts = append(hosts, r.Host)
		}
		byHost[r.Host] = append(byHost[r.Host], r)
	}
	sort.Strings(hosts)
	rc := &routev3.RouteConfiguration{Name: name}
	addHost := func(vhName string, domains []string, routes []Route) error {
		vh := &routev3.VirtualHost{Name: vhName, Domains: domains}
		for _, r := range routes {
			rt, err := envoyRoute(r, f)
			if err != nil {
				return err
			}
			vh.Routes = append(vh.Routes, rt)
		}
		rc.VirtualHosts = append(rc.VirtualHosts, vh)
		return nil
	}
	for _, h := range hosts {
		if err := addHost(h, []string{h}, append(byHost[h], anyHost...)); err != nil {
			return nil, err
		}
	}
	if len(anyHost) > 0 {
		if err := addHost("any", []string{"*"}, anyHost); err != nil {
			return nil, err
		}
	}
	return rc, nil
}

func envoyRoute(r Route, f flavor) (*routev3.Route, error) {
	u, err := upstreamOf(r.Upstream)
	if err != nil {
		return nil, fmt.Errorf("xds: route %q: %w", r.Name, err)
	}
	action := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: u.name}}
	rt := &routev3.Route{
		Name:   r.Name,
		Match:  pathMatch(r.PathPrefix, f),
		Action: &routev3.Route_Route{Route: action},
	}
	switch f {
	case envoyFlavor:
		// The upstream sees the Host the gateway would send it.
		action.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: r.Upstream.Host}
		if r.Timeout > 0 {
			action.Timeout = durationpb.New(r.Timeout)
		}
		perRoute, err := typedAny(&extauthzv3.ExtAuthzPerRoute{Override: &extauthzv3.ExtAuthzPerRoute_CheckSettings{
			CheckSettings: &extauthzv3.CheckSettings{ContextExtensions: map[string]string{RouteContextKey: r.Name}},
		}})
		if err != nil {
			return nil, err
		}
		rt.TypedPerFilterConfig = map[string]*anypb.Any{ExtAuthzFilterName: perRoute}
	case proxylessFlavor:
		if r.Timeout > 0 {
			action.MaxStreamDuration = &routev3.RouteAction_MaxStreamDuration{MaxStreamDuration: durationpb.New(r.Timeout)}
		}
	}
	return rt, nil
}

// pathMatch matches the prefix on a segment boundary: "/api" matches "/api"
// and "/api/x", never "/apix". gRPC lacks path_separated_prefix, so its
// routes say the same with an anchored RE2 expression.
func pathMatch(prefix string, f flavor) *routev3.RouteMatch {
	p := trimPrefix(prefix)
	if p == "" {
		return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	}
	if f == proxylessFlavor {
		return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{
			Regex: "^" + regexp.QuoteMeta(p) + "(/.*)?$",
		}}}
	}
	return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: p}}
}

// upstream is one distinct backend.
type upstream struct {
	name   string
	scheme string
	host   string // without brackets
	port   uint32
	ip     bool
}

func upstreamPort(u *url.URL) (uint32, error) {
	p := u.Port()
	if p == "" {
		if u.Scheme == "https" {
			return 443, nil
		}
		return 80, nil
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q: port %q is not a port number", u.String(), p)
	}
	return uint32(n), nil
}

func upstreamOf(u *url.URL) (upstream, error) {
	port, err := upstreamPort(u)
	if err != nil {
		return upstream{}, err
	}
	host := strings.ToLower(u.Hostname())
	_, ipErr := netip.ParseAddr(host)
	return upstream{
		name:   fmt.Sprintf("upstream_%s_%s_%d", u.Scheme, host, port),
		scheme: u.Scheme,
		host:   host,
		port:   port,
		ip:     ipErr == nil,
	}, nil
}

// addUpstreams appends one cluster per distinct upstream, in name order,
// and the endpoints of those given by IP address (EDS over ADS). Names
// resolve in Envoy (STRICT_DNS) or gRPC (LOGICAL_DNS): EDS endpoints must
// be addresses.
func (b *Builder) addUpstreams(res *Resources, rs []Route, f flavor) error {
	seen := map[string]upstream{}
	for _, r := range rs {
		u, err := upstreamOf(r.Upstream)
		if err != nil {
			return fmt.Errorf("xds: route %q: %w", r.Name, err)
		}
		if u.scheme == "https" && f == proxylessFlavor {
			return fmt.Errorf("xds: route %q: https upstreams need gRPC xDS credentials; proxyless resources support http only", r.Name)
		}
		seen[u.name] = u
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		u := seen[n]
		c := &clusterv3.Cluster{
			Name:           u.name,
			ConnectTimeout: durationpb.New(upstreamConnectTimeout),
			LbPolicy:       clusterv3.Cluster_ROUND_ROBIN,
		}
		if u.ip {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}
			c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: u.name}
			res.Endpoints = append(res.Endpoints, loadAssignment(u.name, u.host, u.port))
		} else {
			typ := clusterv3.Cluster_STRICT_DNS
			if f == proxylessFlavor {
				typ = clusterv3.Cluster_LOGICAL_DNS
			}
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: typ}
			c.DnsLookupFamily = clusterv3.Cluster_V4_PREFERRED
			c.LoadAssignment = loadAssignment(u.name, u.host, u.port)
		}
		if u.scheme == "https" {
			ts, err := tlsSocket(u.host, u.ip, b.s.upstreamCAFile)
			if err != nil {
				return err
			}
			c.TransportSocket = ts
		}
		res.Clusters = append(res.Clusters, c)
	}
	return nil
}

// tlsSocket verifies the peer's certificate against caFile (or the system
// roots when empty) and the host's name or address.
func tlsSocket(host string, ip bool, caFile string) (*corev3.TransportSocket, error) {
	vc := &tlsv3.CertificateValidationContext{}
	if caFile != "" {
		vc.TrustedCa = &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: caFile}}
	} else {
		vc.SystemRootCerts = &tlsv3.CertificateValidationContext_SystemRootCerts{}
	}
	san := tlsv3.SubjectAltNameMatcher_DNS
	if ip {
		san = tlsv3.SubjectAltNameMatcher_IP_ADDRESS
	}
	vc.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{{
		SanType: san,
		Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: host}},
	}}
	tc := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc},
	}}
	if !ip {
		tc.Sni = host
	}
	a, err := typedAny(tc)
	if err != nil {
		return nil, err
	}
	return &corev3.TransportSocket{Name: wellknown.TransportSocketTLS, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}, nil
}

// authzCluster reaches policygate's ext_authz gRPC service over HTTP/2.
func (b *Builder) authzCluster() (*clusterv3.Cluster, error) {
	opts, err := typedAny(&upstreamhttpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		}},
	})
	if err != nil {
		return nil, err
	}
	typ := clusterv3.Cluster_STRICT_DNS
	_, ipErr := netip.ParseAddr(b.s.authzHost)
	if ipErr == nil {
		typ = clusterv3.Cluster_STATIC
	}
	c := &clusterv3.Cluster{
		Name:                          ExtAuthzClusterName,
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: typ},
		ConnectTimeout:                durationpb.New(authzConnectTimeout),
		LbPolicy:                      clusterv3.Cluster_ROUND_ROBIN,
		TypedExtensionProtocolOptions: map[string]*anypb.Any{httpProtocolOptionsKey: opts},
		LoadAssignment:                loadAssignment(ExtAuthzClusterName, b.s.authzHost, b.s.authzPort),
	}
	if typ == clusterv3.Cluster_STRICT_DNS {
		c.DnsLookupFamily = clusterv3.Cluster_V4_PREFERRED
	}
	if b.s.authzCAFile != "" {
		ts, err := tlsSocket(b.s.authzHost, ipErr == nil, b.s.authzCAFile)
		if err != nil {
			return nil, err
		}
		c.TransportSocket = ts
	}
	return c, nil
}

// loadAssignment is one endpoint in one locality. The locality and its
// weight mean nothing to Envoy here, but gRPC rejects endpoints without a
// locality and ignores localities of weight 0.
func loadAssignment(cluster, host string, port uint32) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{
		ClusterName: cluster,
		Endpoints: []*endpointv3.LocalityLbEndpoints{{
			Locality:            &corev3.Locality{},
			LoadBalancingWeight: wrapperspb.UInt32(1),
			LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: socketAddress(host, port),
				}},
			}},
		}},
	}
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

// typedAny validates m and packs it deterministically: map fields in a
// nondeterministic encoding would change the content hash of equal
// configurations.
func typedAny(m proto.Message) (*anypb.Any, error) {
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			return nil, fmt.Errorf("xds: %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
		}
	}
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		return nil, fmt.Errorf("xds: pack %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return a, nil
}
