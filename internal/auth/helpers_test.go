package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

const testNS = "team-a"

// t0 is the fixed start of the fake clock.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: t0} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// apiKeyBuilder makes ApiKeys as the controller leaves them: spec plus keyID/keyHash status.
type apiKeyBuilder struct{ ak *servingv1alpha1.ApiKey }

func makeApiKey(name string) *apiKeyBuilder {
	return &apiKeyBuilder{ak: &servingv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: name}}}
}

func (b *apiKeyBuilder) Key(keyID, key string) *apiKeyBuilder {
	b.ak.Status.KeyID, b.ak.Status.KeyHash = keyID, HashKey(key).String()
	return b
}

func (b *apiKeyBuilder) Previous(keyID, key string, validUntil time.Time) *apiKeyBuilder {
	b.ak.Status.PreviousKeys = append(b.ak.Status.PreviousKeys, servingv1alpha1.PreviousKey{
		KeyID: keyID, KeyHash: HashKey(key).String(), ValidUntil: metav1.NewTime(validUntil)})
	return b
}

func (b *apiKeyBuilder) Models(m ...string) *apiKeyBuilder { b.ak.Spec.Models = m; return b }

func (b *apiKeyBuilder) Scopes(s ...servingv1alpha1.Scope) *apiKeyBuilder {
	b.ak.Spec.Scopes = s
	return b
}

func (b *apiKeyBuilder) Suspend() *apiKeyBuilder { b.ak.Spec.Suspend = ptr.To(true); return b }

func (b *apiKeyBuilder) ExpiresAt(t time.Time) *apiKeyBuilder {
	b.ak.Spec.ExpiresAt = ptr.To(metav1.NewTime(t))
	return b
}

// QuotaUsedUp gives the key a monthly quota that the usage counted in t0's month uses up.
func (b *apiKeyBuilder) QuotaUsedUp() *apiKeyBuilder {
	b.ak.Spec.Quota = &servingv1alpha1.TokenQuota{Tokens: 1000, Window: servingv1alpha1.QuotaWindowMonth}
	b.ak.Status.Usage = &servingv1alpha1.KeyUsage{
		WindowStart: ptr.To(metav1.NewTime(QuotaWindowStart(servingv1alpha1.QuotaWindowMonth, t0))),
		Tokens:      1000,
	}
	return b
}

func (b *apiKeyBuilder) Obj() *servingv1alpha1.ApiKey { return b.ak }

// newKey generates a HelixFlow key.
func newKey(t testing.TB) (key, keyID string) {
	t.Helper()
	key, keyID, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return key, keyID
}

func mustUpsert(t testing.TB, x *Index, ak *servingv1alpha1.ApiKey) {
	t.Helper()
	if err := x.Upsert(ak); err != nil {
		t.Fatalf("Upsert(%s): %v", ak.Name, err)
	}
}

// wantErr fails unless err is want (the shared *Error values are compared by identity).
func wantErr(t testing.TB, err error, want *Error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("error = %v, want %v", err, want)
	}
}

// testSigner signs tokens the way the manager's token service does.
type testSigner struct {
	kid    string
	method jwt.SigningMethod
	key    crypto.Signer
	pub    jwk
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// rsaKeys are generated once per test binary: RSA key generation is slow on small machines.
var rsaKeys = sync.OnceValue(func() []*rsa.PrivateKey {
	keys := make([]*rsa.PrivateKey, 2)
	for i := range keys {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		keys[i] = k
	}
	return keys
})

// newRSASigner signs with the first shared RSA key under kid; the second is the forger's.
func newRSASigner(kid string) *testSigner {
	k := rsaKeys()[0]
	return &testSigner{kid: kid, method: jwt.SigningMethodRS256, key: k, pub: jwk{
		Kty: "RSA", Kid: kid, Alg: "RS256", Use: "sig",
		N: b64(k.N.Bytes()), E: b64(big.NewInt(int64(k.E)).Bytes()),
	}}
}

func newECSigner(t testing.TB, kid string) *testSigner {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	point, err := k.PublicKey.Bytes() // 0x04 || x || y
	if err != nil {
		t.Fatal(err)
	}
	return &testSigner{kid: kid, method: jwt.SigningMethodES256, key: k, pub: jwk{
		Kty: "EC", Kid: kid, Alg: "ES256", Use: "sig", Crv: "P-256",
		X: b64(point[1:33]), Y: b64(point[33:]),
	}}
}

func (s *testSigner) sign(t testing.TB, c jwt.Claims) string {
	t.Helper()
	tok := jwt.NewWithClaims(s.method, c)
	tok.Header["kid"] = s.kid
	out, err := tok.SignedString(s.key)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func jwksOf(t testing.TB, signers ...*testSigner) []byte {
	t.Helper()
	var set jwkSet
	for _, s := range signers {
		set.Keys = append(set.Keys, s.pub)
	}
	return mustJSON(t, set)
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tokenClaims are claims the token service would sign at now for the ApiKey name.
func tokenClaims(name, keyID string, now time.Time) *Claims {
	return &Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    DefaultIssuer,
			Subject:   testNS + "/" + name,
			Audience:  jwt.ClaimStrings{Audience(testNS)},
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(15 * time.Minute)),
			ID:        "jti-1",
		},
		KeyID:  keyID,
		Scopes: []servingv1alpha1.Scope{servingv1alpha1.ScopeInference},
	}
}
