package auth

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

func TestIndexCurrentKey(t *testing.T) {
	x := NewIndex(testNS)
	key, keyID := newKey(t)
	rl := &servingv1alpha1.KeyRateLimit{RequestsPerMinute: 60}
	ak := makeApiKey("chat").Key(keyID, key).Models("llama").Obj()
	ak.Spec.RateLimit = rl
	mustUpsert(t, x, ak)

	p, err := x.authenticateKey(key, t0)
	if err != nil {
		t.Fatalf("current key refused: %v", err)
	}
	want := &Principal{
		Namespace: testNS, Name: "chat", KeyID: keyID, Method: MethodAPIKey,
		Models: []string{"llama"}, Scopes: defaultScopes, RateLimit: rl,
	}
	if diff := cmp.Diff(want, p); diff != "" {
		t.Errorf("principal (-want +got):\n%s", diff)
	}
	if _, err := x.authenticateKey(key+"x", t0); err != ErrInvalidAPIKey {
		t.Errorf("altered key: error = %v, want invalid_api_key", err)
	}
}

func TestIndexPreviousKeyUntilValidUntil(t *testing.T) {
	x := NewIndex(testNS)
	cur, curID := newKey(t)
	prev, prevID := newKey(t)
	until := t0.Add(time.Hour)
	mustUpsert(t, x, makeApiKey("rotated").Key(curID, cur).Previous(prevID, prev, until).Obj())

	p, err := x.authenticateKey(prev, until.Add(-time.Nanosecond))
	if err != nil {
		t.Fatalf("previous key refused in its grace period: %v", err)
	}
	if p.KeyID != prevID {
		t.Errorf("KeyID = %q, want the previous key's %q", p.KeyID, prevID)
	}
	if _, err := x.authenticateKey(prev, until); err != ErrKeyRotatedOut {
		t.Errorf("previous key at validUntil: error = %v, want rotated out", err)
	}
	if _, err := x.authenticateKey(cur, until.Add(time.Hour)); err != nil {
		t.Errorf("current key refused after the grace period: %v", err)
	}
}

func TestIndexUpdateReplacesHash(t *testing.T) {
	x := NewIndex(testNS)
	oldKey, oldID := newKey(t)
	newK, newID := newKey(t)
	mustUpsert(t, x, makeApiKey("k").Key(oldID, oldKey).Obj())
	mustUpsert(t, x, makeApiKey("k").Key(newID, newK).Obj())

	if _, err := x.authenticateKey(oldKey, t0); err != ErrInvalidAPIKey {
		t.Errorf("replaced key: error = %v, want invalid_api_key", err)
	}
	if _, err := x.authenticateKey(newK, t0); err != nil {
		t.Errorf("new key refused: %v", err)
	}
	if n := x.Len(); n != 1 {
		t.Errorf("Len = %d after replacing the only key, want 1", n)
	}
}

func TestIndexUpdateKeepsUnchangedKey(t *testing.T) {
	x := NewIndex(testNS)
	key, keyID := newKey(t)
	mustUpsert(t, x, makeApiKey("k").Key(keyID, key).Obj())
	mustUpsert(t, x, makeApiKey("k").Key(keyID, key).Models("only-this").Obj())

	p, err := x.authenticateKey(key, t0)
	if err != nil {
		t.Fatalf("key refused after a spec-only update: %v", err)
	}
	if p.AllowsModel("other") || !p.AllowsModel("only-this") {
		t.Errorf("principal models = %v, want the updated [only-this]", p.Models)
	}
}

func TestIndexDelete(t *testing.T) {
	x := NewIndex(testNS)
	key, keyID := newKey(t)
	prev, prevID := newKey(t)
	mustUpsert(t, x, makeApiKey("gone").Key(keyID, key).Previous(prevID, prev, t0.Add(time.Hour)).Obj())
	x.Delete("gone")
	for _, k := range []string{key, prev} {
		if _, err := x.authenticateKey(k, t0); err != ErrInvalidAPIKey {
			t.Errorf("key of a deleted ApiKey: error = %v, want invalid_api_key", err)
		}
	}
	if x.Len() != 0 || x.record("gone") != nil {
		t.Errorf("deleted ApiKey still indexed: Len=%d", x.Len())
	}
}

func TestIndexBeingDeleted(t *testing.T) {
	x := NewIndex(testNS)
	key, keyID := newKey(t)
	ak := makeApiKey("going").Key(keyID, key).Obj()
	mustUpsert(t, x, ak)
	ak = ak.DeepCopy()
	ak.DeletionTimestamp = &metav1.Time{Time: t0}
	ak.Finalizers = []string{"foregroundDeletion"}
	mustUpsert(t, x, ak)
	if _, err := x.authenticateKey(key, t0); err != ErrInvalidAPIKey {
		t.Errorf("key of an ApiKey being deleted: error = %v, want invalid_api_key", err)
	}
}

