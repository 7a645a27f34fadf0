package signing

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/helixflow/helixflow/internal/auth"
)

// ErrNoSigningKey means the Store has not been given a key set with an active key yet
// (the controller has not loaded or created the signing-key Secret).
var ErrNoSigningKey = errors.New("no JWT signing key loaded yet")

// Store holds the current KeySet for concurrent readers: the controller Sets it after every
// load or rotation, every token request Signs with it, and the JWKS handler reads it. The
// zero value is empty and ready to use.
type Store struct {
	state atomic.Pointer[storeState]
}

// storeState is immutable once published; Set swaps in a new one.
type storeState struct {
	set     KeySet
	jwks    []byte
	jwksErr error
	method  jwt.SigningMethod
}

// Set replaces the key set. It keeps its own copy of the Keys slice and renders the JWKS once
// here, so readers never pay for it.
func (s *Store) Set(ks KeySet) {
	st := &storeState{set: KeySet{Keys: slices.Clone(ks.Keys)}}
	st.jwks, st.jwksErr = st.set.JWKS()
	if active, ok := st.set.Active(); ok {
		st.method = jwt.GetSigningMethod(string(active.Algorithm))
	}
	s.state.Store(st)
}

// Get returns the current key set and whether one has been Set. The Keys slice is a copy.
func (s *Store) Get() (KeySet, bool) {
	st := s.state.Load()
	if st == nil {
		return KeySet{}, false
	}
	return KeySet{Keys: slices.Clone(st.set.Keys)}, true
}

// JWKS returns the public keys of the current set, rendered when it was Set.
func (s *Store) JWKS() ([]byte, error) {
	st := s.state.Load()
	if st == nil {
		return nil, ErrNoSigningKey
	}
	return st.jwks, st.jwksErr
}

// PublishDelay is how long a new key waits before it signs. The JWKS ConfigMaps reach the
// runtimes through the API server and their informers in seconds; until a runtime has the
// new public key, a token signed with it would be refused there. The previous key signs
// meanwhile (it stays published for far longer: RetirementSkew covers this minute).
const PublishDelay = time.Minute

// Sign signs claims with the signing key, naming it in the kid header so verifiers pick the
// right public key across rotations. The signing key is the active key once it is
// PublishDelay old (or when there is no other); until then, the key it replaced.
func (s *Store) Sign(claims auth.Claims) (string, error) {
	st := s.state.Load()
	if st == nil || st.method == nil {
		return "", ErrNoSigningKey
	}
	active := signingKey(st.set, time.Now())
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(string(active.Algorithm)), claims)
	tok.Header["kid"] = active.ID
	signed, err := tok.SignedString(active.Private)
	if err != nil {
		return "", fmt.Errorf("signing token with key %s: %w", active.ID, err)
	}
	return signed, nil
}

// signingKey is the key that signs at now (see PublishDelay).
func signingKey(ks KeySet, now time.Time) Key {
	active := ks.Keys[0]
	if len(ks.Keys) > 1 && now.Sub(active.CreatedAt) < PublishDelay {
		return ks.Keys[1]
	}
	return active
}
