package controllers

import (
	"testing"
	"time"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
)

// TestApiKeyRequeueAtTheQuotaWindowEnd: a key with a quota comes back when its window ends,
// also before any usage was counted (the aggregator writes the first counts, and the
// QuotaExhausted it sets must be cleared then even if the key is not used again).
func TestApiKeyRequeueAtTheQuotaWindowEnd(t *testing.T) {
	now := time.Date(2026, 12, 6, 10, 30, 0, 0, time.UTC)
	ak := &servingv1alpha1.ApiKey{Spec: servingv1alpha1.ApiKeySpec{
		Quota: &servingv1alpha1.TokenQuota{Tokens: 100, Window: servingv1alpha1.QuotaWindowDay},
	}}
	want := auth.QuotaWindowEnd(servingv1alpha1.QuotaWindowDay, now).Sub(now)
	if got := apiKeyRequeue(ak, servingv1alpha1.ApiKeyStatus{}, now); got != want {
		t.Fatalf("requeue in %v, want %v (midnight)", got, want)
	}
	if got := apiKeyRequeue(&servingv1alpha1.ApiKey{}, servingv1alpha1.ApiKeyStatus{}, now); got != 0 {
		t.Fatalf("a key without quota or expiry requeued in %v", got)
	}
}
