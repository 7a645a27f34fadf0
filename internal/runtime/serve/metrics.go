package serve

import (
	"slices"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/helixflow/helixflow/internal/usage"
)

// Metrics are the runtime's Prometheus metrics. Labels carry the served model and the
// public key ID (never the key). Latency histograms are per model only: a key ID label there
// would multiply the series by the number of keys.
type Metrics struct {
	Requests       *prometheus.CounterVec
	Latency        *prometheus.HistogramVec
	TimeToFirstTok *prometheus.HistogramVec
	Tokens         *prometheus.CounterVec
	Rejections     *prometheus.CounterVec
	UpstreamErrors *prometheus.CounterVec
	// StreamsWithoutUsage counts streams charged by their chunks, not the engine's usage.
	StreamsWithoutUsage *prometheus.CounterVec
	InFlight            *prometheus.GaugeVec
	registry            *prometheus.Registry
	statusLabelText     [600]string
	calls               sync.Map // callMetricsKey → *callMetrics
}

// callMetrics are the metric children every call of one model, route and key ID touches,
// looked up once: a label lookup hashes and checks each label value every time, and a call
// made five of them.
type callMetrics struct {
	inFlight           prometheus.Gauge
	latency            prometheus.Observer
	ok                 prometheus.Counter // requests answered 200
	prompt, completion prometheus.Counter
}

type callMetricsKey struct{ model, route, keyID string }

// forCall returns the metric children of calls to model on route with keyID.
func (m *Metrics) forCall(model, route, keyID string) *callMetrics {
	k := callMetricsKey{model, route, keyID}
	if c, ok := m.calls.Load(k); ok {
		return c.(*callMetrics)
	}
	c, _ := m.calls.LoadOrStore(k, &callMetrics{
		inFlight:   m.InFlight.WithLabelValues(model),
		latency:    m.Latency.WithLabelValues(model, route),
		ok:         m.Requests.WithLabelValues(model, route, m.code(200), keyID),
		prompt:     m.Tokens.WithLabelValues(model, keyID, "prompt"),
		completion: m.Tokens.WithLabelValues(model, keyID, "completion"),
	})
	return c.(*callMetrics)
}

// forgetKeyIDs deletes the series and cached children of keyIDs, keys that no longer exist:
// without it, every key a namespace ever had would stay in the scrape until a restart.
func (m *Metrics) forgetKeyIDs(keyIDs []string) {
	for _, id := range keyIDs {
		match := prometheus.Labels{"key_id": id}
		m.Requests.DeletePartialMatch(match)
		m.Tokens.DeletePartialMatch(match)
		m.Rejections.DeletePartialMatch(match)
	}
	m.calls.Range(func(k, _ any) bool {
		if slices.Contains(keyIDs, k.(callMetricsKey).keyID) {
			m.calls.Delete(k)
		}
		return true
	})
}

// latencyBuckets span a cached embedding (ms) to a long generation (minutes).
var latencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// NewMetrics registers the runtime's metrics on a new registry (plus Go and process metrics).
func NewMetrics() *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "helixflow_runtime_requests_total", Help: "Requests answered, by model, route, HTTP status code and key ID.",
		}, []string{"model", "route", "code", "key_id"}),
		Latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "helixflow_runtime_request_duration_seconds", Help: "Time from request to the last byte of the answer, by model and route.",
			Buckets: latencyBuckets,
		}, []string{"model", "route"}),
		TimeToFirstTok: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "helixflow_runtime_time_to_first_token_seconds", Help: "Time from request to the first streamed chunk, by model.",
			Buckets: latencyBuckets,
		}, []string{"model"}),
		Tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "helixflow_runtime_tokens_total", Help: "Tokens counted from the engine's usage, by model, key ID and direction (prompt or completion).",
		}, []string{"model", "key_id", "direction"}),
		Rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "helixflow_runtime_rejections_total", Help: "Requests refused before reaching the engine, by model, reason and key ID.",
		}, []string{"model", "reason", "key_id"}),
		UpstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "helixflow_runtime_upstream_errors_total", Help: "Engine failures, by model and kind (connect, timeout, status, stream).",
		}, []string{"model", "kind"}),
		StreamsWithoutUsage: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "helixflow_runtime_streams_without_usage_total",
			Help: "Streams that ended without the engine's usage (cut, broken off, or an engine that does not send it), by model; they are charged one completion token per chunk with output.",
		}, []string{"model"}),
		InFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "helixflow_runtime_in_flight_requests", Help: "Requests being served now, by model.",
		}, []string{"model"}),
		registry: prometheus.NewRegistry(),
	}
	for i := range m.statusLabelText {
		m.statusLabelText[i] = strconv.Itoa(i)
	}
	m.registry.MustRegister(m.Requests, m.Latency, m.TimeToFirstTok, m.Tokens, m.Rejections, m.UpstreamErrors, m.StreamsWithoutUsage, m.InFlight,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// watchReporter exports the usage reporter's backlog: a runtime whose reports do not get
// through (the aggregator down or out of reach) would otherwise charge nothing, silently.
func (m *Metrics) watchReporter(stats func() usage.ReporterStats) {
	for _, f := range []struct {
		name, help string
		counter    bool
		value      func(usage.ReporterStats) uint64
	}{
		{"helixflow_runtime_usage_pending_keys", "ApiKeys with usage recorded and not yet sent to the manager's usage aggregator.",
			false, func(st usage.ReporterStats) uint64 { return uint64(st.PendingKeys) }},
		{"helixflow_runtime_usage_unacknowledged_batches", "1 while a usage batch waits for the aggregator's acknowledgement (it is resent until then), else 0.",
			false, func(st usage.ReporterStats) uint64 { return uint64(boolToInt(st.Unacknowledged)) }},
		{"helixflow_runtime_usage_batches_total", "Usage batches this runtime cut for the aggregator.",
			true, func(st usage.ReporterStats) uint64 { return st.Seq }},
		{"helixflow_runtime_usage_report_failures_total", "Usage reports to the aggregator that failed (and were resent).",
			true, func(st usage.ReporterStats) uint64 { return st.Failures }},
		{"helixflow_runtime_usage_batches_refused_total", "Usage batches the aggregator refused as invalid: their counts are lost (a bug; see the runtime's log).",
			true, func(st usage.ReporterStats) uint64 { return st.Refused }},
	} {
		read := func() float64 { return float64(f.value(stats())) }
		if f.counter {
			m.registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: f.name, Help: f.help}, read))
		} else {
			m.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: f.name, Help: f.help}, read))
		}
	}
}

func boolToInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Registry is what the metrics endpoint serves.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// code is the label text of an HTTP status without allocating.
func (m *Metrics) code(status int) string {
	if status >= 0 && status < len(m.statusLabelText) {
		return m.statusLabelText[status]
	}
	return strconv.Itoa(status)
}
