package auth

import (
	"time"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// Refusal says why a known key is not accepted right now; "" means it is accepted.
type Refusal string

const (
	RefusalNone           Refusal = ""
	RefusalSuspended      Refusal = servingv1alpha1.ApiKeyReasonKeySuspended
	RefusalExpired        Refusal = servingv1alpha1.ApiKeyReasonKeyExpired
	RefusalQuotaExhausted Refusal = servingv1alpha1.ApiKeyReasonQuotaExhausted
)

// KeyRefusal is the one rule, shared by the manager (conditions, token service) and the
// runtimes, for whether an ApiKey is usable at now. Expiry is read from spec so it holds even
// before the controller has written status; the quota from status.usage.
func KeyRefusal(ak *servingv1alpha1.ApiKey, now time.Time) Refusal {
	switch {
	case ak.Spec.Suspend != nil && *ak.Spec.Suspend:
		return RefusalSuspended
	case ak.Spec.ExpiresAt != nil && !now.Before(ak.Spec.ExpiresAt.Time):
		return RefusalExpired
	case QuotaExhausted(ak, now):
		// From the counted usage, not the condition: runtimes refuse as soon as the aggregator
		// records the last allowed token, and accept again when a new window starts.
		return RefusalQuotaExhausted
	}
	return RefusalNone
}

// HasScope reports whether scopes (defaulted by the CRD) include s.
func HasScope(scopes []servingv1alpha1.Scope, s servingv1alpha1.Scope) bool {
	for _, have := range scopes {
		if have == s {
			return true
		}
	}
	return false
}
