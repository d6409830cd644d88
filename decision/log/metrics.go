package log

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Sink names, the "sink" label of the metrics.
const (
	sinkFile   = "file"
	sinkStdout = "stdout"
	sinkUpload = "upload"
)

// Reasons an event was not delivered, the "reason" label of
// policygate_decision_log_events_dropped_total.
const (
	reasonQueueFull      = "queue_full"      // best_effort: the queue was full
	reasonQueueTimeout   = "queue_timeout"   // backpressure/durable: the caller gave up waiting for room
	reasonUploadBuffer   = "upload_buffer"   // best_effort: the upload buffer was full
	reasonUploadRejected = "upload_rejected" // the collector refused a single event as too large
	reasonSpoolFull      = "spool_full"      // durable: spool_max_size reached; Log returned an error
	reasonSpoolError     = "spool_error"     // durable: the spool could not be written; Log returned an error
	reasonWriteError     = "write_error"     // file/stdout write failed (not durable)
	reasonEncodeError    = "encode_error"    // the event could not be encoded
	reasonClosed         = "closed"          // Log after Close
	reasonShutdown       = "shutdown"        // not delivered within shutdown_grace (not durable)
)

var dropReasons = []string{
	reasonQueueFull, reasonQueueTimeout, reasonUploadBuffer, reasonUploadRejected, reasonSpoolFull,
	reasonSpoolError, reasonWriteError, reasonEncodeError, reasonClosed, reasonShutdown,
}

// metrics are the decision log's instruments; names and labels are listed
// in the README.
type metrics struct {
	written        *prometheus.CounterVec
	dropped        *prometheus.CounterVec
	spooled        prometheus.Counter
	uploads        prometheus.Counter
	uploadFailures *prometheus.CounterVec
	checkpoints    prometheus.Counter
	rotations      prometheus.Counter
	backlog        *prometheus.GaugeVec
	funcs          []prometheus.Collector
}

func newMetrics(queueLen, spoolBytes, chainSeq func() float64) *metrics {
	m := &metrics{
		written: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "policygate_decision_log_events_written_total",
			Help: "Decision events delivered, by sink (file, stdout, upload).",
		}, []string{"sink"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "policygate_decision_log_events_dropped_total",
			Help: "Decision events not delivered, by reason.",
		}, []string{"reason"}),
		spooled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "policygate_decision_log_events_spooled_total",
			Help: "Decision events appended to the durable spool.",
		}),
		uploads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "policygate_decision_log_upload_batches_total",
			Help: "Batches the collector accepted.",
		}),
		uploadFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "policygate_decision_log_upload_failures_total",
			Help: "Failed upload attempts, by HTTP status (or \"error\" when no answer came).",
		}, []string{"status"}),
		checkpoints: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "policygate_decision_log_checkpoints_total",
			Help: "Signed checkpoints written.",
		}),
		rotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "policygate_decision_log_rotations_total",
			Help: "Decision log file rotations.",
		}),
		backlog: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "policygate_decision_log_backlog_events",
			Help: "Spooled events a sink has yet to deliver (durable delivery).",
		}, []string{"sink"}),
	}
	for _, r := range dropReasons {
		m.dropped.WithLabelValues(r)
	}
	m.funcs = []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "policygate_decision_log_queue_length",
			Help: "Decision events waiting in the in-memory queue.",
		}, queueLen),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "policygate_decision_log_spool_bytes",
			Help: "Bytes in the durable spool.",
		}, spoolBytes),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "policygate_decision_log_chain_seq",
			Help: "Sequence number of the last event in the hash chain.",
		}, chainSeq),
	}
	return m
}

func (m *metrics) collectors() []prometheus.Collector {
	return append([]prometheus.Collector{
		m.written, m.dropped, m.spooled, m.uploads, m.uploadFailures, m.checkpoints, m.rotations, m.backlog,
	}, m.funcs...)
}
