package server

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/peer"
)

// NodeStatus is what one connected node was sent and answered.
type NodeStatus struct {
	// ID and Cluster are the node's identity as it reported it.
	ID      string
	Cluster string
	// Group is the snapshot group serving it.
	Group string
	// Streams counts its open streams.
	Streams int
	// Types maps a resource type URL to its state.
	Types map[string]TypeStatus
}

// TypeStatus is one node's state for one resource type.
type TypeStatus struct {
	// Sent is the version of the last response sent.
	Sent string
	// Acked is the last version the node accepted: the configuration it
	// runs.
	Acked string
	// Rejected is the last version the node rejected since it last
	// accepted one, and Error the reason it gave; both empty otherwise.
	Rejected string
	Error    string
	// Updated is when any of the above last changed.
	Updated time.Time
}

// maxPending bounds the unanswered responses remembered per stream and
// type; a client answers each in turn, so more means it stopped answering.
const maxPending = 16

type streamState struct {
	api     string
	peer    string
	node    *corev3.Node
	pending map[string]map[string]string // type URL → nonce → version
}

type nodeState struct {
	id, cluster, group string
	streams            int
	types              map[string]*TypeStatus
}

// tracker implements go-control-plane's callbacks: it follows every
// stream's responses and the answers to them, logs and counts NACKs, and
// keeps per-node status. Its lock is never held while logging.
type tracker struct {
	key func(*corev3.Node) string
	m   *metrics
	log *slog.Logger
	now func() time.Time

	mu      sync.Mutex
	streams map[int64]*streamState
	nodes   map[string]*nodeState // by node id
}

var _ serverv3.Callbacks = (*tracker)(nil)

func newTracker(key func(*corev3.Node) string, m *metrics, log *slog.Logger, now func() time.Time) *tracker {
	return &tracker{key: key, m: m, log: log, now: now, streams: map[int64]*streamState{}, nodes: map[string]*nodeState{}}
}

func (t *tracker) open(ctx context.Context, id int64, api string) {
	st := &streamState{api: api, pending: map[string]map[string]string{}}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		st.peer = p.Addr.String()
	}
	t.mu.Lock()
	t.streams[id] = st
	t.mu.Unlock()
	t.m.streams.WithLabelValues(api).Inc()
	t.log.Debug("xds stream opened", "stream", id, "api", api, "peer", st.peer)
}

func (t *tracker) closed(id int64, api string) {
	t.mu.Lock()
	st := t.streams[id]
	delete(t.streams, id)
	var nodeID string
	if st != nil && st.node != nil {
		nodeID = st.node.GetId()
		if ns := t.nodes[nodeID]; ns != nil {
			ns.streams--
			if ns.streams <= 0 {
				delete(t.nodes, nodeID)
			}
		}
	}
	t.mu.Unlock()
	t.m.streams.WithLabelValues(api).Dec()
	t.log.Debug("xds stream closed", "stream", id, "api", api, "node", nodeID)
}

// request handles one discovery request of either API. version is the
// SotW version_info ("" for delta, whose acknowledged version is the one
// the nonce was sent with).
func (t *tracker) request(id int64, node *corev3.Node, typeURL, nonce, version string, detail interface{ GetMessage() string }, nacked bool) {
	now := t.now()
	t.mu.Lock()
	st := t.streams[id]
	if st == nil {
		t.mu.Unlock()
		return
	}
	var connected *nodeState
	if st.node == nil && node != nil {
		st.node = node
		ns := t.nodes[node.GetId()]
		if ns == nil {
			ns = &nodeState{id: node.GetId(), cluster: node.GetCluster(), group: t.key(node), types: map[string]*TypeStatus{}}
			t.nodes[node.GetId()] = ns
		}
		ns.streams++
		connected = ns
	}
	ns := t.nodes[st.node.GetId()]
	if st.node == nil || ns == nil {
		t.mu.Unlock()
		return
	}
	ts := ns.types[typeURL]
	if ts == nil {
		ts = &TypeStatus{}
		ns.types[typeURL] = ts
	}
	answered, known := "", false
	if nonce != "" {
		answered, known = st.pending[typeURL][nonce]
		delete(st.pending[typeURL], nonce)
	}
	if version == "" && !nacked {
		version = answered // delta: the ACK is of what the nonce carried
	}
	var newlyAcked bool
	switch {
	case nacked:
		ts.Rejected, ts.Error, ts.Updated = answered, detail.GetMessage(), now
	case nonce != "" && known:
		newlyAcked = ts.Acked != version
		ts.Acked, ts.Rejected, ts.Error, ts.Updated = version, "", "", now
	case nonce == "" && version != "":
		// A reconnecting node reports the version it runs.
		ts.Acked, ts.Updated = version, now
	}
	acked, group, peerAddr, api := ts.Acked, ns.group, st.peer, st.api
	t.mu.Unlock()

	if connected != nil {
		t.log.Info("xds node connected", "node", connected.id, "cluster", connected.cluster, "group", group, "api", api, "peer", peerAddr)
	}
	switch {
	case nacked:
		t.m.nacks.WithLabelValues(typeURL).Inc()
		rejected := answered
		if !known {
			rejected = "unknown"
		}
		t.log.Warn("xds NACK: node rejected configuration; it keeps its last accepted version",
			"node", node.GetId(), "group", group, "api", api, "type_url", typeURL,
			"rejected_version", rejected, "acked_version", acked, "error", detail.GetMessage())
	case nonce != "" && known:
		t.m.acks.WithLabelValues(typeURL).Inc()
		if newlyAcked {
			t.log.Info("xds ACK", "node", node.GetId(), "group", group, "api", api, "type_url", typeURL, "version", version)
		}
	}
}

