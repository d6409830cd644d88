package xds

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// Config is the xds section of the configuration file.
type Config struct {
	// Listen is the address of policygate's xDS (ADS) gRPC server, e.g.
	// "127.0.0.1:18000". Required. The server does not authenticate its
	// clients: bind it to loopback or a network only the Envoy fleet reaches.
	Listen string `yaml:"listen"`
	// EnvoyListenerAddress is the address Envoy's ingress listener binds.
	// Empty means "0.0.0.0".
	EnvoyListenerAddress string `yaml:"envoy_listener_address"`
	// EnvoyListenerPort is the port Envoy's ingress listener binds. Zero
	// means 10000.
	EnvoyListenerPort int `yaml:"envoy_listener_port"`
	// UpstreamCAFile is a PEM bundle, on the Envoy host, that verifies https
	// upstreams. Empty means the Envoy host's system roots.
	UpstreamCAFile string `yaml:"upstream_ca_file"`
	// ExtAuthz points Envoy's ext_authz filter at policygate. Required.
	ExtAuthz ExtAuthzConfig `yaml:"ext_authz"`
	// Nodes narrows the routes some nodes receive. A node whose id matches
	// an entry's id gets that entry's routes; otherwise a node whose
	// cluster matches an entry's cluster does; every other node gets all
	// routes. Optional.
	Nodes []NodeConfig `yaml:"nodes"`
}

// ExtAuthzConfig is how Envoy reaches policygate's ext_authz gRPC service.
type ExtAuthzConfig struct {
	// Address is policygate's ext_authz gRPC address as Envoy reaches it,
	// host:port. Required. An IP address becomes a STATIC cluster, a name
	// a STRICT_DNS one.
	Address string `yaml:"address"`
	// Timeout bounds one Check call, as a Go duration. Empty means "2s",
	// above policy.timeout's default so that policygate's own timeout
	// answers (and logs) first.
	Timeout string `yaml:"timeout"`
	// CAFile is a PEM bundle, on the Envoy host, that verifies policygate's
	// ext_authz certificate; set it when ext_authz serves TLS (its
	// cert_file). Empty means plaintext HTTP/2.
	CAFile string `yaml:"ca_file"`
	// FailureModeAllow lets requests through when policygate cannot be
	// reached. Default false: Envoy answers 503.
	FailureModeAllow bool `yaml:"failure_mode_allow"`
	// WithRequestBody sends up to MaxBytes of the request body with each
	// Check, as the gateway does for routes' body_limit. Optional: absent
	// means no body is sent.
	WithRequestBody *BodyConfig `yaml:"with_request_body"`
}

// BodyConfig bounds the request body Envoy buffers for ext_authz.
type BodyConfig struct {
	// MaxBytes is the number of body bytes sent. Required, 1 to 16 MiB.
	// Larger bodies are still forwarded whole; the check gets the prefix
	// and Envoy marks it truncated.
	MaxBytes uint32 `yaml:"max_bytes"`
}

// NodeConfig selects routes for one node or one cluster of nodes.
type NodeConfig struct {
	// ID matches the node's id. Exactly one of id and cluster is required.
	ID string `yaml:"id"`
	// Cluster matches the node's cluster.
	Cluster string `yaml:"cluster"`
	// Routes names the gateway routes the node receives. Required.
	Routes []string `yaml:"routes"`
}

// Defaults of Config.
const (
	DefaultEnvoyListenerAddress = "0.0.0.0"
	DefaultEnvoyListenerPort    = 10000
	DefaultExtAuthzTimeout      = 2 * time.Second
	maxBodyBytes                = 16 << 20
)

// Names of the resources the builder produces.
const (
	// ListenerName is the Envoy ingress listener.
	ListenerName = "policygate_ingress"
	// RouteConfigName is the route configuration the listener loads by RDS.
	RouteConfigName = "policygate_routes"
	// ExtAuthzClusterName is the cluster of policygate's ext_authz service.
	ExtAuthzClusterName = "policygate_ext_authz"
	// ExtAuthzFilterName is the ext_authz HTTP filter's name, also the key
	// of its per-route configuration.
	ExtAuthzFilterName = "envoy.filters.http.ext_authz"
	// RouteContextKey is the ext_authz context extension that carries the
	// matched route's name to policygate.
	RouteContextKey = "policygate_route"
)

