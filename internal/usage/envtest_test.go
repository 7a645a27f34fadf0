package usage

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/cluster"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/internal/usage/usagev1"
	"github.com/helixflow/helixflow/test/testenv"
)

// Reporter -> gRPC -> Aggregator -> ApiKey status: many requests from several goroutines over
// several keys add up exactly.
func TestUsageIsExact(t *testing.T) {
	ns := newNamespace(t)
	keys := []types.NamespacedName{createKey(t, ns, "a", nil), createKey(t, ns, "b", nil), createKey(t, ns, "c", nil)}
	addr := freeAddr(t)
	startAggregator(t, addr)
	r := startReporter(t, addr)

	want := map[types.NamespacedName]counts{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			local := map[types.NamespacedName]counts{}
			for range 10 {
				recordMany(r, keys, 30, local)
				time.Sleep(5 * time.Millisecond) // spread over several batches
			}
			mu.Lock()
			defer mu.Unlock()
			for k, c := range local {
				w := want[k]
				want[k] = counts{w.tokens + c.tokens, w.requests + c.requests}
			}
		})
	}
	wg.Wait()
	flush(t, r)
	checkUsage(t, want)

	u := getKey(t, keys[0]).Status.Usage
	if len(u.Reporters) != 1 || u.Reporters[0].ID != r.ID() || u.Reporters[0].Seq < 1 {
		t.Errorf("reporters = %+v, want one entry for %s", u.Reporters, r.ID())
	}
	if u.LastUsedTime == nil || u.WindowStart == nil || !u.WindowStart.Time.Equal(auth.QuotaWindowStart(servingv1alpha1.QuotaWindowMonth, time.Now())) {
		t.Errorf("usage times: %+v", u)
	}
}

// A batch whose acknowledgement was lost is sent again: it counts once, also when both copies
// are queued in the same flush, and an older seq after a newer one counts not at all.
func TestResentBatchCountsOnce(t *testing.T) {
	ns := newNamespace(t)
	key := createKey(t, ns, "k", nil)
	a, _ := startAggregator(t, freeAddr(t))
	report := func(seq uint64, prompt int64) {
		t.Helper()
		req := &usagev1.ReportRequest{ReporterId: "pod-1-abc", Seq: seq, Usage: []*usagev1.KeyUsage{
			{Namespace: ns, ApiKey: key.Name, PromptTokens: prompt, CompletionTokens: 1, Requests: 1}}}
		if _, err := a.Report(t.Context(), req); err != nil {
			t.Fatalf("seq %d: %v", seq, err)
		}
	}
	dupBefore := testutil.ToFloat64(entriesTotal.WithLabelValues(resultDuplicate))

	report(1, 10)
	report(1, 10) // the acknowledgement was lost
	checkUsage(t, map[types.NamespacedName]counts{key: {11, 1}})

	var wg sync.WaitGroup
	for range 3 { // the same batch three times in one flush
		wg.Go(func() { report(2, 20) })
	}
	wg.Wait()
	checkUsage(t, map[types.NamespacedName]counts{key: {32, 2}})

	report(1, 10) // very late copy of an old batch
	checkUsage(t, map[types.NamespacedName]counts{key: {32, 2}})
	if got := testutil.ToFloat64(entriesTotal.WithLabelValues(resultDuplicate)) - dupBefore; got != 4 {
		t.Errorf("duplicates counted: %v, want 4", got)
	}
	if rep := getKey(t, key).Status.Usage.Reporters; len(rep) != 1 || rep[0].Seq != 2 {
		t.Errorf("reporters = %+v", rep)
	}
}

// The aggregator stops while the reporter has batches to send and a new one starts on the
// same address: the reporter resends, nothing is lost or counted twice.
func TestAggregatorRestart(t *testing.T) {
	ns := newNamespace(t)
	keys := []types.NamespacedName{createKey(t, ns, "a", nil), createKey(t, ns, "b", nil)}
	addr := freeAddr(t)
	_, stop := startAggregator(t, addr)
	r := startReporter(t, addr)
	want := map[types.NamespacedName]counts{}

	recordMany(r, keys, 100, want)
	time.Sleep(3 * testReportInterval) // some batches on the way
	stop()
	recordMany(r, keys, 100, want)
	// The reporter fails to send for a while and keeps the unacknowledged batch.
	waitFor(t, "failed sends", func() bool { return r.Stats().Failures >= 2 })
	if st := r.Stats(); !st.Unacknowledged {
		t.Fatalf("no batch waiting while the aggregator is down: %+v", st)
	}
	startAggregator(t, addr)
	recordMany(r, keys, 100, want)
	flush(t, r)
	checkUsage(t, want)
}

