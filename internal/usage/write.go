package usage

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// writeKey applies a key's queued entries in one status update. The first read comes from
// the client (the manager's cache, usually current). The key is read again from the API
// server after a conflict, so the duplicate check always sees the seqs of the version it
// replaces, and before any usage is dropped: the cache may not have the key yet (created a
// moment ago), or still hold the object it replaced (deleted and created again), and usage
// is dropped only for a key that is really gone or really another object. The uids found gone
// are remembered, so that usage for them is dropped at once next time.
func (a *Aggregator) writeKey(ctx context.Context, key types.NamespacedName, entries []entry) error {
	if entries = a.skipGone(key, entries); len(entries) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	var reader client.Reader = a.client
	direct := a.apiReader == nil // the client reads the API server itself
	reread := func() { reader, direct = a.uncached(), true }
	for range maxWriteAttempts {
		ak := &servingv1alpha1.ApiKey{}
		err := reader.Get(ctx, key, ak)
		notFound := apierrors.IsNotFound(err)
		if err != nil && !notFound {
			return fmt.Errorf("reading ApiKey: %w", err)
		}
		var res applyResult
		if !notFound {
			res = applyEntries(ak, entries, a.now())
		}
		if (notFound || res.stale > 0) && !direct {
			// Usage would be dropped on the cache's word: ask the API server first.
			if err := a.confirm(); err != nil {
				return err
			}
			reread()
			continue
		}
		if notFound {
			a.deleted(key, entries)
			return nil
		}
		if res.stale > 0 {
			a.gone.addEntries(entries, ak.UID)
		}
		if res.applied == 0 {
			a.counted(key, res)
			return nil
		}
		err = a.client.Status().Update(ctx, ak)
		switch {
		case err == nil:
			entriesTotal.WithLabelValues(resultApplied).Add(float64(res.applied))
			a.counted(key, res)
			return nil
		case apierrors.IsConflict(err):
			writeConflictsTotal.Inc()
			reread()
		case apierrors.IsNotFound(err):
			a.deleted(key, entries)
			return nil
		default:
			return fmt.Errorf("updating ApiKey status: %w", err)
		}
	}
	return fmt.Errorf("updating ApiKey status: still conflicting after %d attempts", maxWriteAttempts)
}

// deleted drops the entries of a key the API server does not have, and remembers their uids.
func (a *Aggregator) deleted(key types.NamespacedName, entries []entry) {
	a.gone.addEntries(entries, "")
	a.dropped(key, len(entries), "deleted")
}

// skipGone drops the entries for uids known to be gone, and returns the others.
func (a *Aggregator) skipGone(key types.NamespacedName, entries []entry) []entry {
	live := make([]entry, 0, len(entries))
	for _, e := range entries {
		if e.uid == "" || !a.gone.has(e.uid) {
			live = append(live, e)
		}
	}
	if n := len(entries) - len(live); n > 0 {
		a.dropped(key, n, "deleted (known)")
	}
	return live
}

// errConfirmsLimited fails a key whose usage needs a confirming read when none is left for
// now: its reporters resend the batch later, as after any failed write.
var errConfirmsLimited = errors.New("too many reads to confirm unknown ApiKeys; send the batch again later")

// confirm takes one confirming read from the budget (Aggregator.confirms).
func (a *Aggregator) confirm() error {
	if !a.confirms.Allow() {
		confirmsLimitedTotal.Inc()
		return errConfirmsLimited
	}
	return nil
}

// counted records the entries of a write that were not applied: duplicates, and those for an
// ApiKey deleted and created again under the same name.
func (a *Aggregator) counted(key types.NamespacedName, res applyResult) {
	entriesTotal.WithLabelValues(resultDuplicate).Add(float64(res.duplicates))
	if res.stale > 0 {
		a.dropped(key, res.stale, "deleted and created again")
	}
}

// dropped discards the counts of a key that no longer exists: there is nothing to charge,
// and keeping them would make the reporters resend forever.
func (a *Aggregator) dropped(key types.NamespacedName, entries int, why string) {
	a.log.V(1).Info("dropping usage of a deleted ApiKey", "apiKey", key.String(), "entries", entries, "reason", why)
	entriesTotal.WithLabelValues(resultDropped).Add(float64(entries))
}
