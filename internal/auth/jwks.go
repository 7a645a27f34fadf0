package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	// ClockSkewLeeway tolerates clock differences between the manager that signs tokens and
	// the runtimes that check exp, nbf and iat.
	ClockSkewLeeway = 30 * time.Second
	// minRSABits refuses published RSA keys too small to trust.
	minRSABits = 2048
	// p256CoordinateBytes is the length of an EC P-256 x or y coordinate.
	p256CoordinateBytes = 32
)

// validMethods are the only algorithms accepted: "none", HMAC (the HS256-with-public-key
// confusion) and everything else are refused before any key is looked at.
var validMethods = []string{jwt.SigningMethodRS256.Alg(), jwt.SigningMethodES256.Alg()}

var (
	errUnknownKID   = errors.New("unknown kid")
	errAlgMismatch  = errors.New("token alg does not match the key's alg")
	errNoKeys       = errors.New("no JWKS loaded")
	errBadSubject   = errors.New("sub is not <namespace>/<ApiKey name> of this namespace")
	errMissingKeyID = errors.New("token has no key_id")
)

// jwk is one JSON Web Key of the set the manager publishes (public keys only).
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Alg string `json:"alg,omitempty"`
	Use string `json:"use,omitempty"`
	// RSA.
	N string `json:"n,omitempty"`
	E string `json:"e,omitempty"`
	// EC.
	Crv string `json:"crv,omitempty"`
	X   string `json:"x,omitempty"`
	Y   string `json:"y,omitempty"`
}

// jwkSet is a JSON Web Key Set, the jwks.json data of the helixflow-jwks ConfigMap.
type jwkSet struct {
	Keys []jwk `json:"keys"`
}

// verificationKey is a parsed public key and the one algorithm it may verify.
type verificationKey struct {
	alg string
	key any
}

// jwksState is one published key set with the parser configured for its issuer. It is
// replaced whole, never edited, so Verify reads it through one atomic load.
type jwksState struct {
	keys   map[string]verificationKey
	parser *jwt.Parser
}

// Verifier checks JWTs signed by the manager's token service against the JWKS published in
// the namespace. Updates are rare and the set is small, so an atomic copy-on-write pointer
// gives lock-free reads.
type Verifier struct {
	namespace string
	now       func() time.Time
	state     atomic.Pointer[jwksState]
}

// NewVerifier returns a verifier for tokens of namespace's ApiKeys; it refuses every token
// until SetJWKS is called. now is the clock for exp, nbf and iat.
func NewVerifier(namespace string, now func() time.Time) *Verifier {
	return &Verifier{namespace: namespace, now: now}
}

// SetJWKS replaces the key set and the required issuer ("" means DefaultIssuer). A token
// signed before a rotation keeps verifying as long as its kid is still in the new set. If
// the JSON cannot be read, the previous set stays and the error says why; keys of a type
// this verifier does not use are skipped, and malformed keys are skipped and reported.
func (v *Verifier) SetJWKS(jwksJSON []byte, issuer string) error {
	var set jwkSet
	if err := json.Unmarshal(jwksJSON, &set); err != nil {
		return fmt.Errorf("reading JWKS: %w", err)
	}
	if issuer == "" {
		issuer = DefaultIssuer
	}
	keys, err := parseJWKS(set)
	v.state.Store(&jwksState{keys: keys, parser: v.newParser(issuer)})
	return err
}

// Clear drops every key (the ConfigMap was deleted): every token is refused.
func (v *Verifier) Clear() { v.state.Store(nil) }

// KeyIDs lists the kids currently trusted, for logs and tests.
func (v *Verifier) KeyIDs() []string {
	st := v.state.Load()
	if st == nil {
		return nil
	}
	ids := make([]string, 0, len(st.keys))
	for kid := range st.keys {
		ids = append(ids, kid)
	}
	return ids
}

func (v *Verifier) newParser(issuer string) *jwt.Parser {
	return jwt.NewParser(
		jwt.WithValidMethods(validMethods),
		jwt.WithIssuer(issuer),
		jwt.WithAudience(Audience(v.namespace)),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(ClockSkewLeeway),
		jwt.WithTimeFunc(v.now),
	)
}

// Verify checks token's signature, alg, kid, iss, aud, exp, nbf, iat and sub, and returns
// its claims and the ApiKey name from sub. The error is an *Error fit for the client.
func (v *Verifier) Verify(token string) (*Claims, string, error) {
	claims, name, err := v.check(token)
	if err != nil {
		return nil, "", err
	}
	return claims, name, nil
}

// check is Verify with the concrete error type, for the authenticator.
func (v *Verifier) check(token string) (*Claims, string, *Error) {
	claims, name, err := v.verify(token)
	if err != nil {
		return nil, "", tokenError(err)
	}
	return claims, name, nil
}

