package usage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/helixflow/helixflow/internal/usage/usagev1"
	"github.com/helixflow/helixflow/test/testenv"
)

// tokenPods is the pod each token of saToken is bound to: reportWith reports as its runtime.
var tokenPods sync.Map // token -> pod name

// saToken is a token of ServiceAccount ns/name for audience, from the API server, bound to a
// new pod of that account.
func saToken(t *testing.T, ns, name, audience string) string {
	t.Helper()
	token, pod, err := testenv.ServiceAccountToken(t.Context(), startEnv(t).Client, ns, name, audience, 3600)
	if err != nil {
		t.Fatal(err)
	}
	tokenPods.Store(token, pod)
	return token
}

// countingReviews is the envtest client, counting the TokenReviews created through it.
func countingReviews(t *testing.T, n *atomic.Int32) client.Client {
	t.Helper()
	return reviewsThrough(t, func() error { n.Add(1); return nil })
}

// reviewsThrough is the envtest client, calling before for each TokenReview created through
// it; an error from before is the creation's.
func reviewsThrough(t *testing.T, before func() error) client.Client {
	t.Helper()
	e := startEnv(t)
	direct, err := client.NewWithWatch(e.Config, client.Options{Scheme: e.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return interceptor.NewClient(direct, interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			if _, ok := obj.(*authenticationv1.TokenReview); ok {
				if err := before(); err != nil {
					return err
				}
			}
			return c.Create(ctx, obj, opts...)
		},
	})
}

// fakeClock is a clock a test moves, read safely by the aggregator's goroutines.
type fakeClock struct{ now atomic.Pointer[time.Time] }

func newFakeClock(start time.Time) *fakeClock {
	c := &fakeClock{}
	c.now.Store(&start)
	return c
}

func (c *fakeClock) Now() time.Time { return *c.now.Load() }

func (c *fakeClock) add(d time.Duration) { c.now.Store(new(c.Now().Add(d))) }

// clockedAggregator serves an aggregator that reviews tokens through reviews, on clock.
// Tests call its Report directly; serving runs the flush loop that stores the counts.
func clockedAggregator(t *testing.T, reviews client.Client, clock *fakeClock, opts ...AggregatorOption) *Aggregator {
	t.Helper()
	opts = append([]AggregatorOption{WithReporterAuthentication(reviews, false), WithClock(clock.Now)}, opts...)
	a, _ := startAggregator(t, freeAddr(t), opts...)
	return a
}

// reportWith calls a.Report as a gRPC call with authorization (none when "") would, from the
// runtime of the pod of the token (saToken), or "pod-x".
func reportWith(t *testing.T, a *Aggregator, authorization string, seq uint64, keys ...types.NamespacedName) error {
	t.Helper()
	_, token, _ := strings.Cut(authorization, " ")
	id := "pod-x"
	if pod, ok := tokenPods.Load(token); ok {
		id = reporterIDPrefix(pod.(string)) + "0123456789abcdef"
	}
	return reportAs(t, a, authorization, id, seq, keys...)
}

// reportAs is reportWith as the runtime with reporter ID id.
func reportAs(t *testing.T, a *Aggregator, authorization, id string, seq uint64, keys ...types.NamespacedName) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	md := metadata.MD{}
	if authorization != "" {
		md.Set("authorization", authorization)
	}
	req := batchFor(keys)
	req.ReporterId, req.Seq = id, seq
	_, err := a.Report(metadata.NewIncomingContext(ctx, md), req)
	return err
}

