package usage

import (
	"maps"
	"math"
	"sort"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
)

const (
	// ReporterTTL is how long a reporter's last seq is kept on a key after its last batch. A
	// runtime gone that long does not resend anything, so its entry protects nothing any more.
	ReporterTTL = time.Hour
	// MaxReporters is the most reporter entries kept per key (the CRD's MaxItems). The
	// entries of one write all count as the most recent, so a batch stays protected from a
	// second count as long as at most this many runtime processes report the key in one
	// flush; beyond that, the oldest entries go.
	MaxReporters = 1024
)

// entry is one reporter's counts for one key from one batch.
type entry struct {
	reporter string
	seq      int64
	uid      types.UID // the ApiKey object the runtime charged; "" for any
	tokens   int64
	requests int64
}

// applyResult says what applyEntries did with a key's entries.
type applyResult struct {
	applied, duplicates int
	// stale counts entries for another object of the same name: one deleted since.
	stale int
}

// applyEntries adds to ak.Status the entries whose seq is above the one recorded for their
// reporter, records the new seqs, and sets QuotaExhausted; entries are applied in order, so a
// resent batch queued beside its first copy counts once, while the entries of one batch for
// the key (one without a uid and one with, from a runtime upgraded meanwhile) all count.
// Entries charged to another object of the key's name (a key deleted and created again) are
// left out. ak is left untouched when no entry applies.
func applyEntries(ak *servingv1alpha1.ApiKey, entries []entry, now time.Time) applyResult {
	u := &servingv1alpha1.KeyUsage{}
	if ak.Status.Usage != nil {
		u = ak.Status.Usage.DeepCopy()
	}
	stored := make(map[string]int64, len(u.Reporters))
	for _, r := range u.Reporters {
		stored[r.ID] = r.Seq
	}
	last := maps.Clone(stored)
	type batchEntry struct {
		reporter string
		seq      int64
		uid      types.UID
	}
	applied := make(map[batchEntry]bool, len(entries))
	start := metav1.NewTime(auth.QuotaWindowStart(quotaWindow(ak), now))
	var res applyResult
	for _, e := range entries {
		if e.uid != "" && e.uid != ak.UID {
			res.stale++
			continue
		}
		id := batchEntry{e.reporter, e.seq, e.uid}
		if e.seq <= stored[e.reporter] || e.seq < last[e.reporter] || applied[id] {
			res.duplicates++
			continue
		}
		applied[id] = true
		if u.WindowStart == nil || u.WindowStart.Before(&start) {
			// A new window: what was counted belongs to the previous one. Never back: a
			// replica whose clock is behind at the boundary counts into the window already
			// started, rather than reset it and lose what it held.
			u.WindowStart, u.Tokens, u.Requests = &start, 0, 0
		}
		u.Tokens, u.Requests = addCapped(u.Tokens, e.tokens), addCapped(u.Requests, e.requests)
		last[e.reporter] = e.seq
		res.applied++
	}
	if res.applied == 0 {
		return res
	}
	t := metav1.NewTime(now)
	u.LastUsedTime = &t
	u.Reporters = liveReporters(u.Reporters, entries, last, now)
	ak.Status.Usage = u
	auth.SetQuotaCondition(&ak.Status, ak, now)
	return res
}

// quotaWindow is the key's quota window; keys without a quota are counted per month.
func quotaWindow(ak *servingv1alpha1.ApiKey) servingv1alpha1.QuotaWindow {
	if q := ak.Spec.Quota; q != nil && q.Window != "" {
		return q.Window
	}
	return servingv1alpha1.QuotaWindowMonth
}

// liveReporters is the reporter list after applying entries: the reporters of applied
// entries get their new seq and now, entries older than ReporterTTL go, and at most
// MaxReporters stay (the most recent), sorted by id so the list does not churn.
func liveReporters(old []servingv1alpha1.UsageReporter, entries []entry, last map[string]int64, now time.Time) []servingv1alpha1.UsageReporter {
	byID := make(map[string]servingv1alpha1.UsageReporter, len(old)+len(entries))
	for _, r := range old {
		byID[r.ID] = r
	}
	for _, e := range entries {
		if byID[e.reporter].Seq < last[e.reporter] { // applied: stale entries left last at 0
			byID[e.reporter] = servingv1alpha1.UsageReporter{ID: e.reporter, Seq: last[e.reporter], LastReportTime: metav1.NewTime(now)}
		}
	}
	return pruneReporters(byID, now)
}

// pruneReporters drops entries not updated within ReporterTTL of now and keeps the
// MaxReporters most recent, sorted by id.
func pruneReporters(byID map[string]servingv1alpha1.UsageReporter, now time.Time) []servingv1alpha1.UsageReporter {
	out := make([]servingv1alpha1.UsageReporter, 0, len(byID))
	for _, r := range byID {
		if now.Sub(r.LastReportTime.Time) <= ReporterTTL {
			out = append(out, r)
		}
	}
	if len(out) > MaxReporters {
		sort.Slice(out, func(i, j int) bool {
			if !out[i].LastReportTime.Equal(&out[j].LastReportTime) {
				return out[i].LastReportTime.After(out[j].LastReportTime.Time)
			}
			return out[i].ID < out[j].ID
		})
		out = out[:MaxReporters]
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// addCapped adds two non-negative counts, stopping at MaxInt64 instead of wrapping.
func addCapped(a, b int64) int64 {
	if b > math.MaxInt64-a {
		return math.MaxInt64
	}
	return a + b
}
