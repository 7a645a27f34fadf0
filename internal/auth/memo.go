package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"sync"
)

// The memo makes the hit path of a HelixFlow-shaped key cheaper: SHA-256 of the whole key
// (73 bytes) takes two compression blocks, SHA-256 of its 52-character secret part takes
// one. After a key was verified the normal way (the hash of the whole key found in the
// index), the memo keeps secret digest → (key ID, index entry). A later request with the
// same key finds its entry from the one-block digest and its key ID.
//
// Why this is as safe as the index itself: a memo hit needs SHA-256(secret') to equal the
// digest of a verified secret (so secret' is that secret: SHA-256 is collision resistant)
// and the key ID to equal the verified one; the shape is fixed (hfk_<16>_<52>), so the
// presented key is exactly the verified key. Only verified keys are memoized, so requests
// with made-up keys cannot fill it, and it holds digests, never a key. An entry stops
// being used as soon as the index drops or replaces what it points at (keyEntry.dead), so
// revocation is as immediate as without the memo.
const (
	// memoKeyLen is the length of a generated key: "hfk_" + 16 + "_" + 52.
	memoKeyLen   = len(KeyPrefix) + 16 + 1 + 52
	memoIDStart  = len(KeyPrefix)
	memoIDEnd    = memoIDStart + 16
	memoSecretAt = memoIDEnd + 1
	// memoShardCap bounds each memo shard; a full shard starts again empty. 64 shards of
	// 4096 hold the keys of the largest indexes measured (100,000) with room.
	memoShardCap = 4096
)

type memoShard struct {
	mu sync.RWMutex
	m  map[KeyHash]memoEntry
	_  [64]byte
}

type memoEntry struct {
	id    [16]byte
	entry *keyEntry
}

type memo struct {
	shards [numShards]memoShard
}

// memoSecret returns the digest of the secret part of a key of the generated shape, and
// whether the key has that shape.
func memoSecret(key string) (KeyHash, bool) {
	if len(key) != memoKeyLen || key[:memoIDStart] != KeyPrefix || key[memoIDEnd] != '_' {
		return KeyHash{}, false
	}
	var buf [memoKeyLen - memoSecretAt]byte
	return sha256.Sum256(buf[:copy(buf[:], key[memoSecretAt:])]), true
}

func (m *memo) shard(d *KeyHash) *memoShard { return &m.shards[d[0]&(numShards-1)] }

// get returns the live entry memoized for key (whose secret digest is d), or nil.
func (m *memo) get(d *KeyHash, key string) *keyEntry {
	s := m.shard(d)
	s.mu.RLock()
	me, ok := s.m[*d]
	s.mu.RUnlock()
	if !ok || me.entry.dead.Load() || subtle.ConstantTimeCompare(me.id[:], []byte(key[memoIDStart:memoIDEnd])) != 1 {
		return nil
	}
	return me.entry
}

// put memoizes a key verified against the index.
func (m *memo) put(d *KeyHash, key string, e *keyEntry) {
	me := memoEntry{entry: e}
	copy(me.id[:], key[memoIDStart:memoIDEnd])
	s := m.shard(d)
	s.mu.Lock()
	if s.m == nil || len(s.m) >= memoShardCap {
		s.m = make(map[KeyHash]memoEntry)
	}
	s.m[*d] = me
	s.mu.Unlock()
}