// Only a model pod's ServiceAccount token for the aggregator's audience gets a batch in, only
// for ApiKeys of the token's namespace and only under its pod's reporter IDs; refused batches
// change nothing.
func TestReportersAuthenticateWithServiceAccountTokens(t *testing.T) {
	nsA, nsB := newNamespace(t), newNamespace(t)
	keyA, keyB := createKey(t, nsA, "k", nil), createKey(t, nsB, "k", nil)
	var reviews atomic.Int32
	var logs logLines
	a, _ := startAggregator(t, freeAddr(t), WithReporterAuthentication(countingReviews(t, &reviews), false), WithAggregatorLogger(logs.logger(1)))
	tokenA := saToken(t, nsA, "chat", TokenAudience)
	otherAudience := saToken(t, nsA, "chat", "https://kubernetes.default.svc")
	podA, _ := tokenPods.Load(tokenA)
	// A token of the same account that no pod holds (TokenRequest without a bound object).
	seconds := int64(3600)
	unbound := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{TokenAudience}, ExpirationSeconds: &seconds}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: nsA, Name: "chat"}}
	if err := startEnv(t).Client.SubResource("token").Create(t.Context(), sa, unbound); err != nil {
		t.Fatal(err)
	}
	// Another pod's runtime: its reporter ID, under a token of another pod of the account.
	otherPod := reporterIDPrefix(podA.(string)+"x") + "0123456789abcdef"

	unauthenticated := testutil.ToFloat64(reportsTotal.WithLabelValues(resultUnauthenticated))
	forbidden := testutil.ToFloat64(reportsTotal.WithLabelValues(resultForbidden))
	cases := []struct {
		name          string
		authorization string
		keys          []types.NamespacedName
		code          codes.Code
		message       string
	}{
		{"no token", "", []types.NamespacedName{keyA}, codes.Unauthenticated, "no ServiceAccount token"},
		{"not a bearer token", "Basic " + tokenA, []types.NamespacedName{keyA}, codes.Unauthenticated, `"Bearer <ServiceAccount token>"`},
		{"a made-up token", "Bearer not-a-token", []types.NamespacedName{keyA}, codes.Unauthenticated, "not valid for audience " + TokenAudience},
		{"a token for the API server", "Bearer " + otherAudience, []types.NamespacedName{keyA}, codes.Unauthenticated, "not valid for audience " + TokenAudience},
		{"a token bound to no pod", "Bearer " + unbound.Status.Token, []types.NamespacedName{keyA}, codes.Unauthenticated, "not bound to a pod"},
		{"a key of another namespace", "Bearer " + tokenA, []types.NamespacedName{keyB}, codes.PermissionDenied, "ServiceAccount " + nsA + "/chat may only report usage of ApiKeys in namespace " + nsA},
		{"keys of both namespaces", "Bearer " + tokenA, []types.NamespacedName{keyA, keyB}, codes.PermissionDenied, "not of " + keyB.String()},
		{"another pod's reporter ID", "Bearer " + tokenA, []types.NamespacedName{keyA}, codes.PermissionDenied, "not as its pod"},
	}
	for i, tc := range cases {
		var err error
		if tc.name == "another pod's reporter ID" {
			err = reportAs(t, a, tc.authorization, otherPod, uint64(i+1), tc.keys...)
		} else {
			err = reportWith(t, a, tc.authorization, uint64(i+1), tc.keys...)
		}
		if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.message) {
			t.Errorf("%s: %v, want %s with %q", tc.name, err, tc.code, tc.message)
		}
		if err != nil && (strings.Contains(err.Error(), tokenA) || strings.Contains(err.Error(), otherAudience) || strings.Contains(err.Error(), unbound.Status.Token)) {
			t.Errorf("%s: the error repeats the token", tc.name)
		}
	}
	logged := logs.String()
	if n := strings.Count(logged, "usage batch refused"); n != len(cases) || strings.Contains(logged, tokenA) || strings.Contains(logged, otherAudience) {
		t.Errorf("log has %d refusals, want %d, and no token:\n%s", n, len(cases), logged)
	}
	checkUsage(t, map[types.NamespacedName]counts{keyA: {}, keyB: {}})
	if d := testutil.ToFloat64(reportsTotal.WithLabelValues(resultUnauthenticated)) - unauthenticated; d != 5 {
		t.Errorf("unauthenticated batches counted %v, want 5", d)
	}
	if d := testutil.ToFloat64(reportsTotal.WithLabelValues(resultForbidden)) - forbidden; d != 3 {
		t.Errorf("forbidden batches counted %v, want 3", d)
	}

	if err := reportWith(t, a, "bearer "+tokenA, 10, keyA); err != nil {
		t.Fatalf("a batch of the token's namespace: %v", err)
	}
	// A batch charges each key 1 token, 1 request (batchFor).
	checkUsage(t, map[types.NamespacedName]counts{keyA: {1, 1}, keyB: {}})
	// tokenA was reviewed once for three batches; refused tokens are not remembered.
	if n := reviews.Load(); n != 4 {
		t.Errorf("%d TokenReviews, want 4 (the made-up token, the API server's, the unbound one, tokenA once)", n)
	}
}

