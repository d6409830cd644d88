package bundles

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metric results and failure stages (label values).
const (
	resultOK          = "ok"
	resultNotModified = "not_modified"
	resultError       = "error"

	stageDownload = "download" // transport, status code, size
	stageRead     = "read"     // archive, format, signature
	stageActivate = "activate" // compile or activation
	stagePersist  = "persist"  // writing the last good copy
	stageLoad     = "load"     // reading the persisted copy at start
)

type metrics struct {
	downloads      *prometheus.CounterVec
	activations    *prometheus.CounterVec
	failures       *prometheus.CounterVec
	lastDownload   *prometheus.GaugeVec
	lastActivation *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		downloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "policygate_bundle_downloads_total",
			Help: "Bundle downloads and reloads by bundle and result (ok, not_modified, error).",
		}, []string{"bundle", "result"}),
		activations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "policygate_bundle_activations_total",
			Help: "Policy activations triggered by a bundle, by result (ok, error).",
		}, []string{"bundle", "result"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "policygate_bundle_failures_total",
			Help: "Bundle failures by stage (download, read, activate, persist, load); the last good revision keeps serving.",
		}, []string{"bundle", "stage"}),
		lastDownload: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "policygate_bundle_last_download_timestamp_seconds",
			Help: "Unix time of the last successful download (or reload) of a bundle.",
		}, []string{"bundle"}),
		lastActivation: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "policygate_bundle_last_activation_timestamp_seconds",
			Help: "Unix time of the last successful activation including a bundle's current revision.",
		}, []string{"bundle"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.downloads, m.activations, m.failures, m.lastDownload, m.lastActivation} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
