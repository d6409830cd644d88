package server

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
)

// nackHold is the snapshot cache as the ADS server sees it, with one
// change for state-of-the-world NACKs.
//
// A NACK carries, as version_info, the last version the node accepted. The
// cache answers any request whose version differs from the snapshot's at
// once, so it would send the version just rejected straight back, to be
// rejected again, for as long as the stream lives. nackHold opens the watch
// of a NACK at the rejected version instead: the cache then waits for a
// snapshot with a different version, and the node keeps running its last
// accepted configuration meanwhile. A request that subscribes to resources
// the node has not been sent is still answered at once.
//
// Incremental (delta) streams need no help: the server records what it sent
// as the node's state whether or not it was accepted, so it never resends.
type nackHold struct {
	cachev3.SnapshotCache
	key func(*corev3.Node) string
}

var _ cachev3.Cache = nackHold{}

// CreateWatch implements cachev3.ConfigWatcher.
func (h nackHold) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, out chan cachev3.Response) (func(), error) {
	if req.GetErrorDetail() == nil || req.GetResponseNonce() == "" {
		return h.SnapshotCache.CreateWatch(req, sub, out)
	}
	rejected := h.rejectedVersion(req, sub)
	if rejected == "" || rejected == req.GetVersionInfo() {
		return h.SnapshotCache.CreateWatch(req, sub, out)
	}
	held := proto.Clone(req).(*discoveryv3.DiscoveryRequest)
	held.VersionInfo = rejected
	return h.SnapshotCache.CreateWatch(held, sub, out)
}

// rejectedVersion is the version of the response the NACK answers: the
// stream's subscription records, per resource, the version it was last
// sent in. A rejected response without resources leaves no trace there; if
// the snapshot still has none of that type, resending would send the same
// nothing, so its version counts as rejected too.
func (h nackHold) rejectedVersion(req *cachev3.Request, sub cachev3.Subscription) string {
	for _, v := range sub.ReturnedResources() {
		return v
	}
	snap, err := h.GetSnapshot(h.key(req.GetNode()))
	if err != nil {
		return ""
	}
	if len(snap.GetResources(req.GetTypeUrl())) == 0 {
		return snap.GetVersion(req.GetTypeUrl())
	}
	return ""
}
