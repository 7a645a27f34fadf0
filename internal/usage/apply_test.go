package usage

import (
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/usage/usagev1"
)

var now = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

func TestApplyEntriesSkipsDuplicates(t *testing.T) {
	ak := &servingv1alpha1.ApiKey{}
	res := applyEntries(ak, []entry{
		{reporter: "a", seq: 1, tokens: 10, requests: 1},
		{reporter: "a", seq: 1, tokens: 10, requests: 1}, // resent copy in the same flush
		{reporter: "b", seq: 7, tokens: 5, requests: 2},
		{reporter: "a", seq: 2, tokens: 1, requests: 1},
	}, now)
	if res != (applyResult{applied: 3, duplicates: 1}) {
		t.Fatalf("result %+v", res)
	}
	u := ak.Status.Usage
	if u.Tokens != 16 || u.Requests != 4 || !u.LastUsedTime.Time.Equal(now) {
		t.Fatalf("usage %+v", u)
	}
	if len(u.Reporters) != 2 || u.Reporters[0] != reporter("a", 2, now) || u.Reporters[1] != reporter("b", 7, now) {
		t.Fatalf("reporters %+v", u.Reporters)
	}
	if !meta.IsStatusConditionFalse(ak.Status.Conditions, servingv1alpha1.ApiKeyConditionQuotaExhausted) {
		t.Fatalf("conditions %+v", ak.Status.Conditions)
	}

	before := ak.DeepCopy()
	res = applyEntries(ak, []entry{{reporter: "a", seq: 2, tokens: 1}, {reporter: "b", seq: 3, tokens: 1}}, now.Add(time.Minute))
	if res.applied != 0 || res.duplicates != 2 || !reflect.DeepEqual(ak, before) {
		t.Fatalf("duplicates changed the key: %+v, %+v", res, ak.Status.Usage)
	}
}

// TestApplyEntriesSkipsAnotherObject: counts charged to an ApiKey object that was deleted
// are not added to the key created since under the same name, and do not enter its
// reporters; counts sent without a uid are charged by name.
func TestApplyEntriesSkipsAnotherObject(t *testing.T) {
	ak := &servingv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{UID: "new"}}
	res := applyEntries(ak, []entry{
		{reporter: "a", seq: 1, uid: "old", tokens: 100, requests: 9},
		{reporter: "b", seq: 4, uid: "new", tokens: 5, requests: 1},
		{reporter: "c", seq: 2, tokens: 2, requests: 1},
	}, now)
	if res != (applyResult{applied: 2, stale: 1}) {
		t.Fatalf("result %+v", res)
	}
	u := ak.Status.Usage
	if u.Tokens != 7 || u.Requests != 2 {
		t.Fatalf("usage %+v, want 7 tokens and 2 requests", u)
	}
	if len(u.Reporters) != 2 || u.Reporters[0] != reporter("b", 4, now) || u.Reporters[1] != reporter("c", 2, now) {
		t.Fatalf("reporters %+v, want b and c only", u.Reporters)
	}
	before := ak.DeepCopy()
	if res := applyEntries(ak, []entry{{reporter: "a", seq: 2, uid: "old", tokens: 1}}, now); res != (applyResult{stale: 1}) || !reflect.DeepEqual(ak, before) {
		t.Fatalf("stale entries changed the key: %+v", res)
	}
}

// TestApplyEntriesOneBatchTwoEntries: a batch's entries for one key with and without a uid
// both count, and a resent copy of the batch beside it counts for nothing.
func TestApplyEntriesOneBatchTwoEntries(t *testing.T) {
	ak := &servingv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{UID: "u"}}
	batch := []entry{{reporter: "a", seq: 3, tokens: 10, requests: 1}, {reporter: "a", seq: 3, uid: "u", tokens: 5, requests: 1}}
	res := applyEntries(ak, append(batch, batch...), now)
	if res != (applyResult{applied: 2, duplicates: 2}) || ak.Status.Usage.Tokens != 15 {
		t.Fatalf("result %+v, %d tokens; want 2 applied, 2 duplicates, 15 tokens", res, ak.Status.Usage.Tokens)
	}
	if res := applyEntries(ak, batch, now); res.applied != 0 || res.duplicates != 2 {
		t.Fatalf("the batch resent later: %+v", res)
	}
}

