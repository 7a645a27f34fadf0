package usage

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/helixflow/helixflow/internal/usage/usagev1"
)

const (
	// MaxRequestBytes caps a Report message; gRPC refuses bigger ones with RESOURCE_EXHAUSTED.
	// MaxBatchKeys entries of the longest names fit in it.
	MaxRequestBytes = 2 << 20
	// MaxBatchKeys caps the entries of one batch.
	MaxBatchKeys = 4096
	// MaxReporterIDLength caps reporter_id (the CRD's MaxLength of reporters[].id).
	MaxReporterIDLength = 128
	// maxUIDLength caps api_key_uid; Kubernetes UIDs are 36-character UUIDs.
	maxUIDLength = 128
	// maxCount caps each count of an entry: far above what one runtime serves in a batch
	// interval, low enough that sums cannot overflow.
	maxCount = 1 << 50
)

// batch is a validated Report: one entry per ApiKey object (name and uid).
type batch map[batchKey]entry

// batchKey names the ApiKey object an entry is for.
type batchKey struct {
	types.NamespacedName
	uid types.UID
}

// parseBatch validates req and merges entries that name the same key object: a batch is
// applied to a key as a whole, so its counts for that key must be one entry.
func parseBatch(req *usagev1.ReportRequest) (batch, error) {
	id := req.GetReporterId()
	switch {
	case id == "" || len(id) > MaxReporterIDLength:
		return nil, fmt.Errorf("reporter_id must be 1 to %d characters", MaxReporterIDLength)
	case req.GetSeq() == 0 || req.GetSeq() > math.MaxInt64:
		return nil, errors.New("seq must be between 1 and 2^63-1")
	case len(req.GetUsage()) == 0 || len(req.GetUsage()) > MaxBatchKeys:
		return nil, fmt.Errorf("usage must have 1 to %d entries", MaxBatchKeys)
	}
	b := make(batch, len(req.GetUsage()))
	for i, u := range req.GetUsage() {
		if err := checkKeyUsage(u); err != nil {
			return nil, fmt.Errorf("usage[%d]: %w", i, err)
		}
		uid := types.UID(u.GetApiKeyUid())
		key := batchKey{types.NamespacedName{Namespace: u.GetNamespace(), Name: u.GetApiKey()}, uid}
		e := b[key]
		e.reporter, e.seq, e.uid = id, int64(req.GetSeq()), uid
		e.tokens = addCapped(e.tokens, addCapped(u.GetPromptTokens(), u.GetCompletionTokens()))
		e.requests = addCapped(e.requests, u.GetRequests())
		b[key] = e
	}
	return b, nil
}

// checkKeyUsage accepts an entry that names a possible ApiKey and has sane counts.
func checkKeyUsage(u *usagev1.KeyUsage) error {
	if errs := validation.IsDNS1123Label(u.GetNamespace()); len(errs) > 0 {
		return fmt.Errorf("namespace: %s", strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(u.GetApiKey()); len(errs) > 0 {
		return fmt.Errorf("api_key: %s", strings.Join(errs, "; "))
	}
	if len(u.GetApiKeyUid()) > maxUIDLength {
		return fmt.Errorf("api_key_uid must be at most %d characters", maxUIDLength)
	}
	counts := []struct {
		name string
		n    int64
	}{{"prompt_tokens", u.GetPromptTokens()}, {"completion_tokens", u.GetCompletionTokens()}, {"requests", u.GetRequests()}}
	for _, c := range counts {
		if c.n < 0 || c.n > maxCount {
			return fmt.Errorf("%s must be between 0 and %d", c.name, int64(maxCount))
		}
	}
	return nil
}
