package controllers

import (
	"context"
	"fmt"

	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
)

// indexApiKeyHash indexes ApiKeys by the hashes of every key they accept (current and
// previous), so the token service finds a key's ApiKey in the cache without a scan.
const indexApiKeyHash = "status.keyHashes"

func apiKeyHashes(o client.Object) []string {
	ak := o.(*servingv1alpha1.ApiKey)
	var hashes []string
	if ak.Status.KeyHash != "" {
		hashes = append(hashes, ak.Status.KeyHash)
	}
	for _, p := range ak.Status.PreviousKeys {
		hashes = append(hashes, p.KeyHash)
	}
	return hashes
}

// cachedKeyLookup implements tokenservice.KeyLookup on the manager's informer cache.
type cachedKeyLookup struct{ reader client.Reader }

func (l cachedKeyLookup) ApiKeyByHash(ctx context.Context, h auth.KeyHash) (*servingv1alpha1.ApiKey, error) {
	var list servingv1alpha1.ApiKeyList
	if err := l.reader.List(ctx, &list, client.MatchingFields{indexApiKeyHash: h.String()}); err != nil {
		return nil, fmt.Errorf("looking up API key: %w", err)
	}
	if len(list.Items) == 0 {
		return nil, nil
	}
	// Two ApiKeys can only share a hash if someone brought the same key twice; the first
	// one's policy applies, as the runtimes' index would pick one too.
	return &list.Items[0], nil
}
