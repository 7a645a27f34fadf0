package usage

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Label values of the aggregator's metrics.
const (
	resultOK      = "ok"
	resultInvalid = "invalid"
	resultError   = "error"
	// resultUnauthenticated and resultForbidden: batches without a valid ServiceAccount
	// token, and batches for ApiKeys of another namespace than the token's.
	resultUnauthenticated = "unauthenticated"
	resultForbidden       = "forbidden"
	resultApplied         = "applied"
	resultDuplicate       = "duplicate"
	resultDropped         = "dropped"
)

var (
	reportsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "helixflow_usage_reports_total",
		Help: "Usage batches received by the aggregator, by result: ok (stored or duplicate), invalid (refused), unauthenticated (no valid ServiceAccount token), forbidden (ApiKeys of another namespace than the token's), error (not stored yet; the runtime resends).",
	}, []string{"result"})
	entriesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "helixflow_usage_key_entries_total",
		Help: "Per-ApiKey usage entries of batches, by result: applied, duplicate (already counted, skipped), dropped (ApiKey deleted, or created again as another object). A resent batch is counted again.",
	}, []string{"result"})
	writeConflictsTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "helixflow_usage_write_conflicts_total",
		Help: "ApiKey status writes of the usage aggregator that met a newer version and were retried.",
	})
	confirmsLimitedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "helixflow_usage_confirm_reads_limited_total",
		Help: "Confirming reads refused, once per key and attempt: usage for a key the cache does not have (or has as another object) was not stored yet, as the reads that confirm such keys were used up; the runtimes resend. Steady growth means something reports many keys that do not exist.",
	})
	reviewsLimitedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "helixflow_usage_token_reviews_limited_total",
		Help: "Usage batches answered UNAVAILABLE because the TokenReviews for tokens not seen in the last minute were used up; the runtimes resend. Steady growth means something sends many tokens that are not valid.",
	})
	plaintextRefusedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "helixflow_usage_plaintext_connections_refused_total",
		Help: "Connections to the usage aggregator refused because they did not start a TLS handshake: runtimes older than TLS (run the manager with --usage-allow-plaintext while they are replaced), or something else at the port.",
	})
	servingCertExpiry = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "helixflow_usage_serving_certificate_expiration_timestamp_seconds",
		Help: "When this replica's usage aggregator serving certificate expires (Unix time); it renews it after two thirds of its life, so an alert on less than a week left means renewal is failing (see the manager's log).",
	})

	registerOnce sync.Once
)

// registerMetrics adds the aggregator's metrics to the manager's registry, on first use only:
// runtimes import this package for the Reporter and must not get manager metrics.
func registerMetrics() {
	registerOnce.Do(func() {
		metrics.Registry.MustRegister(reportsTotal, entriesTotal, writeConflictsTotal, confirmsLimitedTotal, reviewsLimitedTotal,
			plaintextRefusedTotal, servingCertExpiry)
	})
}
