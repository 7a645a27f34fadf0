package signing

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

const (
	// SecretDataKey is the one entry of the signing-key Secret's data.
	SecretDataKey = "keys.json"
	// secretFormatVersion is bumped on any incompatible change to storedKeys.
	secretFormatVersion = 1
	pemTypePKCS8        = "PRIVATE KEY"
)

// storedKeys is the JSON in the Secret. Private keys are PKCS#8 PEM so an operator can
// inspect them with openssl; times are RFC 3339 UTC.
type storedKeys struct {
	Version int         `json:"version"`
	Keys    []storedKey `json:"keys"`
}

type storedKey struct {
	ID         string    `json:"kid"`
	Algorithm  Algorithm `json:"alg"`
	CreatedAt  time.Time `json:"createdAt"`
	RetiredAt  time.Time `json:"retiredAt,omitzero"`
	PrivateKey string    `json:"privateKey"`
}

// EncodeSecretData renders s as Secret data. The output is stable (the same set gives the same
// bytes), so a controller can compare before writing.
func EncodeSecretData(s KeySet) (map[string][]byte, error) {
	out := storedKeys{Version: secretFormatVersion, Keys: make([]storedKey, 0, len(s.Keys))}
	for _, k := range s.Keys {
		der, err := x509.MarshalPKCS8PrivateKey(k.Private)
		if err != nil {
			return nil, fmt.Errorf("encoding signing key %s: %w", k.ID, err)
		}
		out.Keys = append(out.Keys, storedKey{
			ID: k.ID, Algorithm: k.Algorithm, CreatedAt: k.CreatedAt.UTC(), RetiredAt: utcOrZero(k.RetiredAt),
			PrivateKey: string(pem.EncodeToMemory(&pem.Block{Type: pemTypePKCS8, Bytes: der})),
		})
	}
	raw, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding signing keys: %w", err)
	}
	return map[string][]byte{SecretDataKey: raw}, nil
}

func utcOrZero(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC()
}

// DecodeSecretData reads what EncodeSecretData wrote, checking every key: a Secret edited
// by hand must not make the manager sign with a weak, mismatched or duplicated key.
func DecodeSecretData(data map[string][]byte) (KeySet, error) {
	raw, ok := data[SecretDataKey]
	if !ok {
		return KeySet{}, fmt.Errorf("signing key Secret has no %q entry", SecretDataKey)
	}
	var in storedKeys
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return KeySet{}, fmt.Errorf("signing key Secret %q is not valid JSON: %w", SecretDataKey, err)
	}
	if in.Version != secretFormatVersion {
		return KeySet{}, fmt.Errorf("signing key Secret has format version %d, want %d", in.Version, secretFormatVersion)
	}
	return decodeKeys(in.Keys)
}

func decodeKeys(in []storedKey) (KeySet, error) {
	s := KeySet{Keys: make([]Key, 0, len(in))}
	seen := make(map[string]bool, len(in))
	for i, sk := range in {
		k, err := decodeKey(sk, i == 0)
		if err != nil {
			return KeySet{}, fmt.Errorf("signing key %d (%q): %w", i, sk.ID, err)
		}
		if seen[k.ID] {
			return KeySet{}, fmt.Errorf("signing key %d: kid %q appears twice", i, k.ID)
		}
		seen[k.ID] = true
		s.Keys = append(s.Keys, k)
	}
	return s, nil
}

func decodeKey(sk storedKey, active bool) (Key, error) {
	switch {
	case sk.ID == "":
		return Key{}, errors.New("no kid")
	case active && !sk.RetiredAt.IsZero():
		return Key{}, errors.New("the first (active) key has retiredAt set")
	case !active && sk.RetiredAt.IsZero():
		return Key{}, errors.New("a retired key has no retiredAt")
	}
	alg, err := ParseAlgorithm(string(sk.Algorithm))
	if err != nil {
		return Key{}, err
	}
	block, rest := pem.Decode([]byte(sk.PrivateKey))
	if block == nil || block.Type != pemTypePKCS8 || len(bytes.TrimSpace(rest)) > 0 {
		return Key{}, errors.New("privateKey is not one PKCS#8 PEM block")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return Key{}, fmt.Errorf("privateKey: %w", err)
	}
	priv, err := checkPrivate(alg, parsed)
	if err != nil {
		return Key{}, err
	}
	return Key{ID: sk.ID, Algorithm: alg, Private: priv, CreatedAt: sk.CreatedAt.UTC(), RetiredAt: utcOrZero(sk.RetiredAt)}, nil
}
