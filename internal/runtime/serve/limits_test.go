package serve

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/test/testengine"
)

// statuses sends n chat calls one after another and returns their statuses.
func (r *rig) statuses(key string, n int) []int {
	r.t.Helper()
	out := make([]int, n)
	for i := range out {
		resp := r.post(RouteChatCompletions, key, chatBody)
		out[i] = resp.StatusCode
		_ = resp.Body.Close()
	}
	return out
}

func wantStatuses(t *testing.T, what string, got []int, want ...int) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: statuses %v, want %v", what, got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: statuses %v, want %v", what, got, want)
		}
	}
}

// TestTokensPerMinuteChargesTheEngineUsage: each call uses 8 tokens (the engine's usage);
// a key with 16 tokens per minute gets two calls, then a 429 until its minute has passed.
func TestTokensPerMinuteChargesTheEngineUsage(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	key := r.addKey("tpm", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.RateLimit = &servingv1alpha1.KeyRateLimit{TokensPerMinute: 16}
	})
	wantStatuses(t, "within the token rate", r.statuses(key, 2), http.StatusOK, http.StatusOK)
	resp := r.post(RouteChatCompletions, key, chatBody)
	wantError(t, resp, http.StatusTooManyRequests, "rate_limit_exceeded")
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 61 {
		t.Fatalf("Retry-After %q, want 1..61 seconds", resp.Header.Get("Retry-After"))
	}
	r.clock.Advance(61 * time.Second)
	wantStatuses(t, "a minute later", r.statuses(key, 1), http.StatusOK)
}

// TestMaxConcurrentBoundsCallsInFlight: with one call of a key at the engine, a second is
// refused; once the first has finished, the next is admitted.
func TestMaxConcurrentBoundsCallsInFlight(t *testing.T) {
	atEngine := make(chan struct{}, 4)
	r := newRig(t, testengine.Config{
		FirstTokenDelay: 300 * time.Millisecond,
		OnRequest:       func(testengine.RecordedRequest) { atEngine <- struct{}{} },
	}, nil)
	key := r.addKey("one-at-a-time", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.RateLimit = &servingv1alpha1.KeyRateLimit{MaxConcurrent: 1}
	})
	first := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, r.url+RouteChatCompletions, strings.NewReader(chatBody))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			first <- 0
			return
		}
		_ = resp.Body.Close()
		first <- resp.StatusCode
	}()
	<-atEngine
	resp := r.post(RouteChatCompletions, key, chatBody)
	wantError(t, resp, http.StatusTooManyRequests, "rate_limit_exceeded")
	if resp.Header.Get("Retry-After") == "" {
		t.Fatal("no Retry-After on the concurrency refusal")
	}
	if code := <-first; code != http.StatusOK {
		t.Fatalf("the call in flight ended %d", code)
	}
	wantStatuses(t, "after the first call ended", r.statuses(key, 1), http.StatusOK)
}

// TestLimitsDividedAcrossReadyReplicas: each replica enforces the limit divided by the
// model's ready replicas, rounded up, and follows the count as it changes.
func TestLimitsDividedAcrossReadyReplicas(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	setReplicas := func(n int32) {
		r.s.model.set(&servingv1alpha1.InferenceModel{
			ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: testengine.DefaultModel},
			Status:     servingv1alpha1.InferenceModelStatus{ReadyReplicas: n},
		})
	}
	key := r.addKey("shared", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.RateLimit = &servingv1alpha1.KeyRateLimit{RequestsPerMinute: 5}
	})
	setReplicas(2)
	ok, limited := http.StatusOK, http.StatusTooManyRequests
	wantStatuses(t, "5/min over 2 replicas", r.statuses(key, 4), ok, ok, ok, limited)
	setReplicas(1) // the other replica went away: this one now takes the whole limit
	wantStatuses(t, "5/min on 1 replica", r.statuses(key, 3), ok, ok, limited)
}

// TestQuotaRefusalSaysWhenToRetry: a key whose quota is used up gets 429 insufficient_quota
// with Retry-After until its quota window ends.
func TestQuotaRefusalSaysWhenToRetry(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	now := r.clock.Now()
	key := r.addKey("spent", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.Quota = &servingv1alpha1.TokenQuota{Tokens: 100, Window: servingv1alpha1.QuotaWindowDay}
		ak.Status.Usage = &servingv1alpha1.KeyUsage{
			WindowStart: ptr.To(metav1.NewTime(auth.QuotaWindowStart(servingv1alpha1.QuotaWindowDay, now))),
			Tokens:      100,
		}
	})
	resp := r.post(RouteChatCompletions, key, chatBody)
	wantError(t, resp, http.StatusTooManyRequests, "insufficient_quota")
	want := int(auth.QuotaWindowEnd(servingv1alpha1.QuotaWindowDay, now).Sub(now) / time.Second)
	if got := resp.Header.Get("Retry-After"); got != strconv.Itoa(want) {
		t.Fatalf("Retry-After %q, want %d (the end of the day)", got, want)
	}
	if r.engine.Stats().Requests != 0 {
		t.Fatal("a refused call reached the engine")
	}
	// The rejection names the key (its public ID), so an operator sees whose quota ran out.
	keyID := key[len("hfk_"):strings.LastIndexByte(key, '_')]
	if want := "helixflow_runtime_rejections_total key_id=" + keyID + " model=" + testengine.DefaultModel + " reason=quota"; !strings.Contains(r.series(), want) {
		t.Fatalf("no series %q in\n%s", want, r.series())
	}
}