// Acknowledgements are lost after the counts were stored (a manager dying between the write
// and the answer): the reporter resends the same batches and they count once.
func TestLostAcknowledgements(t *testing.T) {
	ns := newNamespace(t)
	keys := []types.NamespacedName{createKey(t, ns, "a", nil), createKey(t, ns, "b", nil)}
	addr := freeAddr(t)
	var calls atomic.Int64
	loseEveryOther := grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		resp, err := h(ctx, req)
		if err == nil && calls.Add(1)%2 == 1 {
			return nil, status.Error(codes.Unavailable, "test: acknowledgement lost")
		}
		return resp, err
	})
	startAggregator(t, addr, WithServerOptions(loseEveryOther))
	r := startReporter(t, addr)
	dupBefore := testutil.ToFloat64(entriesTotal.WithLabelValues(resultDuplicate))

	want := map[types.NamespacedName]counts{}
	for range 5 {
		recordMany(r, keys, 40, want)
		time.Sleep(2 * testReportInterval)
	}
	flush(t, r)
	checkUsage(t, want)
	if dup := testutil.ToFloat64(entriesTotal.WithLabelValues(resultDuplicate)) - dupBefore; dup < 1 || r.Stats().Failures < 1 {
		t.Errorf("no resend was skipped as duplicate (duplicates %v, failures %d)", dup, r.Stats().Failures)
	}
}

// The runtime restarts: the old process flushes on shutdown, the new one reports under a new
// ID with seqs from 1 again, and both count.
func TestRuntimeRestart(t *testing.T) {
	ns := newNamespace(t)
	keys := []types.NamespacedName{createKey(t, ns, "a", nil)}
	addr := freeAddr(t)
	startAggregator(t, addr)
	want := map[types.NamespacedName]counts{}

	first := startReporter(t, addr, WithInterval(time.Hour)) // only the shutdown flush sends
	recordMany(first, keys, 50, want)
	flush(t, first)
	second := startReporter(t, addr)
	recordMany(second, keys, 70, want)
	flush(t, second)

	checkUsage(t, want)
	rep := getKey(t, keys[0]).Status.Usage.Reporters
	if len(rep) != 2 || first.ID() == second.ID() {
		t.Errorf("reporters = %+v, want %s and %s", rep, first.ID(), second.ID())
	}
}

// Reaching spec.quota.tokens sets QuotaExhausted in the same write, and runtimes refuse the key.
func TestQuotaExhausted(t *testing.T) {
	ns := newNamespace(t)
	key := createKey(t, ns, "k", &servingv1alpha1.TokenQuota{Tokens: 100, Window: servingv1alpha1.QuotaWindowDay})
	addr := freeAddr(t)
	startAggregator(t, addr)
	r := startReporter(t, addr)

	record(r, key, 50, 9)
	flush(t, r)
	ak := getKey(t, key)
	checkQuota(t, ak, metav1.ConditionFalse, auth.RefusalNone)

	record(r, key, 40, 1)
	flush(t, r)
	ak = getKey(t, key)
	checkQuota(t, ak, metav1.ConditionTrue, auth.RefusalQuotaExhausted)
	if ak.Status.Usage.Tokens != 100 {
		t.Errorf("tokens = %d, want 100", ak.Status.Usage.Tokens)
	}
}

func checkQuota(t *testing.T, ak *servingv1alpha1.ApiKey, cond metav1.ConditionStatus, refusal auth.Refusal) {
	t.Helper()
	c := meta.FindStatusCondition(ak.Status.Conditions, servingv1alpha1.ApiKeyConditionQuotaExhausted)
	if c == nil || c.Status != cond {
		t.Errorf("QuotaExhausted = %+v, want %s", c, cond)
	}
	if got := auth.KeyRefusal(ak, time.Now()); got != refusal {
		t.Errorf("KeyRefusal = %q, want %q", got, refusal)
	}
}