func TestApplyEntriesNewWindow(t *testing.T) {
	old := metav1.NewTime(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC))
	ak := &servingv1alpha1.ApiKey{Status: servingv1alpha1.ApiKeyStatus{Usage: &servingv1alpha1.KeyUsage{
		WindowStart: &old, Tokens: 900, Requests: 9, Reporters: []servingv1alpha1.UsageReporter{reporter("a", 4, now.Add(-time.Minute))},
	}}}
	applyEntries(ak, []entry{{reporter: "a", seq: 5, tokens: 3, requests: 1}}, now)
	u := ak.Status.Usage
	if u.Tokens != 3 || u.Requests != 1 || !u.WindowStart.Time.Equal(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("usage %+v", u)
	}
	// The seqs outlive the window: a resend across midnight must still be a duplicate.
	if u.Reporters[0].Seq != 5 {
		t.Fatalf("reporters %+v", u.Reporters)
	}
}

// TestApplyEntriesNeverMovesTheWindowBack: at a window's start, a manager replica whose clock
// is a second behind counts into the window already started instead of resetting it.
func TestApplyEntriesNeverMovesTheWindowBack(t *testing.T) {
	day := func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.Quota = &servingv1alpha1.TokenQuota{Tokens: 1000, Window: servingv1alpha1.QuotaWindowDay}
	}
	ak := &servingv1alpha1.ApiKey{}
	day(ak)
	midnight := time.Date(2026, 3, 11, 0, 0, 0, 0, time.UTC)
	applyEntries(ak, []entry{{reporter: "a", seq: 1, tokens: 5}}, midnight)
	applyEntries(ak, []entry{{reporter: "b", seq: 1, tokens: 7}}, midnight.Add(-time.Second)) // behind
	applyEntries(ak, []entry{{reporter: "a", seq: 2, tokens: 3}}, midnight.Add(time.Second))
	if u := ak.Status.Usage; u.Tokens != 15 || !u.WindowStart.Time.Equal(midnight) {
		t.Fatalf("usage %d tokens from %v, want 15 from %v", u.Tokens, u.WindowStart, midnight)
	}
}

// TestApplyEntriesManyReporters: every runtime process that reports a key in one flush keeps
// its entry, so that any of them resending its batch (its acknowledgement lost) is a
// duplicate, up to MaxReporters.
func TestApplyEntriesManyReporters(t *testing.T) {
	ak := &servingv1alpha1.ApiKey{}
	var entries []entry
	for i := range MaxReporters {
		entries = append(entries, entry{reporter: fmt.Sprintf("runtime-%04d", i), seq: 1, tokens: 1})
	}
	applyEntries(ak, entries, now)
	last := entries[len(entries)-1]
	if res := applyEntries(ak, []entry{last}, now.Add(time.Second)); res.applied != 0 || res.duplicates != 1 {
		t.Fatalf("a resend from the last of %d reporters: %+v", MaxReporters, res)
	}
	if u := ak.Status.Usage; u.Tokens != MaxReporters || len(u.Reporters) != MaxReporters {
		t.Fatalf("%d tokens and %d reporters, want %d of each", u.Tokens, len(u.Reporters), MaxReporters)
	}
}

func TestPruneReporters(t *testing.T) {
	byID := map[string]servingv1alpha1.UsageReporter{
		"stale": reporter("stale", 1, now.Add(-ReporterTTL-time.Second)),
		"edge":  reporter("edge", 1, now.Add(-ReporterTTL)),
	}
	for i := range MaxReporters + 5 {
		id := fmt.Sprintf("r%04d", i)
		byID[id] = reporter(id, 1, now.Add(-time.Duration(i)*time.Second))
	}
	got := pruneReporters(byID, now)
	if len(got) != MaxReporters {
		t.Fatalf("%d reporters kept, want %d", len(got), MaxReporters)
	}
	for i, r := range got {
		if want := fmt.Sprintf("r%04d", i); r.ID != want {
			t.Fatalf("reporter %d is %s, want %s (the most recent, sorted by id)", i, r.ID, want)
		}
	}
	if got := pruneReporters(map[string]servingv1alpha1.UsageReporter{"edge": byID["edge"], "stale": byID["stale"]}, now); len(got) != 1 || got[0].ID != "edge" {
		t.Fatalf("kept %+v, want only edge", got)
	}
}

