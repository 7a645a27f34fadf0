package probe

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BenchmarkMetricsScrape is one Prometheus scrape of the GPU metrics of an 8-GPU node,
// after one sample has been observed (the probe's steady state).
func BenchmarkMetricsScrape(b *testing.B) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	m.Observe(h100s(8), nil)
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatal(w.Code)
		}
	}
}

// BenchmarkObserve is recording one 8-GPU sample into the metrics.
func BenchmarkObserve(b *testing.B) {
	m := NewMetrics(prometheus.NewRegistry())
	snap := h100s(8)
	b.ReportAllocs()
	for b.Loop() {
		m.Observe(snap, nil)
	}
}

// BenchmarkBuildStatus is turning an 8-GPU sample into the GPUNode status and deciding
// whether it changed since the last write: the rest of a probe pass after Sample.
func BenchmarkBuildStatus(b *testing.B) {
	snap := h100s(8)
	now := metav1.Now()
	prev := BuildStatus(snap, nil, nil, now)
	b.ReportAllocs()
	for b.Loop() {
		st := BuildStatus(snap, nil, prev.Conditions, now)
		if changed(&prev, &st) {
			b.Fatal("an identical sample counted as a change")
		}
	}
}