// forgotten is one call of an index's ForgetFunc.
type forgotten struct {
	Name   string
	KeyIDs []string
	Gone   bool
}

func TestIndexForgetsDroppedKeyIDs(t *testing.T) {
	x := NewIndex(testNS)
	var heard []forgotten
	x.OnForget(func(name string, keyIDs []string, gone bool) {
		heard = append(heard, forgotten{name, keyIDs, gone})
	})
	cur, curID := newKey(t)
	next, nextID := newKey(t)
	other, otherID := newKey(t)
	mustUpsert(t, x, makeApiKey("k").Key(curID, cur).Obj())
	mustUpsert(t, x, makeApiKey("other").Key(otherID, other).Obj())
	// Rotation: the old key is kept in its grace, then the manager removes it from status.
	mustUpsert(t, x, makeApiKey("k").Key(nextID, next).Previous(curID, cur, t0.Add(time.Hour)).Obj())
	mustUpsert(t, x, makeApiKey("k").Key(nextID, next).Models("llama").Obj())
	x.Delete("k")
	x.Delete("k") // the informer's delete after the update that set deletionTimestamp
	going := makeApiKey("other").Key(otherID, other).Obj()
	going.DeletionTimestamp = &metav1.Time{Time: t0}
	mustUpsert(t, x, going)

	want := []forgotten{
		{Name: "k", KeyIDs: []string{curID}},
		{Name: "k", KeyIDs: []string{nextID}, Gone: true},
		{Name: "other", KeyIDs: []string{otherID}, Gone: true},
	}
	if diff := cmp.Diff(want, heard); diff != "" {
		t.Errorf("ForgetFunc calls (-want +got):\n%s", diff)
	}
}

func TestIndexNeverAcceptsAHash(t *testing.T) {
	x := NewIndex(testNS)
	key, keyID := newKey(t)
	ak := makeApiKey("k").Key(keyID, key).Obj()
	mustUpsert(t, x, ak)
	h := HashKey(key)
	for _, cred := range []string{ak.Status.KeyHash, strings.TrimPrefix(ak.Status.KeyHash, HashPrefix), string(h[:])} {
		if _, err := x.authenticateKey(cred, t0); err != ErrInvalidAPIKey {
			t.Errorf("hash %q presented as a key: error = %v, want invalid_api_key", cred, err)
		}
	}
}

func TestIndexBroughtKeyOfAnyShape(t *testing.T) {
	x := NewIndex(testNS)
	for i, byo := range []string{"sk-legacy/KEY+with=chars", "x", strings.Repeat("z", MaxKeyLength), "hfk_not_a_valid_shape_"} {
		name := fmt.Sprintf("byo-%d", i)
		mustUpsert(t, x, makeApiKey(name).Key("", byo).Obj())
		p, err := x.authenticateKey(byo, t0)
		if err != nil {
			t.Errorf("brought key %q refused: %v", byo, err)
			continue
		}
		if p.Name != name || p.KeyID != DisplayKeyID(byo) {
			t.Errorf("brought key %q: principal %s KeyID %q, want %s and DisplayKeyID %q", byo, p.Name, p.KeyID, name, DisplayKeyID(byo))
		}
	}
	tooLong := strings.Repeat("z", MaxKeyLength+1)
	mustUpsert(t, x, makeApiKey("long").Key("", tooLong).Obj())
	if _, err := x.authenticateKey(tooLong, t0); err != ErrInvalidAPIKey {
		t.Errorf("key over MaxKeyLength: error = %v, want invalid_api_key", err)
	}
}

