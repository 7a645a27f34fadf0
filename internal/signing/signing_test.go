package signing

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/helixflow/helixflow/internal/auth"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func mustKey(t testing.TB, alg Algorithm, now time.Time) Key {
	t.Helper()
	k, err := NewKey(alg, now)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestNewKey(t *testing.T) {
	urlSafe := regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)
	for _, alg := range []Algorithm{RS256, ES256} {
		t.Run(string(alg), func(t *testing.T) {
			a, b := mustKey(t, alg, t0), mustKey(t, alg, t0)
			if a.ID == b.ID || !urlSafe.MatchString(a.ID) {
				t.Fatalf("kids %q, %q: want distinct URL-safe thumbprints", a.ID, b.ID)
			}
			if kid, _ := thumbprint(a.Private.Public()); kid != a.ID {
				t.Fatalf("kid %q is not the thumbprint %q", a.ID, kid)
			}
			if a.Algorithm != alg || !a.CreatedAt.Equal(t0) || !a.RetiredAt.IsZero() {
				t.Fatalf("key %+v", a)
			}
		})
	}
	if _, err := NewKey("HS256", t0); err == nil {
		t.Fatal("NewKey(HS256) succeeded")
	}
}

// TestThumbprintRFC7638 checks the kid against the worked example of RFC 7638 section 3.1.
func TestThumbprintRFC7638(t *testing.T) {
	const n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
	pub, err := rsaPublicKey(publicJWK{N: n, E: "AQAB"})
	if err != nil {
		t.Fatal(err)
	}
	if kid, _ := thumbprint(pub); kid != "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs" {
		t.Fatalf("thumbprint %q", kid)
	}
}

func TestParseAlgorithm(t *testing.T) {
	for _, s := range []string{"RS256", "ES256"} {
		if a, err := ParseAlgorithm(s); err != nil || string(a) != s {
			t.Errorf("ParseAlgorithm(%q) = %q, %v", s, a, err)
		}
	}
	for _, s := range []string{"", "none", "HS256", "rs256", "PS256"} {
		if _, err := ParseAlgorithm(s); err == nil {
			t.Errorf("ParseAlgorithm(%q) succeeded", s)
		}
	}
}

func TestJWKSPublicOnly(t *testing.T) {
	s := KeySet{Keys: []Key{mustKey(t, RS256, t0), mustKey(t, ES256, t0)}}
	s.Keys[1].RetiredAt = t0
	raw, err := s.JWKS()
	if err != nil {
		t.Fatal(err)
	}
	var set struct{ Keys []map[string]any }
	if err := json.Unmarshal(raw, &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 2 {
		t.Fatalf("%d keys in %s", len(set.Keys), raw)
	}
	for _, k := range set.Keys {
		for _, m := range privateMembers {
			if _, ok := k[m]; ok {
				t.Fatalf("JWKS carries private member %q: %s", m, raw)
			}
		}
		if k["use"] != "sig" || k["kid"] == "" {
			t.Fatalf("key %v", k)
		}
	}
	want := map[string]any{"kty": "RSA", "alg": "RS256", "kid": s.Keys[0].ID, "e": "AQAB"}
	for m, v := range want {
		if set.Keys[0][m] != v {
			t.Errorf("RSA key %s = %v, want %v", m, set.Keys[0][m], v)
		}
	}
	if set.Keys[1]["kty"] != "EC" || set.Keys[1]["crv"] != "P-256" || set.Keys[1]["alg"] != "ES256" {
		t.Errorf("EC key %v", set.Keys[1])
	}
	again, _ := s.JWKS()
	if string(again) != string(raw) {
		t.Fatal("JWKS output is not deterministic")
	}
}

func TestParseJWKS(t *testing.T) {
	s := KeySet{Keys: []Key{mustKey(t, ES256, t0), mustKey(t, RS256, t0)}}
	raw, _ := s.JWKS()
	keys, err := ParseJWKS(raw)
	if err != nil {
		t.Fatal(err)
	}
	ec, ok := keys[s.Keys[0].ID].(*ecdsa.PublicKey)
	if !ok || !ec.Equal(s.Keys[0].Private.Public()) {
		t.Fatal("EC key does not round-trip")
	}
	rs, ok := keys[s.Keys[1].ID].(*rsa.PublicKey)
	if !ok || !rs.Equal(s.Keys[1].Private.Public()) {
		t.Fatal("RSA key does not round-trip")
	}
	bad := map[string]string{
		"not JSON":     `{`,
		"private d":    `{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","kid":"a","x":"","y":"","d":"x"}]}`,
		"no kid":       `{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256"}]}`,
		"enc key":      `{"keys":[{"kty":"EC","use":"enc","kid":"a"}]}`,
		"HS256":        `{"keys":[{"kty":"oct","alg":"HS256","kid":"a","k":"c2VjcmV0"}]}`,
		"alg mismatch": `{"keys":[{"kty":"RSA","alg":"ES256","kid":"a","n":"AQAB","e":"AQAB"}]}`,
		"weak RSA":     `{"keys":[{"kty":"RSA","alg":"RS256","kid":"a","n":"AQAB","e":"AQAB"}]}`,
		"off curve":    `{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","kid":"a","x":"` + strings.Repeat("A", 43) + `","y":"` + strings.Repeat("A", 43) + `"}]}`,
	}
	for name, in := range bad {
		if _, err := ParseJWKS([]byte(in)); err == nil {
			t.Errorf("%s: ParseJWKS succeeded", name)
		}
	}
	dup := strings.Replace(string(raw), s.Keys[1].ID, s.Keys[0].ID, 1)
	if _, err := ParseJWKS([]byte(dup)); err == nil {
		t.Error("duplicate kid accepted")
	}
}

// verify checks tok against the JWKS the way a runtime does: the key by kid, the algorithm
// pinned to the key's, at instant now.
func verify(t testing.TB, jwks []byte, tok string, now time.Time) (*auth.Claims, error) {
	t.Helper()
	keys, err := ParseJWKS(jwks)
	if err != nil {
		t.Fatal(err)
	}
	claims := &auth.Claims{}
	_, err = jwt.ParseWithClaims(tok, claims, func(tk *jwt.Token) (any, error) {
		kid, _ := tk.Header["kid"].(string)
		if k, ok := keys[kid]; ok {
			return k, nil
		}
		return nil, jwt.ErrTokenUnverifiable
	}, jwt.WithValidMethods([]string{"RS256", "ES256"}), jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithExpirationRequired())
	return claims, err
}

func testClaims(now time.Time, ttl time.Duration) auth.Claims {
	return auth.Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer: auth.DefaultIssuer, Subject: "team-a/ci", Audience: jwt.ClaimStrings{auth.Audience("team-a")},
			IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(ttl)), ID: "jti-1",
		},
		KeyID:  "abc",
		Models: []string{"llama"},
	}
}

