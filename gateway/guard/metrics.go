package guard

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/policygate/policygate/decision"
)

// metrics are the request-level instruments every front door shares.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	upstream *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "policygate_requests_total",
			Help: "Requests by front door, route, decision outcome and response status.",
		}, []string{"front_door", "route", "decision", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "policygate_request_duration_seconds",
			Help:    "Time from receiving a request to finishing its response, by front door and route.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2.5, 14), // 50µs .. ~7.5s
		}, []string{"front_door", "route"}),
		upstream: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "policygate_upstream_duration_seconds",
			Help:    "Time from forwarding a request to the upstream's response headers, by route.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14),
		}, []string{"route"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.upstream} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) observe(frontDoor string, v *Verdict, c decision.Completion) {
	route := "none"
	if v.Route != nil {
		route = v.Route.Name
	}
	outcome := string(v.Decision.Result.Outcome)
	if v.Decision.Path == "" { // refused before evaluation
		outcome = "refused"
	}
	m.requests.WithLabelValues(frontDoor, route, outcome, strconv.Itoa(c.Status)).Inc()
	m.duration.WithLabelValues(frontDoor, route).Observe(c.Latency.Seconds())
	if c.UpstreamStatus != 0 || c.UpstreamLatency > 0 {
		m.upstream.WithLabelValues(route).Observe(c.UpstreamLatency.Seconds())
	}
}