// A Reporter sends the token of its file with every batch, reading the file each time (the
// kubelet replaces a projected token before it expires); without one its batches are refused
// and kept.
func TestReporterSendsTheTokenOfItsFile(t *testing.T) {
	ns := newNamespace(t)
	key := createKey(t, ns, "k", nil)
	var reviews atomic.Int32
	addr := freeAddr(t)
	startAggregator(t, addr, WithReporterAuthentication(countingReviews(t, &reviews), false))
	file := filepath.Join(t.TempDir(), "token")
	writeToken := func(token string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	token := saToken(t, ns, "chat", TokenAudience)
	pod, _ := tokenPods.Load(token)
	t.Setenv("POD_NAME", pod.(string)) // NewReporterID: the runtime runs in that pod
	writeToken(token)
	r := startReporter(t, addr, WithTokenFile(file))
	record(r, key, 3, 4)
	flush(t, r)
	checkUsage(t, map[types.NamespacedName]counts{key: {7, 1}})

	// The kubelet replaces the token: the next batch carries the new one (another review).
	renewed, err := testenv.PodToken(t.Context(), startEnv(t).Client, ns, pod.(string), TokenAudience, 3600)
	if err != nil {
		t.Fatal(err)
	}
	writeToken(renewed)
	record(r, key, 1, 1)
	flush(t, r)
	checkUsage(t, map[types.NamespacedName]counts{key: {9, 2}})
	if n := reviews.Load(); n != 2 {
		t.Errorf("%d TokenReviews, want 2 (one per token)", n)
	}

	// A runtime without a token: refused, its counts kept for the resends.
	// Its resends wait longer than the Flush: the Flush's error is that of its call.
	bare := startReporter(t, addr, WithBackoff(2*time.Second, 4*time.Second))
	record(bare, key, 5, 5)
	if err := flushWithin(bare, time.Second); err == nil || !strings.Contains(err.Error(), "no ServiceAccount token") {
		t.Errorf("flush without a token: %v, want refused for want of a token", err)
	}
	if s := bare.Stats(); !s.Unacknowledged || s.Refused != 0 {
		t.Errorf("reporter without a token: %+v, want its batch kept for resending", s)
	}
	checkUsage(t, map[types.NamespacedName]counts{key: {9, 2}})
}

// With allowUnauthenticated (an upgrade from runtimes without tokens) a batch without a token
// is taken, but a token that is sent is still checked, and holds its namespace.
func TestUnauthenticatedReportersAllowed(t *testing.T) {
	nsA, nsB := newNamespace(t), newNamespace(t)
	keyA, keyB := createKey(t, nsA, "k", nil), createKey(t, nsB, "k", nil)
	a, _ := startAggregator(t, freeAddr(t), WithReporterAuthentication(startEnv(t).Client, true))
	if err := reportWith(t, a, "", 1, keyA, keyB); err != nil {
		t.Fatalf("a batch without a token: %v", err)
	}
	if err := reportWith(t, a, "Bearer not-a-token", 2, keyA); status.Code(err) != codes.Unauthenticated {
		t.Errorf("a made-up token: %v, want Unauthenticated", err)
	}
	if err := reportWith(t, a, "Bearer "+saToken(t, nsA, "chat", TokenAudience), 3, keyB); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a token of %s for a key of %s: %v, want PermissionDenied", nsA, nsB, err)
	}
	checkUsage(t, map[types.NamespacedName]counts{keyA: {1, 1}, keyB: {1, 1}})
}

