package auth

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// QuotaWindowStart is the start (UTC) of the quota window that contains now: midnight for
// Day, Monday midnight for Week, the first of the month for Month (the default).
func QuotaWindowStart(w servingv1alpha1.QuotaWindow, now time.Time) time.Time {
	now = now.UTC()
	day := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	switch w {
	case servingv1alpha1.QuotaWindowDay:
		return day
	case servingv1alpha1.QuotaWindowWeek:
		// Weekday: Sunday is 0; ISO weeks start on Monday.
		return day.AddDate(0, 0, -((int(day.Weekday()) + 6) % 7))
	default:
		return time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	}
}

// QuotaWindowEnd is when the window that contains now ends and usage starts again from zero.
func QuotaWindowEnd(w servingv1alpha1.QuotaWindow, now time.Time) time.Time {
	start := QuotaWindowStart(w, now)
	switch w {
	case servingv1alpha1.QuotaWindowDay:
		return start.AddDate(0, 0, 1)
	case servingv1alpha1.QuotaWindowWeek:
		return start.AddDate(0, 0, 7)
	default:
		return start.AddDate(0, 1, 0)
	}
}

// QuotaUsed is the usage counted for ak in the window that contains now: usage recorded for
// an earlier window no longer counts.
func QuotaUsed(ak *servingv1alpha1.ApiKey, now time.Time) int64 {
	u, q := ak.Status.Usage, ak.Spec.Quota
	if u == nil || u.WindowStart == nil || q == nil {
		return 0
	}
	if !u.WindowStart.Time.Equal(QuotaWindowStart(q.Window, now)) {
		return 0
	}
	return u.Tokens
}

// QuotaExhausted reports whether ak has used its whole token quota in the current window.
func QuotaExhausted(ak *servingv1alpha1.ApiKey, now time.Time) bool {
	return ak.Spec.Quota != nil && QuotaUsed(ak, now) >= ak.Spec.Quota.Tokens
}

// SetQuotaCondition sets the QuotaExhausted condition of st from the usage it holds, counted
// in the current window. The ApiKey controller and the usage aggregator both call it, so the
// condition follows the counts whoever wrote them.
func SetQuotaCondition(st *servingv1alpha1.ApiKeyStatus, ak *servingv1alpha1.ApiKey, now time.Time) {
	withUsage := *ak
	withUsage.Status.Usage = st.Usage
	q := ak.Spec.Quota
	cond := metav1.Condition{Type: servingv1alpha1.ApiKeyConditionQuotaExhausted, ObservedGeneration: ak.Generation,
		Status: metav1.ConditionFalse, Reason: servingv1alpha1.ApiKeyReasonWithinQuota, Message: "no quota"}
	if q != nil {
		used, window := QuotaUsed(&withUsage, now), quotaWindowName(q.Window)
		cond.Message = fmt.Sprintf("used %d of %d tokens this %s", used, q.Tokens, window)
		if used >= q.Tokens {
			cond.Status, cond.Reason = metav1.ConditionTrue, servingv1alpha1.ApiKeyReasonQuotaExhausted
			cond.Message += "; the window resets at " + QuotaWindowEnd(q.Window, now).Format(time.RFC3339)
		}
	}
	meta.SetStatusCondition(&st.Conditions, cond)
}

func quotaWindowName(w servingv1alpha1.QuotaWindow) string {
	switch w {
	case servingv1alpha1.QuotaWindowDay:
		return "day"
	case servingv1alpha1.QuotaWindowWeek:
		return "week"
	}
	return "month"
}