func TestParseBatch(t *testing.T) {
	req := &usagev1.ReportRequest{ReporterId: "pod-1", Seq: 3, Usage: []*usagev1.KeyUsage{
		{Namespace: "ns", ApiKey: "k", ApiKeyUid: "u1", PromptTokens: 1, CompletionTokens: 2, Requests: 1},
		{Namespace: "ns", ApiKey: "k", ApiKeyUid: "u1", PromptTokens: 10, Requests: 2},
		{Namespace: "ns", ApiKey: "k", ApiKeyUid: "u2", PromptTokens: 6, Requests: 1},
		{Namespace: "ns", ApiKey: "other.key", CompletionTokens: 4},
	}}
	b, err := parseBatch(req)
	if err != nil {
		t.Fatal(err)
	}
	k := types.NamespacedName{Namespace: "ns", Name: "k"}
	want := batch{
		{k, "u1"}: {reporter: "pod-1", seq: 3, uid: "u1", tokens: 13, requests: 3},
		{k, "u2"}: {reporter: "pod-1", seq: 3, uid: "u2", tokens: 6, requests: 1},
		{types.NamespacedName{Namespace: "ns", Name: "other.key"}, ""}: {reporter: "pod-1", seq: 3, tokens: 4},
	}
	if !reflect.DeepEqual(b, want) {
		t.Fatalf("batch %+v, want %+v", b, want)
	}
}

func TestReportRefusesInvalidBatches(t *testing.T) {
	ok := func() *usagev1.ReportRequest {
		return &usagev1.ReportRequest{ReporterId: "pod-1", Seq: 1, Usage: []*usagev1.KeyUsage{{Namespace: "ns", ApiKey: "k", PromptTokens: 1, Requests: 1}}}
	}
	many := ok()
	for i := range MaxBatchKeys {
		many.Usage = append(many.Usage, &usagev1.KeyUsage{Namespace: "ns", ApiKey: fmt.Sprint("k", i)})
	}
	cases := map[string]func(*usagev1.ReportRequest){
		"no reporter":        func(r *usagev1.ReportRequest) { r.ReporterId = "" },
		"long reporter":      func(r *usagev1.ReportRequest) { r.ReporterId = strings.Repeat("x", 129) },
		"seq 0":              func(r *usagev1.ReportRequest) { r.Seq = 0 },
		"seq above int64":    func(r *usagev1.ReportRequest) { r.Seq = math.MaxInt64 + 1 },
		"no usage":           func(r *usagev1.ReportRequest) { r.Usage = nil },
		"too many keys":      func(r *usagev1.ReportRequest) { r.Usage = many.Usage },
		"bad namespace":      func(r *usagev1.ReportRequest) { r.Usage[0].Namespace = "Not_A_Label" },
		"empty key":          func(r *usagev1.ReportRequest) { r.Usage[0].ApiKey = "" },
		"path in key":        func(r *usagev1.ReportRequest) { r.Usage[0].ApiKey = "a/b" },
		"negative tokens":    func(r *usagev1.ReportRequest) { r.Usage[0].CompletionTokens = -1 },
		"huge requests":      func(r *usagev1.ReportRequest) { r.Usage[0].Requests = math.MaxInt64 },
		"nil entry is empty": func(r *usagev1.ReportRequest) { r.Usage[0] = nil },
		"long uid":           func(r *usagev1.ReportRequest) { r.Usage[0].ApiKeyUid = strings.Repeat("u", 129) },
	}
	a := NewAggregator(nil, DisabledAddress)
	for name, mutate := range cases {
		req := ok()
		mutate(req)
		if _, err := a.Report(t.Context(), req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	if len(a.pending.entries) != 0 {
		t.Errorf("invalid batches were queued: %+v", a.pending.entries)
	}
}

func TestAddCapped(t *testing.T) {
	if addCapped(math.MaxInt64-1, 5) != math.MaxInt64 || addCapped(2, 3) != 5 {
		t.Fatal("addCapped")
	}
}

func reporter(id string, seq int64, at time.Time) servingv1alpha1.UsageReporter {
	return servingv1alpha1.UsageReporter{ID: id, Seq: seq, LastReportTime: metav1.NewTime(at)}
}
