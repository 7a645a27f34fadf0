package usage

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// writeKey applies a key's queued entries in one status update. The first read comes from
// the client (the manager's cache, usually current); after a conflict the key is re-read
// from the API server and the entries are applied again to what is really stored, so the
// duplicate check always sees the seqs of the version it replaces.
func (a *Aggregator) writeKey(ctx context.Context, key types.NamespacedName, entries []entry) error {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	var reader client.Reader = a.client
	for range maxWriteAttempts {
		ak := &servingv1alpha1.ApiKey{}
		if err := reader.Get(ctx, key, ak); err != nil {
			if apierrors.IsNotFound(err) {
				a.dropped(key, entries)
				return nil
			}
			return fmt.Errorf("reading ApiKey: %w", err)
		}
		res := applyEntries(ak, entries, a.now())
		if res.applied == 0 {
			entriesTotal.WithLabelValues(resultDuplicate).Add(float64(res.duplicates))
			return nil
		}
		err := a.client.Status().Update(ctx, ak)
		switch {
		case err == nil:
			entriesTotal.WithLabelValues(resultApplied).Add(float64(res.applied))
			entriesTotal.WithLabelValues(resultDuplicate).Add(float64(res.duplicates))
			return nil
		case apierrors.IsConflict(err):
			writeConflictsTotal.Inc()
			reader = a.reader
		case apierrors.IsNotFound(err):
			a.dropped(key, entries)
			return nil
		default:
			return fmt.Errorf("updating ApiKey status: %w", err)
		}
	}
	return fmt.Errorf("updating ApiKey status: still conflicting after %d attempts", maxWriteAttempts)
}

// dropped discards the counts of a key that no longer exists: there is nothing to charge,
// and keeping them would make the reporters resend forever.
func (a *Aggregator) dropped(key types.NamespacedName, entries []entry) {
	a.log.V(1).Info("dropping usage of a deleted ApiKey", "apiKey", key.String(), "entries", len(entries))
	entriesTotal.WithLabelValues(resultDropped).Add(float64(len(entries)))
}
