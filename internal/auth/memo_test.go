package auth

import (
	"sync"
	"testing"
	"time"
)

// memoized says whether key is in x's memo (with a live entry).
func memoized(x *Index, key string) bool {
	d, ok := memoSecret(key)
	return ok && x.memo.get(&d, key) != nil
}

func TestMemoServesOnlyTheVerifiedKey(t *testing.T) {
	x := NewIndex(testNS)
	key, keyID := newKey(t)
	mustUpsert(t, x, makeApiKey("chat").Key(keyID, key).Obj())
	if memoized(x, key) {
		t.Fatal("memoized before any request")
	}
	first, err := x.authenticateKey(key, t0)
	if err != nil {
		t.Fatal(err)
	}
	if !memoized(x, key) {
		t.Fatal("a verified key of the generated shape was not memoized")
	}
	again, err := x.authenticateKey(key, t0)
	if err != nil || again != first {
		t.Fatalf("memo hit: %v, principal %p, want %p", err, again, first)
	}

	// The same secret under another key ID is another key: refused, whatever the memo holds.
	other, _ := newKey(t)
	forged := other[:memoIDEnd] + key[memoIDEnd:]
	if _, err := x.authenticateKey(forged, t0); err != ErrInvalidAPIKey {
		t.Errorf("key with a verified secret and another ID: %v, want invalid_api_key", err)
	}
	// A refused key is never memoized.
	if _, err := x.authenticateKey(other, t0); err != ErrInvalidAPIKey || memoized(x, other) {
		t.Errorf("unknown key: %v, memoized %v", err, memoized(x, other))
	}
}

func TestMemoFollowsRevocationAndUpdates(t *testing.T) {
	x := NewIndex(testNS)
	key, keyID := newKey(t)
	mustUpsert(t, x, makeApiKey("chat").Key(keyID, key).Models("llama").Obj())
	if _, err := x.authenticateKey(key, t0); err != nil {
		t.Fatal(err)
	}

	// An update (new policy) replaces the entry: the memo does not serve the old policy.
	mustUpsert(t, x, makeApiKey("chat").Key(keyID, key).Models("mistral").Obj())
	p, err := x.authenticateKey(key, t0)
	if err != nil || len(p.Models) != 1 || p.Models[0] != "mistral" {
		t.Fatalf("after an update: %v, models %v, want the new policy", err, p.Models)
	}

	// Rotation: the old key keeps its grace, then is rotated out, memo or not.
	next, nextID := newKey(t)
	until := t0.Add(time.Hour)
	mustUpsert(t, x, makeApiKey("chat").Key(nextID, next).Previous(keyID, key, until).Obj())
	if _, err := x.authenticateKey(key, t0); err != nil {
		t.Fatalf("previous key in its grace: %v", err)
	}
	if _, err := x.authenticateKey(key, until); err != ErrKeyRotatedOut {
		t.Errorf("previous key after its grace: %v, want rotated out", err)
	}

	// Suspension is policy, checked after the lookup.
	mustUpsert(t, x, makeApiKey("chat").Key(nextID, next).Suspend().Obj())
	if _, err := x.authenticateKey(next, t0); err == nil {
		t.Error("suspended key accepted")
	}

	// Deletion: refused at once, although the key was memoized a moment ago.
	mustUpsert(t, x, makeApiKey("chat").Key(nextID, next).Obj())
	if _, err := x.authenticateKey(next, t0); err != nil || !memoized(x, next) {
		t.Fatalf("re-enabled key: %v, memoized %v", err, memoized(x, next))
	}
	x.Delete("chat")
	if _, err := x.authenticateKey(next, t0); err != ErrInvalidAPIKey {
		t.Errorf("deleted key: %v, want invalid_api_key", err)
	}
	if memoized(x, next) {
		t.Error("the memo still serves a deleted key")
	}
}

func TestMemoIsBoundedAndSkipsOtherShapes(t *testing.T) {
	x := NewIndex(testNS)
	// A brought key of any other shape is found by the full hash only.
	byo := "sk-my-own-key-of-another-shape-0123456789"
	ak := makeApiKey("byo").Obj()
	ak.Status.KeyHash = HashKey(byo).String()
	mustUpsert(t, x, ak)
	if _, err := x.authenticateKey(byo, t0); err != nil {
		t.Fatal(err)
	}
	if _, ok := memoSecret(byo); ok {
		t.Error("a key of another shape was taken for a generated one")
	}

	var d KeyHash
	e := &keyEntry{}
	key, _ := newKey(t)
	for i := range memoShardCap + 10 {
		d[0], d[1], d[2] = 0, byte(i), byte(i>>8) // all in shard 0
		x.memo.put(&d, key, e)
	}
	if n := len(x.memo.shards[0].m); n > memoShardCap {
		t.Errorf("memo shard holds %d entries, cap %d", n, memoShardCap)
	}
}

// Requests on many goroutines while the key is updated, rotated and deleted: run with -race.
func TestMemoConcurrentWithUpdates(t *testing.T) {
	x := NewIndex(testNS)
	key, keyID := newKey(t)
	mustUpsert(t, x, makeApiKey("chat").Key(keyID, key).Obj())
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					_, _ = x.authenticateKey(key, t0)
				}
			}
		})
	}
	for i := range 200 {
		if i%3 == 2 {
			x.Delete("chat")
		} else {
			mustUpsert(t, x, makeApiKey("chat").Key(keyID, key).Obj())
		}
	}
	x.Delete("chat")
	close(stop)
	wg.Wait()
	if _, err := x.authenticateKey(key, t0); err != ErrInvalidAPIKey {
		t.Errorf("after the final delete: %v, want invalid_api_key", err)
	}
}
