package controllers

import (
	"fmt"
	"sort"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
)

// maxPreviousKeys bounds status.previousKeys (the CRD allows 8): rotating faster than the
// grace period drops the oldest key early rather than growing the object.
const maxPreviousKeys = 8

// computeApiKeyStatus is pure: the status after this reconcile's key state at now.
func computeApiKeyStatus(ak *servingv1alpha1.ApiKey, ks keyState, now time.Time, grace time.Duration) servingv1alpha1.ApiKeyStatus {
	st := *ak.Status.DeepCopy()
	st.ObservedGeneration = ak.Generation
	st.ExpiresAt = ak.Spec.ExpiresAt.DeepCopy()
	t := metav1.NewTime(now)
	switch ks.change {
	case keyCreated, keyReplaced:
		st.CreatedAt = &t
	case keyRotated:
		if st.KeyHash != "" && st.KeyHash != ks.keyHash {
			st.PreviousKeys = append([]servingv1alpha1.PreviousKey{{
				KeyID: st.KeyID, KeyHash: st.KeyHash, ValidUntil: metav1.NewTime(now.Add(grace)),
			}}, st.PreviousKeys...)
		}
		st.CreatedAt, st.LastRotationTime = &t, &t
	case keyUnchanged:
	}
	if ks.keyHash != "" {
		st.KeyID, st.KeyHash = ks.keyID, ks.keyHash
	}
	st.PreviousKeys = livePreviousKeys(st.PreviousKeys, st.KeyHash, now)
	setApiKeyConditions(&st, ak, ks, now)
	return st
}

// livePreviousKeys drops previous keys whose grace has passed (or that equal the current
// key), newest first, at most maxPreviousKeys.
func livePreviousKeys(prev []servingv1alpha1.PreviousKey, current string, now time.Time) []servingv1alpha1.PreviousKey {
	live := make([]servingv1alpha1.PreviousKey, 0, len(prev))
	for _, p := range prev {
		if p.ValidUntil.After(now) && p.KeyHash != current {
			live = append(live, p)
		}
	}
	sort.SliceStable(live, func(i, j int) bool { return live[i].ValidUntil.After(live[j].ValidUntil.Time) })
	if len(live) > maxPreviousKeys {
		live = live[:maxPreviousKeys]
	}
	if len(live) == 0 {
		return nil
	}
	return live
}

// setApiKeyConditions sets Suspended, Expired, QuotaExhausted and the summary Ready.
func setApiKeyConditions(st *servingv1alpha1.ApiKeyStatus, ak *servingv1alpha1.ApiKey, ks keyState, now time.Time) {
	gen := ak.Generation
	if ak.Spec.Suspend != nil && *ak.Spec.Suspend {
		setCondition(&st.Conditions, servingv1alpha1.ApiKeyConditionSuspended, metav1.ConditionTrue, servingv1alpha1.ApiKeyReasonKeySuspended, "spec.suspend is true", gen)
	} else {
		setCondition(&st.Conditions, servingv1alpha1.ApiKeyConditionSuspended, metav1.ConditionFalse, servingv1alpha1.ApiKeyReasonNotSuspended, "", gen)
	}
	if exp := ak.Spec.ExpiresAt; exp != nil && !now.Before(exp.Time) {
		setCondition(&st.Conditions, servingv1alpha1.ApiKeyConditionExpired, metav1.ConditionTrue, servingv1alpha1.ApiKeyReasonKeyExpired,
			"expired at "+exp.UTC().Format(time.RFC3339), gen)
	} else {
		setCondition(&st.Conditions, servingv1alpha1.ApiKeyConditionExpired, metav1.ConditionFalse, servingv1alpha1.ApiKeyReasonNotExpired, "", gen)
	}
	auth.SetQuotaCondition(st, ak, now)

	refusal := auth.KeyRefusal(ak, now)
	switch {
	case ks.reason != "":
		setCondition(&st.Conditions, servingv1alpha1.ConditionReady, metav1.ConditionFalse, ks.reason, ks.message, gen)
	case refusal != auth.RefusalNone:
		setCondition(&st.Conditions, servingv1alpha1.ConditionReady, metav1.ConditionFalse, string(refusal), refusalMessage(ak, refusal), gen)
	default:
		setCondition(&st.Conditions, servingv1alpha1.ConditionReady, metav1.ConditionTrue, servingv1alpha1.ApiKeyReasonKeyActive,
			fmt.Sprintf("key %s is accepted", st.KeyID), gen)
	}
}

func refusalMessage(ak *servingv1alpha1.ApiKey, r auth.Refusal) string {
	switch r {
	case auth.RefusalSuspended:
		return "spec.suspend is true"
	case auth.RefusalExpired:
		return "expired at " + ak.Spec.ExpiresAt.UTC().Format(time.RFC3339)
	default:
		return "token quota used up for this window"
	}
}

// apiKeyRequeue is when the status next changes by itself: expiry, the end of a previous
// key's grace, the quota window reset, or the periodic re-read of a brought-your-own Secret.
// Zero means only a watch event brings the key back.
func apiKeyRequeue(ak *servingv1alpha1.ApiKey, st servingv1alpha1.ApiKeyStatus, now time.Time) time.Duration {
	var next time.Time
	consider := func(t time.Time) {
		if t.After(now) && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if ak.Spec.ExpiresAt != nil {
		consider(ak.Spec.ExpiresAt.Time)
	}
	for _, p := range st.PreviousKeys {
		consider(p.ValidUntil.Time)
	}
	if q := ak.Spec.Quota; q != nil {
		// Also before any usage: the aggregator writes the first counts, and the condition
		// it sets must be cleared when the window ends even if the key is not used again.
		consider(auth.QuotaWindowEnd(q.Window, now))
	}
	if ak.Spec.ExistingSecretRef != nil {
		consider(now.Add(byoResync))
	}
	if next.IsZero() {
		return 0
	}
	return next.Sub(now)
}