// TokenReviews for tokens not in the cache are limited; a batch over the limit is answered
// UNAVAILABLE (the runtime resends), while tokens reviewed before still get in. A review is
// asked again once its minute is over.
func TestTokenReviewsAreLimited(t *testing.T) {
	ns := newNamespace(t)
	key := createKey(t, ns, "k", nil)
	var reviews atomic.Int32
	clock := newFakeClock(time.Now())
	a := clockedAggregator(t, countingReviews(t, &reviews), clock)
	a.auth.reviews = rate.NewLimiter(0, 1)
	first, second := saToken(t, ns, "one", TokenAudience), saToken(t, ns, "two", TokenAudience)

	limited := testutil.ToFloat64(reviewsLimitedTotal)
	if err := reportWith(t, a, "Bearer "+first, 1, key); err != nil {
		t.Fatalf("first token: %v", err)
	}
	err := reportWith(t, a, "Bearer "+second, 2, key)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "send the batch again") {
		t.Errorf("a second new token over the limit: %v, want Unavailable", err)
	}
	if d := testutil.ToFloat64(reviewsLimitedTotal) - limited; d != 1 {
		t.Errorf("helixflow_usage_token_reviews_limited_total grew by %v, want 1", d)
	}
	if err := reportWith(t, a, "Bearer "+first, 3, key); err != nil {
		t.Errorf("the reviewed token again: %v", err)
	}
	if n := reviews.Load(); n != 1 {
		t.Errorf("%d TokenReviews, want 1", n)
	}
	// A minute later the first token is due for another review; with the reviews used up
	// it is taken as vouched for before (it has not expired): made-up tokens cannot starve
	// the runtimes already known.
	clock.add(reviewCacheTTL)
	if err := reportWith(t, a, "Bearer "+first, 4, key); err != nil {
		t.Errorf("the reviewed token a minute later, reviews used up: %v", err)
	}
	if err := reportWith(t, a, "Bearer "+second, 5, key); status.Code(err) != codes.Unavailable {
		t.Errorf("a new token, reviews used up: %v, want Unavailable", err)
	}
	a.auth.reviews = rate.NewLimiter(rate.Inf, 1)
	if err := reportWith(t, a, "Bearer "+first, 6, key); err != nil {
		t.Errorf("the token a minute later: %v", err)
	}
	if n := reviews.Load(); n != 2 {
		t.Errorf("%d TokenReviews, want 2 (the first token reviewed again after a minute)", n)
	}
	checkUsage(t, map[types.NamespacedName]counts{key: {4, 4}})
}

