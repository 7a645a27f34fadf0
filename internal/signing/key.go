// Package signing holds the manager's JWT signing keys: generating them, rotating them on a
// schedule, storing them in a Kubernetes Secret's data, publishing their public halves as a
// JWKS, and signing tokens with the active one. It does no Kubernetes I/O: a controller reads
// and writes the Secret and feeds a Store, which the token service signs with.
package signing

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"
)

// Algorithm is a JWS algorithm the manager signs with.
type Algorithm string

const (
	// RS256 is RSASSA-PKCS1-v1_5 with SHA-256 on a 2048-bit key: the default, because every
	// JWT library verifies it.
	RS256 Algorithm = "RS256"
	// ES256 is ECDSA on P-256 with SHA-256: smaller keys and tokens, much faster signing.
	ES256 Algorithm = "ES256"
	// DefaultAlgorithm is what the manager uses unless told otherwise.
	DefaultAlgorithm = RS256

	// rsaBits is the size of generated RSA keys and the smallest size accepted on decode.
	rsaBits = 2048
)

// ParseAlgorithm checks a flag or stored value.
func ParseAlgorithm(s string) (Algorithm, error) {
	switch a := Algorithm(s); a {
	case RS256, ES256:
		return a, nil
	}
	return "", fmt.Errorf("signing algorithm %q is not supported (want %s or %s)", s, RS256, ES256)
}

// Key is one signing key. The private key never leaves the manager's namespace; only the
// public half is published (KeySet.JWKS).
type Key struct {
	// ID is the JOSE kid: the RFC 7638 thumbprint of the public key, base64url.
	ID        string
	Algorithm Algorithm
	// Private is an *rsa.PrivateKey for RS256 or an *ecdsa.PrivateKey (P-256) for ES256.
	Private   crypto.Signer
	CreatedAt time.Time
	// RetiredAt is when the key stopped signing; zero while it is the active key.
	RetiredAt time.Time
}

// NewKey generates a key for alg from crypto/rand, created at now.
func NewKey(alg Algorithm, now time.Time) (Key, error) {
	priv, err := generate(alg)
	if err != nil {
		return Key{}, err
	}
	kid, err := thumbprint(priv.Public())
	if err != nil {
		return Key{}, err
	}
	return Key{ID: kid, Algorithm: alg, Private: priv, CreatedAt: now.UTC()}, nil
}

func generate(alg Algorithm) (crypto.Signer, error) {
	var (
		priv crypto.Signer
		err  error
	)
	switch alg {
	case RS256:
		priv, err = rsa.GenerateKey(rand.Reader, rsaBits)
	case ES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		_, err = ParseAlgorithm(string(alg))
	}
	if err != nil {
		return nil, fmt.Errorf("generating %s signing key: %w", alg, err)
	}
	return priv, nil
}

// checkPrivate makes sure a decoded private key is usable with alg, so a Secret edited by hand
// cannot make the manager sign with a weak or mismatched key.
func checkPrivate(alg Algorithm, priv any) (crypto.Signer, error) {
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		if alg == RS256 && k.N.BitLen() >= rsaBits {
			return k, nil
		}
	case *ecdsa.PrivateKey:
		if alg == ES256 && k.Curve == elliptic.P256() {
			return k, nil
		}
	}
	return nil, fmt.Errorf("private key of type %T is not a valid %s key", priv, alg)
}

// publicJWK is the public half of a key as an RFC 7517 JWK. The field order is the output
// order, which keeps JWKS bytes stable.
type publicJWK struct {
	Kty string `json:"kty"`
	Use string `json:"use,omitempty"`
	Alg string `json:"alg,omitempty"`
	Kid string `json:"kid,omitempty"`
	N   string `json:"n,omitempty"`
	E   string `json:"e,omitempty"`
	Crv string `json:"crv,omitempty"`
	X   string `json:"x,omitempty"`
	Y   string `json:"y,omitempty"`
}

var b64 = base64.RawURLEncoding

// jwkOf returns the key material members of pub's JWK (kty, n/e or crv/x/y).
func jwkOf(pub crypto.PublicKey) (publicJWK, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		e := minimalBytes(uint64(k.E))
		return publicJWK{Kty: "RSA", N: b64.EncodeToString(k.N.Bytes()), E: b64.EncodeToString(e)}, nil
	case *ecdsa.PublicKey:
		raw, err := k.Bytes() // 0x04 || X || Y, each coordinate padded to 32 bytes
		if err != nil || len(raw) != 65 || k.Curve != elliptic.P256() {
			return publicJWK{}, fmt.Errorf("ECDSA public key is not a P-256 point")
		}
		return publicJWK{Kty: "EC", Crv: "P-256", X: b64.EncodeToString(raw[1:33]), Y: b64.EncodeToString(raw[33:])}, nil
	}
	return publicJWK{}, fmt.Errorf("public key of type %T is not supported", pub)
}

// minimalBytes is the minimal big-endian encoding of v, as JWK "e" wants it.
func minimalBytes(v uint64) []byte {
	var out []byte
	for ; v > 0; v >>= 8 {
		out = append([]byte{byte(v)}, out...)
	}
	return out
}

// thumbprint is the RFC 7638 JWK thumbprint (SHA-256, base64url): unique per key, URL-safe,
// and recomputable by anyone holding the public key.
func thumbprint(pub crypto.PublicKey) (string, error) {
	j, err := jwkOf(pub)
	if err != nil {
		return "", err
	}
	// RFC 7638 hashes exactly the required members, in lexicographic order, no whitespace:
	// the field order of these structs.
	var canon any = struct {
		E   string `json:"e"`
		Kty string `json:"kty"`
		N   string `json:"n"`
	}{j.E, j.Kty, j.N}
	if j.Kty == "EC" {
		canon = struct {
			Crv string `json:"crv"`
			Kty string `json:"kty"`
			X   string `json:"x"`
			Y   string `json:"y"`
		}{j.Crv, j.Kty, j.X, j.Y}
	}
	raw, err := json.Marshal(canon)
	if err != nil {
		return "", fmt.Errorf("computing key thumbprint: %w", err)
	}
	sum := sha256.Sum256(raw)
	return b64.EncodeToString(sum[:]), nil
}
