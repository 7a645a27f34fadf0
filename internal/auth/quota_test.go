package auth

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

func TestQuotaWindows(t *testing.T) {
	// Wednesday 2026-11-25 15:04 UTC.
	now := time.Date(2026, 11, 25, 15, 4, 0, 0, time.UTC)
	for _, tc := range []struct {
		w          servingv1alpha1.QuotaWindow
		start, end time.Time
	}{
		{servingv1alpha1.QuotaWindowDay, time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC), time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)},
		{servingv1alpha1.QuotaWindowWeek, time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC), time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)},
		{servingv1alpha1.QuotaWindowMonth, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)},
	} {
		if got := QuotaWindowStart(tc.w, now); !got.Equal(tc.start) {
			t.Errorf("%s start = %v, want %v", tc.w, got, tc.start)
		}
		if got := QuotaWindowEnd(tc.w, now); !got.Equal(tc.end) {
			t.Errorf("%s end = %v, want %v", tc.w, got, tc.end)
		}
	}
	// A Sunday belongs to the week that started the Monday before.
	sunday := time.Date(2026, 11, 29, 23, 0, 0, 0, time.UTC)
	if got := QuotaWindowStart(servingv1alpha1.QuotaWindowWeek, sunday); !got.Equal(time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("week of Sunday starts %v", got)
	}
}

func TestQuotaExhaustedOnlyInItsWindow(t *testing.T) {
	now := time.Date(2026, 11, 25, 15, 4, 0, 0, time.UTC)
	ak := &servingv1alpha1.ApiKey{}
	ak.Spec.Quota = &servingv1alpha1.TokenQuota{Tokens: 100, Window: servingv1alpha1.QuotaWindowDay}
	if QuotaExhausted(ak, now) {
		t.Fatal("no usage yet, exhausted")
	}
	today := metav1.NewTime(QuotaWindowStart(servingv1alpha1.QuotaWindowDay, now))
	ak.Status.Usage = &servingv1alpha1.KeyUsage{WindowStart: &today, Tokens: 100}
	if !QuotaExhausted(ak, now) {
		t.Fatal("100 of 100 tokens used today, not exhausted")
	}
	if QuotaExhausted(ak, now.Add(24*time.Hour)) {
		t.Fatal("yesterday's usage still counts tomorrow")
	}
	ak.Status.Usage.Tokens = 99
	if QuotaExhausted(ak, now) {
		t.Fatal("99 of 100, exhausted")
	}
}

func TestCoarseNowFollowsTheClock(t *testing.T) {
	a := CoarseNow()
	if d := time.Since(a); d < -coarseTick || d > time.Second {
		t.Fatalf("CoarseNow is %v away from time.Now", d)
	}
	time.Sleep(10 * coarseTick)
	if b := CoarseNow(); !b.After(a) {
		t.Fatalf("CoarseNow did not move: %v then %v", a, b)
	}
}
