package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// numShards splits the hash map so that readers on many cores do not all bump the reader
// count of one RWMutex (one contended cache line), and a writer blocks 1/numShards of the
// readers for the few nanoseconds of a map write. A power of two: the shard is a byte mask.
const numShards = 64

// defaultScopes mirror the CRD default, for objects that reach the index undefaulted.
var defaultScopes = []servingv1alpha1.Scope{servingv1alpha1.ScopeInference, servingv1alpha1.ScopeListModels}

// Index maps SHA-256(API key) to the policy of the ApiKey that owns the key, for the ApiKeys
// of one namespace. The presented key is hashed and the hash looked up, so a stored hash is
// never usable as a credential, and the plaintext is never kept.
//
// Why sharded RWMutex maps rather than atomic copy-on-write: with 100,000 keys, copying the
// map on every informer event (initial list included) is O(n) per event and O(n²) to start,
// while a shard write is O(1). Why not one RWMutex: its reader count is one cache line that
// every request on every core writes. SHA-256 output is uniform, so its first byte spreads
// keys evenly over the shards.
type Index struct {
	namespace string

	// mu serializes writers and guards byName. The API key hit path never takes it.
	mu     sync.RWMutex
	byName map[string]*keyRecord

	shards [numShards]shard
	// memo finds verified keys of the generated shape with half the hashing (memo.go).
	memo memo

	// forget, when set, hears of the key IDs the index dropped (OnForget).
	forget ForgetFunc
}

// ForgetFunc is told that the ApiKey named name no longer has the key IDs keyIDs: all of
// them when the ApiKey was deleted (gone), or those an update removed (a previous key whose
// grace ended and that the manager took out of status).
type ForgetFunc func(name string, keyIDs []string, gone bool)

// OnForget sets fn to hear of the key IDs the index drops, so that what a user of the index
// keeps per key (metric series, limiter state) can go with them. Set it before the index is
// fed; fn is called after the index's locks are released, from the goroutine that fed it.
func (x *Index) OnForget(fn ForgetFunc) { x.forget = fn }

type shard struct {
	mu sync.RWMutex
	m  map[KeyHash]*keyEntry
	// Padding keeps neighbouring shards' locks off one cache line.
	_ [64]byte
}

// keyRecord is what the index holds for one ApiKey. It is immutable once published: an
// update builds a new record and swaps it in, so readers never see a half-updated policy.
type keyRecord struct {
	// ak is a read-only copy for KeyRefusal, the usability rule shared with the manager.
	ak *servingv1alpha1.ApiKey
	// base is the principal of the current key; JWT principals are derived from it.
	base *Principal
	// keys are the current key (validUntil zero) and the previous keys in their grace.
	keys []*keyEntry
}

// keyEntry is one accepted key hash. principal is prebuilt so the hit path allocates nothing.
type keyEntry struct {
	hash       KeyHash
	keyID      string
	validUntil time.Time
	record     *keyRecord
	principal  *Principal
	// dead is set when the index drops or replaces the entry; memoized copies stop then.
	dead atomic.Bool
}

// NewIndex returns an empty index for the ApiKeys of namespace.
func NewIndex(namespace string) *Index {
	x := &Index{namespace: namespace, byName: map[string]*keyRecord{}}
	for i := range x.shards {
		x.shards[i].m = map[KeyHash]*keyEntry{}
	}
	return x
}