func (v *Verifier) verify(token string) (*Claims, string, error) {
	st := v.state.Load()
	if st == nil {
		return nil, "", errNoKeys
	}
	claims := &Claims{}
	if _, err := st.parser.ParseWithClaims(token, claims, st.keyFor); err != nil {
		return nil, "", err
	}
	ns, name, ok := strings.Cut(claims.Subject, "/")
	if !ok || ns != v.namespace || name == "" {
		return nil, "", errBadSubject
	}
	if claims.KeyID == "" {
		return nil, "", errMissingKeyID
	}
	return claims, name, nil
}

// keyFor picks the key by the kid header; the alg (already one of validMethods) must be the
// key's own, so no key is ever used with an algorithm it was not published for.
func (st *jwksState) keyFor(t *jwt.Token) (any, error) {
	kid, _ := t.Header["kid"].(string)
	k, ok := st.keys[kid]
	if !ok {
		return nil, errUnknownKID
	}
	if t.Method.Alg() != k.alg {
		return nil, errAlgMismatch
	}
	return k.key, nil
}

// tokenError maps a verification failure to a fixed client-facing error: library messages
// are never passed on, as they may quote parts of the token.
func tokenError(err error) *Error {
	switch {
	case errors.Is(err, errNoKeys):
		return ErrTokenNotVerified
	case errors.Is(err, errUnknownKID):
		return ErrTokenUnknownKey
	case errors.Is(err, jwt.ErrTokenExpired):
		return ErrTokenExpired
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return ErrTokenAudience
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return ErrTokenIssuer
	}
	return ErrInvalidToken
}

// parseJWKS keeps the signature keys it can use. Keys for other uses or of other types are
// skipped silently (the manager may publish more than this runtime understands); keys that
// claim a supported type but cannot be read are skipped and reported.
func parseJWKS(set jwkSet) (map[string]verificationKey, error) {
	keys := make(map[string]verificationKey, len(set.Keys))
	var errs []error
	for i := range set.Keys {
		k := &set.Keys[i]
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		vk, supported, err := parseJWK(k)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("JWKS key %q: %w", k.Kid, err))
		case !supported:
		case k.Kid == "":
			errs = append(errs, errors.New("JWKS key without kid"))
		default:
			keys[k.Kid] = vk
		}
	}
	return keys, errors.Join(errs...)
}

func parseJWK(k *jwk) (vk verificationKey, supported bool, err error) {
	switch {
	case k.Kty == "RSA" && (k.Alg == "" || k.Alg == jwt.SigningMethodRS256.Alg()):
		key, err := parseRSA(k)
		return verificationKey{alg: jwt.SigningMethodRS256.Alg(), key: key}, true, err
	case k.Kty == "EC" && k.Crv == "P-256" && (k.Alg == "" || k.Alg == jwt.SigningMethodES256.Alg()):
		key, err := parseP256(k)
		return verificationKey{alg: jwt.SigningMethodES256.Alg(), key: key}, true, err
	}
	return verificationKey{}, false, nil
}

func parseRSA(k *jwk) (*rsa.PublicKey, error) {
	n, err := base64.RawURLEncoding.DecodeString(k.N)
	if err != nil {
		return nil, fmt.Errorf("n: %w", err)
	}
	e, err := base64.RawURLEncoding.DecodeString(k.E)
	if err != nil {
		return nil, fmt.Errorf("e: %w", err)
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n)}
	if pub.N.BitLen() < minRSABits {
		return nil, fmt.Errorf("RSA modulus of %d bits, want at least %d", pub.N.BitLen(), minRSABits)
	}
	// Exponents are small (65537); more than 4 bytes is not a real key.
	if len(e) == 0 || len(e) > 4 {
		return nil, errors.New("RSA exponent out of range")
	}
	eBig := new(big.Int).SetBytes(e)
	if eBig.Int64() < 3 || eBig.Bit(0) == 0 {
		return nil, errors.New("RSA exponent must be odd and at least 3")
	}
	pub.E = int(eBig.Int64())
	return pub, nil
}

func parseP256(k *jwk) (*ecdsa.PublicKey, error) {
	x, err := base64.RawURLEncoding.DecodeString(k.X)
	if err != nil {
		return nil, fmt.Errorf("x: %w", err)
	}
	y, err := base64.RawURLEncoding.DecodeString(k.Y)
	if err != nil {
		return nil, fmt.Errorf("y: %w", err)
	}
	if len(x) != p256CoordinateBytes || len(y) != p256CoordinateBytes {
		return nil, errors.New("P-256 coordinates must be 32 bytes each")
	}
	// The uncompressed point encoding lets the standard library check the point is on the
	// curve, which refuses invalid-curve keys.
	point := make([]byte, 0, 1+2*p256CoordinateBytes)
	point = append(append(append(point, 4), x...), y...)
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	if err != nil {
		return nil, fmt.Errorf("P-256 point: %w", err)
	}
	return pub, nil
}
