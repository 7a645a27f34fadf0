// Package auth holds what the manager and the runtime agree on about credentials: the API key
// format and its hash, the JWT claims the token service signs, the JWKS ConfigMap the runtimes
// read, and (runtime side) the request-time authenticator.
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

const (
	// KeyPrefix starts every HelixFlow API key, so secret scanners and people recognise one.
	KeyPrefix = "hfk_"
	// keyIDBytes of randomness make the public key ID (16 base32 characters).
	keyIDBytes = 10
	// secretBytes of randomness make the secret part: 256 bits.
	secretBytes = 32
	// MaxKeyLength bounds what is worth hashing: longer input is not a HelixFlow key.
	MaxKeyLength = 128
	// HashPrefix starts the text form of a key hash in ApiKey status.
	HashPrefix = "sha256:"
)

// keyEncoding is lowercase base32 without padding: no '_' (the separator), URL- and header-safe.
var keyEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// KeyHash is the SHA-256 of a whole API key.
type KeyHash [sha256.Size]byte

// String is the status form, sha256:<hex>.
func (h KeyHash) String() string { return HashPrefix + hex.EncodeToString(h[:]) }

// HashKey hashes a presented or generated key.
func HashKey(key string) KeyHash { return sha256.Sum256([]byte(key)) }

// ParseKeyHash reads the sha256:<hex> form written in ApiKey status.
func ParseKeyHash(s string) (KeyHash, error) {
	var h KeyHash
	hexPart, ok := strings.CutPrefix(s, HashPrefix)
	if !ok || len(hexPart) != hex.EncodedLen(len(h)) {
		return h, fmt.Errorf("key hash %q is not sha256:<64 hex digits>", s)
	}
	if _, err := hex.Decode(h[:], []byte(hexPart)); err != nil {
		return h, fmt.Errorf("key hash: %w", err)
	}
	return h, nil
}

// GenerateKey makes a new key hfk_<keyID>_<secret> from crypto/rand and returns it with its ID.
func GenerateKey() (key, keyID string, err error) {
	var b [keyIDBytes + secretBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("generating API key: %w", err)
	}
	keyID = keyEncoding.EncodeToString(b[:keyIDBytes])
	return KeyPrefix + keyID + "_" + keyEncoding.EncodeToString(b[keyIDBytes:]), keyID, nil
}

// ErrMalformedKey means a string does not have the shape of a HelixFlow API key.
var ErrMalformedKey = errors.New("not a HelixFlow API key (hfk_<id>_<secret>)")

// KeyIDOf returns the public key ID of a well-formed key without allocating. Keys brought by
// users (existingSecretRef) may have any shape; for those it returns ErrMalformedKey and callers
// derive an ID from the hash instead (see DisplayKeyID).
func KeyIDOf(key string) (string, error) {
	rest, ok := strings.CutPrefix(key, KeyPrefix)
	if !ok || len(key) > MaxKeyLength {
		return "", ErrMalformedKey
	}
	id, secret, ok := strings.Cut(rest, "_")
	if !ok || id == "" || secret == "" || strings.IndexByte(secret, '_') >= 0 {
		return "", ErrMalformedKey
	}
	return id, nil
}

// DisplayKeyID is the key ID shown in status, logs and metrics: the key's own ID when it has
// the HelixFlow shape, else the first 16 hex digits of its hash (safe: a hash prefix reveals
// nothing usable).
func DisplayKeyID(key string) string {
	if id, err := KeyIDOf(key); err == nil {
		return id
	}
	h := HashKey(key)
	return "byo-" + hex.EncodeToString(h[:8])
}