// settings is Config parsed once.
type settings struct {
	listenAddr     string
	listenPort     uint32
	upstreamCAFile string
	authzHost      string
	authzPort      uint32
	authzTimeout   time.Duration
	authzCAFile    string
	failureAllow   bool
	bodyBytes      uint32 // 0: no body
	nodes          []NodeConfig
}

// parse validates c with defaults injected. Errors name the key relative to
// the xds section and are all reported at once.
func (c Config) parse() (*settings, error) {
	var errs []error
	s := &settings{
		listenAddr:     c.EnvoyListenerAddress,
		upstreamCAFile: c.UpstreamCAFile,
		failureAllow:   c.ExtAuthz.FailureModeAllow,
		authzCAFile:    c.ExtAuthz.CAFile,
		authzTimeout:   DefaultExtAuthzTimeout,
	}
	if c.Listen == "" {
		errs = append(errs, errors.New("listen: required"))
	} else if _, _, err := hostPort(c.Listen, true); err != nil {
		errs = append(errs, fmt.Errorf("listen: %w", err))
	}
	if s.listenAddr == "" {
		s.listenAddr = DefaultEnvoyListenerAddress
	} else if _, err := netip.ParseAddr(s.listenAddr); err != nil {
		errs = append(errs, fmt.Errorf("envoy_listener_address: %q is not an IP address", s.listenAddr))
	}
	switch p := c.EnvoyListenerPort; {
	case p == 0:
		s.listenPort = DefaultEnvoyListenerPort
	case p < 1 || p > 65535:
		errs = append(errs, fmt.Errorf("envoy_listener_port: %d is not a port", p))
	default:
		s.listenPort = uint32(p)
	}
	if c.ExtAuthz.Address == "" {
		errs = append(errs, errors.New("ext_authz.address: required"))
	} else if h, p, err := hostPort(c.ExtAuthz.Address, false); err != nil {
		errs = append(errs, fmt.Errorf("ext_authz.address: %w", err))
	} else {
		s.authzHost, s.authzPort = h, p
	}
	if c.ExtAuthz.Timeout != "" {
		d, err := time.ParseDuration(c.ExtAuthz.Timeout)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("ext_authz.timeout: %q is not a positive duration", c.ExtAuthz.Timeout))
		}
		s.authzTimeout = d
	}
	if b := c.ExtAuthz.WithRequestBody; b != nil {
		if b.MaxBytes == 0 || b.MaxBytes > maxBodyBytes {
			errs = append(errs, fmt.Errorf("ext_authz.with_request_body.max_bytes: %d must be between 1 and %d", b.MaxBytes, maxBodyBytes))
		}
		s.bodyBytes = b.MaxBytes
	}
	ids, clusters := map[string]bool{}, map[string]bool{}
	for i, n := range c.Nodes {
		key := fmt.Sprintf("nodes[%d]", i)
		switch {
		case (n.ID == "") == (n.Cluster == ""):
			errs = append(errs, fmt.Errorf("%s.id: exactly one of id and cluster is required", key))
		case n.ID != "" && ids[n.ID]:
			errs = append(errs, fmt.Errorf("%s.id: duplicate node id %q", key, n.ID))
		case n.Cluster != "" && clusters[n.Cluster]:
			errs = append(errs, fmt.Errorf("%s.cluster: duplicate cluster %q", key, n.Cluster))
		}
		ids[n.ID], clusters[n.Cluster] = n.ID != "", n.Cluster != ""
		if len(n.Routes) == 0 {
			errs = append(errs, fmt.Errorf("%s.routes: at least one route is required", key))
		}
		seen := map[string]bool{}
		for j, r := range n.Routes {
			if seen[r] {
				errs = append(errs, fmt.Errorf("%s.routes[%d]: duplicate route %q", key, j, r))
			}
			seen[r] = true
		}
	}
	s.nodes = c.Nodes
	return s, errors.Join(errs...)
}

// hostPort splits "host:port" with a non-empty host and a numeric port;
// port 0 (any free port) only where the address is bound.
func hostPort(addr string, bind bool) (string, uint32, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%q is not host:port: %w", addr, err)
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || (n == 0 && !bind) {
		return "", 0, fmt.Errorf("%q: port %q is not a port number", addr, p)
	}
	if h == "" {
		return "", 0, fmt.Errorf("%q: host is required", addr)
	}
	return h, uint32(n), nil
}