// A new quota window starts the counts from zero and lifts QuotaExhausted.
func TestWindowRollover(t *testing.T) {
	ns := newNamespace(t)
	key := createKey(t, ns, "k", &servingv1alpha1.TokenQuota{Tokens: 10, Window: servingv1alpha1.QuotaWindowDay})
	var clock atomic.Pointer[time.Time]
	set := func(s string) time.Time {
		now, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		clock.Store(&now)
		return now
	}
	now := set("2026-01-31T23:59:00Z")
	a, _ := startAggregator(t, freeAddr(t), WithClock(func() time.Time { return *clock.Load() }))
	report := func(seq uint64, tokens int64) {
		t.Helper()
		req := &usagev1.ReportRequest{ReporterId: "pod-x", Seq: seq,
			Usage: []*usagev1.KeyUsage{{Namespace: ns, ApiKey: key.Name, PromptTokens: tokens, Requests: 1}}}
		if _, err := a.Report(t.Context(), req); err != nil {
			t.Fatal(err)
		}
	}

	report(1, 7)
	report(2, 5)
	ak := getKey(t, key)
	if u := ak.Status.Usage; u.Tokens != 12 || u.Requests != 2 || !u.WindowStart.Time.Equal(auth.QuotaWindowStart(servingv1alpha1.QuotaWindowDay, now)) {
		t.Fatalf("usage before midnight: %+v", u)
	}
	if auth.KeyRefusal(ak, now) != auth.RefusalQuotaExhausted || !meta.IsStatusConditionTrue(ak.Status.Conditions, servingv1alpha1.ApiKeyConditionQuotaExhausted) {
		t.Fatalf("quota not exhausted at 12 of 10: %+v", ak.Status.Conditions)
	}

	now = set("2026-02-01T00:00:30Z")
	report(3, 4)
	ak = getKey(t, key)
	if u := ak.Status.Usage; u.Tokens != 4 || u.Requests != 1 || !u.WindowStart.Time.Equal(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("usage after midnight: %+v", u)
	}
	if auth.KeyRefusal(ak, now) != auth.RefusalNone || meta.IsStatusConditionTrue(ak.Status.Conditions, servingv1alpha1.ApiKeyConditionQuotaExhausted) {
		t.Fatalf("quota still exhausted in a new window: %+v", ak.Status.Conditions)
	}
}