func (t *tracker) sent(id int64, typeURL, nonce, version string) {
	t.mu.Lock()
	if st := t.streams[id]; st != nil {
		p := st.pending[typeURL]
		if p == nil {
			p = map[string]string{}
			st.pending[typeURL] = p
		}
		if len(p) >= maxPending {
			clear(p)
		}
		p[nonce] = version
		if st.node != nil {
			if ns := t.nodes[st.node.GetId()]; ns != nil {
				ts := ns.types[typeURL]
				if ts == nil {
					ts = &TypeStatus{}
					ns.types[typeURL] = ts
				}
				ts.Sent, ts.Updated = version, t.now()
			}
		}
	}
	t.mu.Unlock()
	t.m.responses.WithLabelValues(typeURL).Inc()
}

func (t *tracker) streamNode(id int64, node *corev3.Node) *corev3.Node {
	if node != nil {
		return node
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if st := t.streams[id]; st != nil {
		return st.node
	}
	return nil
}

func (t *tracker) status() []NodeStatus {
	t.mu.Lock()
	out := make([]NodeStatus, 0, len(t.nodes))
	for _, ns := range t.nodes {
		s := NodeStatus{ID: ns.id, Cluster: ns.cluster, Group: ns.group, Streams: ns.streams, Types: make(map[string]TypeStatus, len(ns.types))}
		for k, v := range ns.types {
			s.Types[k] = *v
		}
		out = append(out, s)
	}
	t.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// OnStreamOpen implements serverv3.Callbacks.
func (t *tracker) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	t.open(ctx, id, "sotw")
	return nil
}

// OnStreamClosed implements serverv3.Callbacks.
func (t *tracker) OnStreamClosed(id int64, _ *corev3.Node) { t.closed(id, "sotw") }

// OnStreamRequest implements serverv3.Callbacks.
func (t *tracker) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	t.request(id, t.streamNode(id, req.GetNode()), req.GetTypeUrl(), req.GetResponseNonce(), req.GetVersionInfo(), req.GetErrorDetail(), req.GetErrorDetail() != nil)
	return nil
}

// OnStreamResponse implements serverv3.Callbacks.
func (t *tracker) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	t.sent(id, resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
}

// OnDeltaStreamOpen implements serverv3.Callbacks.
func (t *tracker) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	t.open(ctx, id, "delta")
	return nil
}

// OnDeltaStreamClosed implements serverv3.Callbacks.
func (t *tracker) OnDeltaStreamClosed(id int64, _ *corev3.Node) { t.closed(id, "delta") }

// OnStreamDeltaRequest implements serverv3.Callbacks.
func (t *tracker) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	t.request(id, t.streamNode(id, req.GetNode()), req.GetTypeUrl(), req.GetResponseNonce(), "", req.GetErrorDetail(), req.GetErrorDetail() != nil)
	return nil
}

// OnStreamDeltaResponse implements serverv3.Callbacks.
func (t *tracker) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	t.sent(id, resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
}

// OnFetchRequest implements serverv3.Callbacks; REST fetches are not served.
func (t *tracker) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error { return nil }

// OnFetchResponse implements serverv3.Callbacks.
func (t *tracker) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {}
