package server

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the server's instruments. Names and labels are stable and
// listed in the README.
type metrics struct {
	streams   *prometheus.GaugeVec   // api: sotw | delta
	responses *prometheus.CounterVec // type_url
	acks      *prometheus.CounterVec // type_url
	nacks     *prometheus.CounterVec // type_url
	snapshot  *prometheus.GaugeVec   // group, version: 1 for the published version
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "policygate_xds_streams",
			Help: "Open xDS streams, by API (sotw or delta).",
		}, []string{"api"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "policygate_xds_responses_total",
			Help: "xDS responses sent, by resource type URL.",
		}, []string{"type_url"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "policygate_xds_acks_total",
			Help: "xDS responses acknowledged by nodes, by resource type URL.",
		}, []string{"type_url"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "policygate_xds_nacks_total",
			Help: "xDS responses rejected by nodes (error_detail set), by resource type URL.",
		}, []string{"type_url"}),
		snapshot: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "policygate_xds_snapshot_info",
			Help: "1 for the snapshot version published to each node group.",
		}, []string{"group", "version"}),
	}
	m.streams.WithLabelValues("sotw")
	m.streams.WithLabelValues("delta")
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.streams, m.responses, m.acks, m.nacks, m.snapshot} {
		errs = append(errs, reg.Register(c))
	}
	return m, errors.Join(errs...)
}

func (m *metrics) published(group, prev, version string) {
	if prev != "" {
		m.snapshot.DeleteLabelValues(group, prev)
	}
	m.snapshot.WithLabelValues(group, version).Set(1)
}