func TestStoreSignVerify(t *testing.T) {
	for _, alg := range []Algorithm{RS256, ES256} {
		t.Run(string(alg), func(t *testing.T) {
			var st Store
			if _, err := st.Sign(testClaims(t0, time.Minute)); !errors.Is(err, ErrNoSigningKey) {
				t.Fatalf("Sign on empty store: %v", err)
			}
			if _, ok := st.Get(); ok {
				t.Fatal("Get on empty store reports a set")
			}
			set, _, err := Rotate(KeySet{}, alg, t0, time.Hour, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			st.Set(set)
			tok, err := st.Sign(testClaims(t0, time.Minute))
			if err != nil {
				t.Fatal(err)
			}
			jwks, _ := st.JWKS()
			got, err := verify(t, jwks, tok, t0.Add(30*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			if got.Subject != "team-a/ci" || got.KeyID != "abc" || got.Models[0] != "llama" {
				t.Fatalf("claims %+v", got)
			}
			parsed, _, _ := jwt.NewParser().ParseUnverified(tok, &auth.Claims{})
			if parsed.Header["kid"] != set.Keys[0].ID || parsed.Header["alg"] != string(alg) {
				t.Fatalf("header %v", parsed.Header)
			}
			if _, err := verify(t, jwks, tok, t0.Add(2*time.Minute)); err == nil {
				t.Fatal("expired token verified")
			}
		})
	}
}

func TestStoreCopies(t *testing.T) {
	var st Store
	set := KeySet{Keys: []Key{mustKey(t, ES256, t0)}}
	st.Set(set)
	set.Keys[0].ID = "changed"
	got, ok := st.Get()
	if !ok || got.Keys[0].ID == "changed" {
		t.Fatal("Store aliases the caller's slice")
	}
	got.Keys[0].ID = "changed"
	if again, _ := st.Get(); again.Keys[0].ID == "changed" {
		t.Fatal("Get returns the Store's own slice")
	}
}

// TestStoreConcurrent runs Set against Sign and JWKS; go test -race checks it.
func TestStoreConcurrent(t *testing.T) {
	var st Store
	a, b := KeySet{Keys: []Key{mustKey(t, ES256, t0)}}, KeySet{Keys: []Key{mustKey(t, ES256, t0)}}
	st.Set(a)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			st.Set([]KeySet{a, b}[i%2])
		}
	}()
	for range 200 {
		if _, err := st.Sign(testClaims(t0, time.Minute)); err != nil {
			t.Error(err)
		}
		if _, err := st.JWKS(); err != nil {
			t.Error(err)
		}
	}
	<-done
}

// A new key signs only once the runtimes can have it: the minute after a rotation, the key
// it replaced signs.
func TestSigningKeyWaitsForPublication(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	old, err := NewKey(ES256, t0)
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := NewKey(ES256, t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	old.RetiredAt = rotated.CreatedAt
	ks := KeySet{Keys: []Key{rotated, old}}
	if got := signingKey(ks, rotated.CreatedAt.Add(PublishDelay-time.Second)); got.ID != old.ID {
		t.Errorf("a key %v old signs", PublishDelay-time.Second)
	}
	if got := signingKey(ks, rotated.CreatedAt.Add(PublishDelay)); got.ID != rotated.ID {
		t.Errorf("the new key does not sign after %v", PublishDelay)
	}
	if got := signingKey(KeySet{Keys: []Key{rotated}}, rotated.CreatedAt); got.ID != rotated.ID {
		t.Error("a lone new key must sign at once")
	}
	// The replaced key is still published for every token it signs in that minute.
	if drop := dropTime(old, time.Hour); !drop.After(rotated.CreatedAt.Add(PublishDelay + time.Hour)) {
		t.Errorf("the replaced key is dropped at %v, before its last tokens expire", drop)
	}
}