// Two manager replicas write the same keys at once, one of them from an informer cache as the
// manager does, and one batch even reaches both: the API server's optimistic concurrency and
// the seqs keep the totals exact.
func TestConcurrentReplicas(t *testing.T) {
	ns := newNamespace(t)
	keys := []types.NamespacedName{createKey(t, ns, "a", nil), createKey(t, ns, "b", nil)}
	cached := startCache(t)
	addr1, addr2 := freeAddr(t), freeAddr(t)
	a1, _ := startAggregator(t, addr1)
	a2 := NewAggregator(cached.GetClient(), addr2, WithFlushInterval(testFlushInterval), WithAPIReader(cached.GetAPIReader()))
	serve(t, a2, addr2)
	r1, r2 := startReporter(t, addr1), startReporter(t, addr2)

	want := map[types.NamespacedName]counts{}
	for range 10 {
		recordMany(r1, keys, 20, want)
		recordMany(r2, keys, 20, want)
		time.Sleep(testFlushInterval / 2)
	}
	// One batch delivered to both replicas (a resend that went elsewhere).
	req := &usagev1.ReportRequest{ReporterId: "pod-both", Seq: 1, Usage: []*usagev1.KeyUsage{
		{Namespace: ns, ApiKey: keys[0].Name, PromptTokens: 3, Requests: 1}}}
	var wg sync.WaitGroup
	for _, a := range []*Aggregator{a1, a2} {
		wg.Go(func() {
			if _, err := a.Report(t.Context(), req); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	want[keys[0]] = counts{want[keys[0]].tokens + 3, want[keys[0]].requests + 1}
	flush(t, r1)
	flush(t, r2)
	checkUsage(t, want)
	t.Logf("write conflicts so far: %v", testutil.ToFloat64(writeConflictsTotal))
}

// Usage of a deleted ApiKey is acknowledged and dropped, so reporters do not resend it forever.
func TestDeletedKeyDropped(t *testing.T) {
	ns := newNamespace(t)
	key := createKey(t, ns, "live", nil)
	addr := freeAddr(t)
	startAggregator(t, addr)
	r := startReporter(t, addr)
	r.Record(ns, "gone", "uid-of-gone", 5, 5)
	record(r, key, 1, 2)
	flush(t, r)
	checkUsage(t, map[types.NamespacedName]counts{key: {3, 1}})
}

// Usage a runtime recorded for an ApiKey that was then deleted and created again under the
// same name (still queued, or resent) is not charged to the new key: it is another object.
func TestRecreatedKeyNotChargedTheOldUsage(t *testing.T) {
	ns := newNamespace(t)
	key := createKey(t, ns, "k", nil)
	old, _ := keyUIDs.Load(key)
	addr := freeAddr(t)
	startAggregator(t, addr)
	r := startReporter(t, addr)
	record(r, key, 10, 10)
	flush(t, r)
	checkUsage(t, map[types.NamespacedName]counts{key: {20, 1}})

	if err := startEnv(t).Client.Delete(t.Context(), getKey(t, key)); err != nil {
		t.Fatal(err)
	}
	createKey(t, ns, "k", nil)
	dropped := testutil.ToFloat64(entriesTotal.WithLabelValues(resultDropped))
	r.Record(ns, key.Name, old.(types.UID), 50, 50) // from a request the old key authenticated
	record(r, key, 1, 2)
	flush(t, r)
	checkUsage(t, map[types.NamespacedName]counts{key: {3, 1}})
	if got := testutil.ToFloat64(entriesTotal.WithLabelValues(resultDropped)) - dropped; got != 1 {
		t.Errorf("%v entries dropped, want the old key's one", got)
	}
}

// The manager's cache may lag behind the API server: not have a key created a moment ago,
// or still hold the object it replaced (deleted and created again under the same name). The
// key is read from the API server before its usage is dropped, and charged.
func TestLaggingCacheStillCharges(t *testing.T) {
	ns := newNamespace(t)
	e := startEnv(t)
	fresh := createKey(t, ns, "new", nil)
	recreated := createKey(t, ns, "recreated", nil)
	before := getKey(t, recreated)
	if err := e.Client.Delete(t.Context(), before); err != nil {
		t.Fatal(err)
	}
	createKey(t, ns, "recreated", nil)

	direct, err := client.NewWithWatch(e.Config, client.Options{Scheme: e.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	lagging := interceptor.NewClient(direct, interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, k client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			switch k {
			case fresh:
				return apierrors.NewNotFound(servingv1alpha1.GroupVersion.WithResource("apikeys").GroupResource(), k.Name)
			case recreated:
				before.DeepCopyInto(obj.(*servingv1alpha1.ApiKey))
				return nil
			}
			return c.Get(ctx, k, obj, opts...)
		},
	})
	addr := freeAddr(t)
	a := NewAggregator(lagging, addr, WithFlushInterval(testFlushInterval), WithAPIReader(e.Client))
	serve(t, a, addr)
	r := startReporter(t, addr)
	record(r, fresh, 4, 5)
	record(r, recreated, 2, 1)
	flush(t, r)
	checkUsage(t, map[types.NamespacedName]counts{fresh: {9, 1}, recreated: {3, 1}})
}

// The reads that confirm unknown keys are limited: a batch naming more than the budget
// allows is answered UNAVAILABLE, and its resend, once the budget allows, counts each key once.
func TestConfirmingReadsAreLimited(t *testing.T) {
	ns := newNamespace(t)
	e := startEnv(t)
	var keys []types.NamespacedName
	for _, name := range []string{"a", "b", "c"} {
		keys = append(keys, createKey(t, ns, name, nil))
	}
	a := blindAggregator(t, e, rate.NewLimiter(0, 1)) // one read, never replenished
	req := batchFor(keys)
	if _, err := a.Report(t.Context(), req); status.Code(err) != codes.Unavailable {
		t.Fatalf("Report with one confirming read for three unknown keys: %v, want Unavailable", err)
	}
	charged := 0
	for _, k := range keys {
		if u := getKey(t, k).Status.Usage; u != nil && u.Tokens == 1 {
			charged++
		}
	}
	if charged != 1 {
		t.Fatalf("%d keys charged with one confirming read, want 1", charged)
	}
	a.confirms.SetLimit(rate.Inf)
	if _, err := a.Report(t.Context(), req); err != nil {
		t.Fatalf("the resent batch: %v", err)
	}
	checkUsage(t, map[types.NamespacedName]counts{keys[0]: {1, 1}, keys[1]: {1, 1}, keys[2]: {1, 1}})
}

// Keys deleted while in use cost one confirming read each, once: a batch naming more of them
// than the reads left for now gets through on its resends.
func TestGoneKeysConfirmedOnce(t *testing.T) {
	ns := newNamespace(t)
	e := startEnv(t)
	var keys []types.NamespacedName
	for _, name := range []string{"a", "b", "c", "d", "e"} {
		keys = append(keys, createKey(t, ns, name, nil))
	}
	req := batchFor(keys)
	for _, k := range keys {
		if err := e.Client.Delete(t.Context(), getKey(t, k)); err != nil {
			t.Fatal(err)
		}
	}
	a := blindAggregator(t, e, rate.NewLimiter(0, 2))
	limited := testutil.ToFloat64(confirmsLimitedTotal)
	if _, err := a.Report(t.Context(), req); status.Code(err) != codes.Unavailable {
		t.Fatalf("five deleted keys, two confirming reads: %v, want Unavailable", err)
	}
	if got := testutil.ToFloat64(confirmsLimitedTotal) - limited; got != 3 {
		t.Errorf("%v keys refused a confirming read, want 3", got)
	}
	a.confirms = rate.NewLimiter(0, 3) // three more: enough only if the first two are remembered
	if _, err := a.Report(t.Context(), req); err != nil {
		t.Fatalf("the resent batch: %v", err)
	}
	if got := testutil.ToFloat64(confirmsLimitedTotal) - limited; got != 3 {
		t.Errorf("%v keys refused a confirming read in all, want the first try's 3", got)
	}
}

// blindAggregator serves an aggregator whose cache has no ApiKey, reading the API server
// through confirms.
func blindAggregator(t *testing.T, e *testenv.Env, confirms *rate.Limiter) *Aggregator {
	t.Helper()
	direct, err := client.NewWithWatch(e.Config, client.Options{Scheme: e.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	blind := interceptor.NewClient(direct, interceptor.Funcs{
		Get: func(_ context.Context, _ client.WithWatch, k client.ObjectKey, _ client.Object, _ ...client.GetOption) error {
			return apierrors.NewNotFound(servingv1alpha1.GroupVersion.WithResource("apikeys").GroupResource(), k.Name)
		},
	})
	addr := freeAddr(t)
	a := NewAggregator(blind, addr, WithFlushInterval(testFlushInterval), WithAPIReader(e.Client))
	a.confirms = confirms
	serve(t, a, addr)
	return a
}

// batchFor is a batch charging one request and one token to each key, as createKey made it.
func batchFor(keys []types.NamespacedName) *usagev1.ReportRequest {
	req := &usagev1.ReportRequest{ReporterId: "pod-x", Seq: 1}
	for _, k := range keys {
		uid, _ := keyUIDs.Load(k)
		req.Usage = append(req.Usage, &usagev1.KeyUsage{Namespace: k.Namespace, ApiKey: k.Name, ApiKeyUid: string(uid.(types.UID)), PromptTokens: 1, Requests: 1})
	}
	return req
}

// startCache runs a controller-runtime cluster (informer cache + clients) until the test ends.
func startCache(t *testing.T) cluster.Cluster {
	t.Helper()
	e := startEnv(t)
	c, err := cluster.New(e.Config, func(o *cluster.Options) { o.Scheme = e.Scheme })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	// Wait for the cache, and start the ApiKey informer before the aggregator needs it.
	waitFor(t, "the cache", func() bool { return c.GetClient().List(t.Context(), &servingv1alpha1.ApiKeyList{}) == nil })
	return c
}

// waitFor polls cond for up to 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