func TestIndexRefusals(t *testing.T) {
	key, keyID := newKey(t)
	cases := []struct {
		name string
		ak   *servingv1alpha1.ApiKey
		want *Error
	}{
		{name: "suspended", ak: makeApiKey("k").Key(keyID, key).Suspend().Obj(), want: ErrKeySuspended},
		{name: "expired", ak: makeApiKey("k").Key(keyID, key).ExpiresAt(t0).Obj(), want: ErrKeyExpired},
		{name: "quota used up", ak: makeApiKey("k").Key(keyID, key).QuotaUsedUp().Obj(), want: ErrQuotaExceeded},
		{name: "not yet expired", ak: makeApiKey("k").Key(keyID, key).ExpiresAt(t0.Add(time.Second)).Obj()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			x := NewIndex(testNS)
			mustUpsert(t, x, tc.ak)
			_, err := x.authenticateKey(key, t0)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("error = %v, want %v", err, tc.want)
			}
		})
	}
	// A quota refusal says when to ask again: when the window ends.
	x0 := NewIndex(testNS)
	mustUpsert(t, x0, makeApiKey("k").Key(keyID, key).QuotaUsedUp().Obj())
	if _, err := x0.authenticateKey(key, t0); err == nil || err.RetryAfter != QuotaWindowEnd(servingv1alpha1.QuotaWindowMonth, t0).Sub(t0) {
		t.Errorf("quota refusal %+v, want Retry-After until the month's end", err)
	}
	// The quota is per window: the next month the same usage no longer counts.
	x := NewIndex(testNS)
	mustUpsert(t, x, makeApiKey("k").Key(keyID, key).QuotaUsedUp().Obj())
	if _, err := x.authenticateKey(key, QuotaWindowEnd(servingv1alpha1.QuotaWindowMonth, t0)); err != nil {
		t.Errorf("key refused in the next quota window: %v", err)
	}
	if ErrQuotaExceeded.Status != 429 || ErrQuotaExceeded.Code != "insufficient_quota" {
		t.Errorf("quota refusal = %d %s, want 429 insufficient_quota", ErrQuotaExceeded.Status, ErrQuotaExceeded.Code)
	}
}

func TestIndexUpsertErrors(t *testing.T) {
	x := NewIndex(testNS)
	other := makeApiKey("elsewhere").Obj()
	other.Namespace = "team-b"
	if err := x.Upsert(other); err == nil {
		t.Error("an ApiKey of another namespace was indexed")
	}

	key, keyID := newKey(t)
	ak := makeApiKey("half").Key(keyID, key).Obj()
	ak.Status.PreviousKeys = []servingv1alpha1.PreviousKey{{KeyID: "bad", KeyHash: "md5:00"}}
	if err := x.Upsert(ak); err == nil {
		t.Error("an unreadable previous hash was not reported")
	}
	if _, err := x.authenticateKey(key, t0); err != nil {
		t.Errorf("readable current key refused beside an unreadable previous one: %v", err)
	}
}

func TestIndexLookupAllocatesNothing(t *testing.T) {
	x := NewIndex(testNS)
	key, keyID := newKey(t)
	mustUpsert(t, x, makeApiKey("k").Key(keyID, key).Obj())
	if n := testing.AllocsPerRun(100, func() { _, _ = x.authenticateKey(key, t0) }); n != 0 {
		t.Errorf("hit path allocates %v times", n)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = x.authenticateKey("hfk_unknown_key", t0) }); n != 0 {
		t.Errorf("miss path allocates %v times", n)
	}
}

// TestIndexConcurrentUpdates authenticates a stable key while other ApiKeys churn; run with
// -race to check the locking. The stable key must never be refused.
func TestIndexConcurrentUpdates(t *testing.T) {
	x := NewIndex(testNS)
	stable, stableID := newKey(t)
	mustUpsert(t, x, makeApiKey("stable").Key(stableID, stable).Obj())
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 2 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("churn-%d-%d", w, i%50)
				k, id, _ := GenerateKey()
				_ = x.Upsert(makeApiKey(name).Key(id, k).Obj())
				if i%3 == 0 {
					x.Delete(name)
				}
				// The stable key is re-upserted unchanged, as a resync would.
				_ = x.Upsert(makeApiKey("stable").Key(stableID, stable).Obj())
			}
		})
	}
	for range 20000 {
		if _, err := x.authenticateKey(stable, t0); err != nil {
			t.Errorf("stable key refused during concurrent updates: %v", err)
			break
		}
	}
	close(stop)
	wg.Wait()
}

// TestRuntimeCacheDropsUsageReporters: the runtimes cache ApiKeys without the usage
// reporters (up to 1024 entries a key, rewritten by every usage write) and with the counts.
func TestRuntimeCacheDropsUsageReporters(t *testing.T) {
	ak := makeApiKey("k").QuotaUsedUp().Obj()
	ak.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "helixflow-manager"}}
	ak.Status.Usage.Reporters = []servingv1alpha1.UsageReporter{{ID: "runtime-a", Seq: 3}}
	out, err := stripForRuntime(ak)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*servingv1alpha1.ApiKey)
	if got.Status.Usage.Reporters != nil || got.ManagedFields != nil || got.Status.Usage.Tokens != 1000 {
		t.Fatalf("cached %+v, managed fields %v", got.Status.Usage, got.ManagedFields)
	}
}