// Len is the number of key hashes held (current and previous keys).
func (x *Index) Len() int {
	n := 0
	for i := range x.shards {
		s := &x.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}

func (x *Index) shard(h *KeyHash) *shard { return &x.shards[h[0]&(numShards-1)] }

// lookup hashes key and returns its entry, or nil. It allocates nothing. Keys longer than
// MaxKeyLength are never issued, so they are refused without hashing.
func (x *Index) lookup(key string) *keyEntry {
	if key == "" || len(key) > MaxKeyLength {
		return nil
	}
	d, memoizable := memoSecret(key)
	if memoizable {
		if e := x.memo.get(&d, key); e != nil {
			return e
		}
	}
	e := x.lookupHash(key)
	if e != nil && memoizable {
		x.memo.put(&d, key, e)
	}
	return e
}

// lookupHash finds key by the SHA-256 of the whole key, the index's own key.
func (x *Index) lookupHash(key string) *keyEntry {
	h := hashPresented(key)
	s := x.shard(&h)
	s.mu.RLock()
	e := s.m[h]
	s.mu.RUnlock()
	// The map already compared the hashes; comparing again in constant time keeps the
	// decision itself free of data-dependent timing whatever the map implementation does.
	if e == nil || subtle.ConstantTimeCompare(e.hash[:], h[:]) != 1 {
		return nil
	}
	return e
}

// hashPresented is HashKey without the allocation of converting a key over 32 bytes to a
// []byte: the key is copied into a stack buffer. Callers ensure len(key) <= MaxKeyLength.
func hashPresented(key string) KeyHash {
	var buf [MaxKeyLength]byte
	return sha256.Sum256(buf[:copy(buf[:], key)])
}

// authenticateKey returns the prebuilt principal of key if the key is accepted at now.
func (x *Index) authenticateKey(key string, now time.Time) (*Principal, *Error) {
	e := x.lookup(key)
	if e == nil {
		return nil, ErrInvalidAPIKey
	}
	if !e.validUntil.IsZero() && !now.Before(e.validUntil) {
		return nil, ErrKeyRotatedOut
	}
	if err := keyRefusalError(e.record.ak, now); err != nil {
		return nil, err
	}
	return e.principal, nil
}

// record returns the ApiKey named name, or nil.
func (x *Index) record(name string) *keyRecord {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.byName[name]
}

// Upsert adds or replaces the keys of ak. Hashes that are in status but unreadable are
// skipped and reported in the error; the readable ones are still installed.
func (x *Index) Upsert(ak *servingv1alpha1.ApiKey) error {
	if ak.Namespace != x.namespace {
		return fmt.Errorf("ApiKey %s/%s is not in namespace %s", ak.Namespace, ak.Name, x.namespace)
	}
	if ak.DeletionTimestamp != nil {
		// Deletion was asked for; finalizers or foreground deletion of its Secret may keep
		// the object a while, but the key is revoked from now.
		x.Delete(ak.Name)
		return nil
	}
	rec, err := newKeyRecord(ak)
	x.mu.Lock()
	old := x.byName[ak.Name]
	x.byName[ak.Name] = rec
	// New hashes go in before stale ones leave, so a key valid in both versions is never
	// missing in between.
	for _, e := range rec.keys {
		s := x.shard(&e.hash)
		s.mu.Lock()
		s.m[e.hash] = e
		s.mu.Unlock()
	}
	x.removeEntries(old)
	x.mu.Unlock()
	if dropped := old.keyIDsNotIn(rec); len(dropped) > 0 && x.forget != nil {
		x.forget(ak.Name, dropped, false)
	}
	return err
}

// Delete removes the ApiKey named name and all its keys.
func (x *Index) Delete(name string) {
	x.mu.Lock()
	old := x.byName[name]
	delete(x.byName, name)
	x.removeEntries(old)
	x.mu.Unlock()
	if old != nil && x.forget != nil {
		x.forget(name, old.keyIDsNotIn(nil), true)
	}
}

// HasKeyID reports whether the ApiKey named name has the key ID keyID now (current, or a
// previous key still in its status).
func (x *Index) HasKeyID(name, keyID string) bool {
	rec := x.record(name)
	return rec != nil && rec.hasKeyID(keyID)
}

// keyIDsNotIn lists the key IDs of r that next (nil: none) does not have.
func (r *keyRecord) keyIDsNotIn(next *keyRecord) []string {
	if r == nil {
		return nil
	}
	var ids []string
	for _, e := range r.keys {
		if (next == nil || !next.hasKeyID(e.keyID)) && !slices.Contains(ids, e.keyID) {
			ids = append(ids, e.keyID)
		}
	}
	return ids
}

func (r *keyRecord) hasKeyID(keyID string) bool {
	return slices.ContainsFunc(r.keys, func(e *keyEntry) bool { return e.keyID == keyID })
}

// removeEntries drops rec's hashes that still point at rec; hashes taken over by a newer
// record (the same key kept across an update) stay, pointing at the new entries. Every entry
// of rec is dead afterwards. Callers hold x.mu.
func (x *Index) removeEntries(rec *keyRecord) {
	if rec == nil {
		return
	}
	for _, e := range rec.keys {
		// Dead first: a memoized copy must not outlive the entry's removal from the map.
		e.dead.Store(true)
		s := x.shard(&e.hash)
		s.mu.Lock()
		if cur := s.m[e.hash]; cur != nil && cur.record == rec {
			delete(s.m, e.hash)
		}
		s.mu.Unlock()
	}
}

// newKeyRecord builds the immutable record and the prebuilt principals of ak.
func newKeyRecord(ak *servingv1alpha1.ApiKey) (*keyRecord, error) {
	policy := ak.DeepCopy()
	// Only spec, conditions and the usage counts matter to KeyRefusal; with 100,000 keys the
	// rest is weight (the usage reporters are dropped by the cache's transform already).
	policy.ManagedFields, policy.Annotations = nil, nil
	rec := &keyRecord{ak: policy, base: basePrincipal(policy)}
	var errs []error
	if ak.Status.KeyHash != "" {
		errs = append(errs, rec.addKey(ak.Status.KeyID, ak.Status.KeyHash, time.Time{}))
	}
	for _, pk := range ak.Status.PreviousKeys {
		errs = append(errs, rec.addKey(pk.KeyID, pk.KeyHash, pk.ValidUntil.Time))
	}
	if err := errors.Join(errs...); err != nil {
		return rec, fmt.Errorf("ApiKey %s/%s: %w", ak.Namespace, ak.Name, err)
	}
	return rec, nil
}

func (r *keyRecord) addKey(keyID, hash string, validUntil time.Time) error {
	h, err := ParseKeyHash(hash)
	if err != nil {
		return err
	}
	if keyID == "" {
		// Status not fully written yet: name the key the way DisplayKeyID names brought
		// keys, which depends on the hash only.
		keyID = "byo-" + hex.EncodeToString(h[:8])
	}
	p := *r.base
	p.KeyID = keyID
	r.keys = append(r.keys, &keyEntry{hash: h, keyID: keyID, validUntil: validUntil, record: r, principal: &p})
	return nil
}

// acceptsKeyID reports whether keyID names the current key or a previous key in its grace,
// so that a token stops with the key it was exchanged for.
func (r *keyRecord) acceptsKeyID(keyID string, now time.Time) bool {
	for _, e := range r.keys {
		if e.keyID == keyID && (e.validUntil.IsZero() || now.Before(e.validUntil)) {
			return true
		}
	}
	return false
}

func basePrincipal(ak *servingv1alpha1.ApiKey) *Principal {
	scopes := ak.Spec.Scopes
	if len(scopes) == 0 {
		scopes = defaultScopes
	}
	return &Principal{
		Namespace: ak.Namespace,
		Name:      ak.Name,
		UID:       ak.UID,
		KeyID:     ak.Status.KeyID,
		Method:    MethodAPIKey,
		AllModels: len(ak.Spec.Models) == 0,
		Models:    slices.Clone(ak.Spec.Models),
		Scopes:    slices.Clone(scopes),
		RateLimit: ak.Spec.RateLimit,
		Quota:     ak.Spec.Quota,
	}
}