func TestReviewedIdentity(t *testing.T) {
	sa := func(name string, audiences ...string) authenticationv1.TokenReviewStatus {
		return authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: audiences, User: authenticationv1.UserInfo{
			Username: name, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated"},
			Extra: map[string]authenticationv1.ExtraValue{podNameExtra: {"chat-7d9f-x2"}}}}
	}
	unbound := sa("system:serviceaccount:team-a:chat", TokenAudience)
	unbound.User.Extra = nil
	otherGroup := sa("system:serviceaccount:team-a:chat", TokenAudience)
	otherGroup.User.Groups = []string{"system:serviceaccounts", "system:serviceaccounts:team-b"}
	cases := []struct {
		name    string
		status  authenticationv1.TokenReviewStatus
		want    reviewed
		wantErr string
	}{
		{"a ServiceAccount", sa("system:serviceaccount:team-a:chat", TokenAudience), reviewed{namespace: "team-a", serviceAccount: "chat", pod: "chat-7d9f-x2"}, ""},
		{"not bound to a pod", unbound, reviewed{}, "not bound to a pod"},
		{"not authenticated", authenticationv1.TokenReviewStatus{Error: "token has expired"}, reviewed{}, "not valid for audience " + TokenAudience + ": token has expired"},
		{"no audience confirmed", sa("system:serviceaccount:team-a:chat"), reviewed{}, "not confirmed for audience"},
		{"another audience", sa("system:serviceaccount:team-a:chat", "vault"), reviewed{}, "not confirmed for audience"},
		{"a user", sa("alice", TokenAudience), reviewed{}, `"alice" is not a ServiceAccount`},
		{"no name", sa("system:serviceaccount:team-a:", TokenAudience), reviewed{}, "is not a ServiceAccount"},
		{"no namespace", sa("system:serviceaccount:chat", TokenAudience), reviewed{}, "is not a ServiceAccount"},
		{"not in its namespace's group", otherGroup, reviewed{}, "is not a ServiceAccount"},
	}
	for _, tc := range cases {
		got, err := reviewedIdentity(tc.status)
		if got != tc.want || (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: %+v, %v; want %+v, %q", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
}

// A review is not taken from the cache past the token's expiry, even within its minute, nor
// when the reviews are used up: the token is reviewed again, or refused for now.
func TestCachedReviewEndsWithTheToken(t *testing.T) {
	ns := newNamespace(t)
	key := createKey(t, ns, "k", nil)
	var reviews atomic.Int32
	base := time.Now()
	token, pod, err := testenv.ServiceAccountToken(t.Context(), startEnv(t).Client, ns, "chat", TokenAudience, 600)
	if err != nil {
		t.Fatal(err)
	}
	tokenPods.Store(token, pod)
	clock := newFakeClock(base.Add(590 * time.Second)) // ten seconds before the token expires
	a := clockedAggregator(t, countingReviews(t, &reviews), clock)
	if err := reportWith(t, a, "Bearer "+token, 1, key); err != nil {
		t.Fatal(err)
	}
	clock.add(30 * time.Second) // within the minute, past exp
	a.auth.reviews = rate.NewLimiter(0, 0)
	if err := reportWith(t, a, "Bearer "+token, 2, key); status.Code(err) != codes.Unavailable {
		t.Errorf("an expired token, reviews used up: %v, want Unavailable", err)
	}
	a.auth.reviews = rate.NewLimiter(rate.Inf, 1)
	// The API server, on the real clock, still takes the token: a second review.
	if err := reportWith(t, a, "Bearer "+token, 3, key); err != nil {
		t.Fatal(err)
	}
	if n := reviews.Load(); n != 2 {
		t.Errorf("%d TokenReviews, want 2: the cached review must end at the token's exp", n)
	}
}

// While the API server cannot review tokens, tokens reviewed before still get in; new ones
// are answered UNAVAILABLE without the API server's words, which go to the log.
func TestTokenReviewsFailing(t *testing.T) {
	ns := newNamespace(t)
	key := createKey(t, ns, "k", nil)
	var failing atomic.Bool
	flaky := reviewsThrough(t, func() error {
		if failing.Load() {
			return errors.New(`tokenreviews.authentication.k8s.io is forbidden: User "system:serviceaccount:helixflow-system:manager" cannot create`)
		}
		return nil
	})
	var logs logLines
	clock := newFakeClock(time.Now())
	a := clockedAggregator(t, flaky, clock, WithAggregatorLogger(logs.logger(0)))
	known, unknown := saToken(t, ns, "one", TokenAudience), saToken(t, ns, "two", TokenAudience)
	if err := reportWith(t, a, "Bearer "+known, 1, key); err != nil {
		t.Fatal(err)
	}
	failing.Store(true)
	clock.add(reviewCacheTTL)
	if err := reportWith(t, a, "Bearer "+known, 2, key); err != nil {
		t.Errorf("a token reviewed before, the API server failing: %v", err)
	}
	err := reportWith(t, a, "Bearer "+unknown, 3, key)
	if status.Code(err) != codes.Unavailable || strings.Contains(err.Error(), "forbidden") {
		t.Errorf("a new token, the API server failing: %v, want Unavailable without the API server's words", err)
	}
	if n := strings.Count(logs.String(), "forbidden"); n != 1 {
		t.Errorf("the failing review is logged %d times, want once (a line a minute):\n%s", n, logs.String())
	}
	checkUsage(t, map[types.NamespacedName]counts{key: {2, 2}})
}

// The cache stays within its size: expired tokens go first, then any.
func TestReviewCacheIsBounded(t *testing.T) {
	ra := newReporterAuth(nil, false)
	ra.size = 2
	now := time.Now()
	expired := reviewed{namespace: "a", fresh: now.Add(-time.Second), expires: now.Add(-time.Second)}
	live := reviewed{namespace: "b", fresh: now.Add(time.Minute), expires: now.Add(time.Hour)}
	ra.remember([32]byte{1}, expired, now)
	ra.remember([32]byte{2}, live, now)
	ra.remember([32]byte{3}, live, now)
	if _, ok := ra.cache[[32]byte{1}]; ok || len(ra.cache) != 2 {
		t.Errorf("cache %v: want the expired entry dropped first, 2 left", ra.cache)
	}
	ra.remember([32]byte{4}, live, now)
	if _, ok := ra.cache[[32]byte{4}]; !ok || len(ra.cache) != 2 {
		t.Errorf("cache %v: want the new entry in, 2 left", ra.cache)
	}
	ra.remember([32]byte{4}, live, now) // a review renewed takes no room
	if len(ra.cache) != 2 {
		t.Errorf("cache %v: renewing an entry dropped another", ra.cache)
	}
}

// tokenExpiry reads the exp claim of a token from the API server.
func TestTokenExpiry(t *testing.T) {
	ns := newNamespace(t)
	token, _, err := testenv.ServiceAccountToken(t.Context(), startEnv(t).Client, ns, "chat", TokenAudience, 600)
	if err != nil {
		t.Fatal(err)
	}
	exp, ok := tokenExpiry(token)
	if want := time.Now().Add(600 * time.Second); !ok || exp.Before(want.Add(-time.Minute)) || exp.After(want.Add(time.Minute)) {
		t.Errorf("expiry %v, %v; want about %v", exp, ok, want)
	}
	for _, bad := range []string{"", "a.b", "a.!!.c", "a." + "e30" + ".c"} { // e30 is {}
		if _, ok := tokenExpiry(bad); ok {
			t.Errorf("tokenExpiry(%q) found an expiry", bad)
		}
	}
}

// Report answers UNAUTHENTICATED before it reads the batch: a caller without a token learns
// nothing about what a valid batch is.
func TestAuthenticationBeforeValidation(t *testing.T) {
	a := NewAggregator(startEnv(t).Client, DisabledAddress, WithReporterAuthentication(startEnv(t).Client, false))
	_, err := a.Report(t.Context(), &usagev1.ReportRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("an invalid batch without a token: %v, want Unauthenticated", err)
	}
}

// A runtime reports only under its pod's IDs: the pod name, "-" and a nonce, nothing else,
// so that no pod name that starts another's takes its IDs.
func TestAuthorizeHoldsRuntimesToTheirPod(t *testing.T) {
	b := batch{{NamespacedName: types.NamespacedName{Namespace: "team-a", Name: "k"}}: {}}
	cases := []struct {
		pod, reporterID string
		ok              bool
	}{
		{"chat-7d9f-x2abc", "chat-7d9f-x2abc-0123456789abcdef", true},
		{"chat-7d9f", "chat-7d9f-x2abc-0123456789abcdef", false}, // a pod named as the start of another
		{"chat-7d9f-x2abc", "chat-7d9f-x2abc-0123456789abcde", false},
		{"chat-7d9f-x2abc", "chat-7d9f-x2abc-0123456789abcdef0", false},
		{"chat-7d9f-x2abc", "chat-7d9f-x2abc-0123456789ABCDEF", false},
		{"chat-7d9f-x2abc", "chat-7d9f-x2abd-0123456789abcdef", false},
		{strings.Repeat("p", 111), strings.Repeat("p", 111) + "-0123456789abcdef", true},
		// Cut to fit, a name would share its IDs with every pod of the same first 111 characters.
		{strings.Repeat("p", 112), reporterIDPrefix(strings.Repeat("p", 112)) + "0123456789abcdef", false},
	}
	for _, tc := range cases {
		err := authorize(reviewed{namespace: "team-a", serviceAccount: "chat", pod: tc.pod}, tc.reporterID, b)
		if (err == nil) != tc.ok || (err != nil && status.Code(err) != codes.PermissionDenied) {
			t.Errorf("pod %s reporting as %s: %v, want allowed %v", tc.pod, tc.reporterID, err, tc.ok)
		}
	}
	if err := authorize(reviewed{}, "anything", b); err != nil {
		t.Errorf("a caller without a token, where allowed: %v", err)
	}
	t.Setenv("POD_NAME", "chat-7d9f-x2abc")
	if id := NewReporterID(); authorize(reviewed{namespace: "team-a", pod: "chat-7d9f-x2abc"}, id, b) != nil {
		t.Errorf("the runtime's own reporter ID %s refused", id)
	}
}
