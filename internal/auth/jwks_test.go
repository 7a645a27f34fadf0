package auth

import (
	"crypto/x509"
	"encoding/pem"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// newTestVerifier trusts the given signers; the clock starts at t0.
func newTestVerifier(t *testing.T, clock *fakeClock, signers ...*testSigner) *Verifier {
	t.Helper()
	v := NewVerifier(testNS, clock.Now)
	if err := v.SetJWKS(jwksOf(t, signers...), ""); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestVerifyAccepts(t *testing.T) {
	clock := newFakeClock()
	rs, es := newRSASigner("rsa-1"), newECSigner(t, "ec-1")
	v := newTestVerifier(t, clock, rs, es)
	for _, s := range []*testSigner{rs, es} {
		t.Run(s.method.Alg(), func(t *testing.T) {
			tok := s.sign(t, tokenClaims("chat", "kid123", t0))
			c, name, err := v.Verify(tok)
			if err != nil {
				t.Fatalf("valid %s token refused: %v", s.method.Alg(), err)
			}
			if name != "chat" || c.KeyID != "kid123" {
				t.Errorf("name %q key_id %q, want chat kid123", name, c.KeyID)
			}
		})
	}
}

func TestVerifyRefuses(t *testing.T) {
	clock := newFakeClock()
	rs, es := newRSASigner("rsa-1"), newECSigner(t, "ec-1")
	v := newTestVerifier(t, clock, rs, es)
	valid := func() *Claims { return tokenClaims("chat", "kid123", t0) }
	with := func(mut func(*Claims)) *Claims { c := valid(); mut(c); return c }

	pubDER, err := x509.MarshalPKIXPublicKey(rsaKeys()[0].Public())
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	hs256 := func(key []byte) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, valid())
		tok.Header["kid"] = rs.kid
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	none := func() string {
		tok := jwt.NewWithClaims(jwt.SigningMethodNone, valid())
		tok.Header["kid"] = rs.kid
		s, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// forged uses another RSA key under a trusted kid; mismatched an RSA key under the EC kid.
	forged := &testSigner{kid: rs.kid, method: jwt.SigningMethodRS256, key: rsaKeys()[1]}
	mismatched := &testSigner{kid: es.kid, method: jwt.SigningMethodRS256, key: rsaKeys()[0]}
	unknown := newECSigner(t, "ec-unknown")
	noKid := &testSigner{method: jwt.SigningMethodES256, key: es.key}
	good := rs.sign(t, valid())

	cases := []struct {
		name  string
		token string
		want  *Error
	}{
		{name: "unknown kid", token: unknown.sign(t, valid()), want: ErrTokenUnknownKey},
		{name: "no kid", token: noKid.sign(t, valid()), want: ErrTokenUnknownKey},
		{name: "expired", token: rs.sign(t, with(func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(t0.Add(-time.Minute)) })), want: ErrTokenExpired},
		{name: "no exp", token: rs.sign(t, with(func(c *Claims) { c.ExpiresAt = nil })), want: ErrInvalidToken},
		{name: "not valid yet", token: rs.sign(t, with(func(c *Claims) { c.NotBefore = jwt.NewNumericDate(t0.Add(time.Hour)) })), want: ErrInvalidToken},
		{name: "issued in the future", token: rs.sign(t, with(func(c *Claims) { c.IssuedAt = jwt.NewNumericDate(t0.Add(time.Hour)) })), want: ErrInvalidToken},
		{name: "wrong audience", token: rs.sign(t, with(func(c *Claims) { c.Audience = jwt.ClaimStrings{Audience("team-b")} })), want: ErrTokenAudience},
		{name: "no audience", token: rs.sign(t, with(func(c *Claims) { c.Audience = nil })), want: ErrInvalidToken},
		{name: "wrong issuer", token: rs.sign(t, with(func(c *Claims) { c.Issuer = "https://evil.example" })), want: ErrTokenIssuer},
		{name: "sub of another namespace", token: rs.sign(t, with(func(c *Claims) { c.Subject = "team-b/chat" })), want: ErrInvalidToken},
		{name: "sub without a name", token: rs.sign(t, with(func(c *Claims) { c.Subject = testNS + "/" })), want: ErrInvalidToken},
		{name: "no key_id", token: rs.sign(t, with(func(c *Claims) { c.KeyID = "" })), want: ErrInvalidToken},
		{name: "alg none", token: none(), want: ErrInvalidToken},
		{name: "HS256 with the public key DER", token: hs256(pubDER), want: ErrInvalidToken},
		{name: "HS256 with the public key PEM", token: hs256(pubPEM), want: ErrInvalidToken},
		{name: "signed by another key under a trusted kid", token: forged.sign(t, valid()), want: ErrInvalidToken},
		{name: "RS256 under an ES256 kid", token: mismatched.sign(t, valid()), want: ErrInvalidToken},
		{name: "signature stripped", token: good[:strings.LastIndexByte(good, '.')+1], want: ErrInvalidToken},
		{name: "payload swapped", token: swapPayload(good, rs.sign(t, with(func(c *Claims) { c.Subject = testNS + "/admin" }))), want: ErrInvalidToken},
		{name: "garbage", token: "a.b.c", want: ErrInvalidToken},
		{name: "empty", token: "", want: ErrInvalidToken},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := v.Verify(tc.token)
			wantErr(t, err, tc.want)
			if tc.token != "" && strings.Contains(err.Error(), tc.token) {
				t.Errorf("error message %q quotes the token", err)
			}
		})
	}
}

// swapPayload puts the payload of b under the header and signature of a.
func swapPayload(a, b string) string {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	return pa[0] + "." + pb[1] + "." + pa[2]
}

func TestVerifyLeeway(t *testing.T) {
	clock := newFakeClock()
	rs := newRSASigner("rsa-1")
	v := newTestVerifier(t, clock, rs)
	tok := rs.sign(t, tokenClaims("chat", "kid123", t0))
	clock.Add(15*time.Minute + ClockSkewLeeway/2)
	if _, _, err := v.Verify(tok); err != nil {
		t.Errorf("token within the clock-skew leeway refused: %v", err)
	}
	clock.Add(ClockSkewLeeway)
	if _, _, err := v.Verify(tok); err == nil {
		t.Error("token past exp and the leeway accepted")
	}
}

func TestVerifyAcrossRotation(t *testing.T) {
	clock := newFakeClock()
	old, next := newRSASigner("2030-01"), newECSigner(t, "2030-02")
	v := newTestVerifier(t, clock, old)
	before := old.sign(t, tokenClaims("chat", "kid123", t0))

	// Rotation: the manager publishes the new key first and keeps the retired one.
	if err := v.SetJWKS(jwksOf(t, next, old), ""); err != nil {
		t.Fatal(err)
	}
	after := next.sign(t, tokenClaims("chat", "kid123", t0))
	for name, tok := range map[string]string{"signed before": before, "signed after": after} {
		if _, _, err := v.Verify(tok); err != nil {
			t.Errorf("token %s the rotation refused: %v", name, err)
		}
	}
	// An unreadable update keeps the set in force.
	if err := v.SetJWKS([]byte("{not json"), ""); err == nil {
		t.Error("unreadable JWKS accepted")
	}
	if _, _, err := v.Verify(before); err != nil {
		t.Errorf("token refused after an unreadable JWKS update: %v", err)
	}
	// Once the retired key is withdrawn, its tokens stop.
	if err := v.SetJWKS(jwksOf(t, next), ""); err != nil {
		t.Fatal(err)
	}
	_, _, err := v.Verify(before)
	wantErr(t, err, ErrTokenUnknownKey)
	if _, _, err := v.Verify(after); err != nil {
		t.Errorf("token of the active key refused: %v", err)
	}
	v.Clear()
	_, _, err = v.Verify(after)
	wantErr(t, err, ErrTokenNotVerified)
}

func TestVerifyIssuerFromConfigMap(t *testing.T) {
	clock := newFakeClock()
	rs := newRSASigner("rsa-1")
	v := NewVerifier(testNS, clock.Now)
	if err := v.SetJWKS(jwksOf(t, rs), "https://tokens.internal"); err != nil {
		t.Fatal(err)
	}
	c := tokenClaims("chat", "kid123", t0)
	if _, _, err := v.Verify(rs.sign(t, c)); err == nil {
		t.Error("token of the default issuer accepted when the ConfigMap names another")
	}
	c.Issuer = "https://tokens.internal"
	if _, _, err := v.Verify(rs.sign(t, c)); err != nil {
		t.Errorf("token of the configured issuer refused: %v", err)
	}
}

func TestSetJWKSKeys(t *testing.T) {
	rs, es := newRSASigner("rsa-ok"), newECSigner(t, "ec-ok")
	small := rs.pub
	small.Kid, small.N = "rsa-small", b64(append([]byte{0x80}, make([]byte, 127)...)) // 1024 bits
	offCurve := es.pub
	offCurve.Kid, offCurve.Y = "ec-off-curve", es.pub.X
	enc := rs.pub
	enc.Kid, enc.Use = "rsa-enc", "enc"
	okp := jwk{Kty: "OKP", Kid: "ed-1", Crv: "Ed25519", X: "AAAA"}
	noKid := es.pub
	noKid.Kid = ""
	rsaAsES := rs.pub
	rsaAsES.Kid, rsaAsES.Alg = "rsa-es", "ES256"
	set := jwkSet{Keys: []jwk{rs.pub, es.pub, small, offCurve, enc, okp, noKid, rsaAsES}}

	v := NewVerifier(testNS, time.Now)
	err := v.SetJWKS(mustJSON(t, set), "")
	if err == nil {
		t.Error("malformed keys were not reported")
	}
	for _, bad := range []string{"rsa-small", "ec-off-curve"} {
		if !strings.Contains(err.Error(), bad) {
			t.Errorf("error %q does not name the malformed key %s", err, bad)
		}
	}
	got := v.KeyIDs()
	slices.Sort(got)
	if want := []string{"ec-ok", "rsa-ok"}; !slices.Equal(got, want) {
		t.Errorf("trusted kids = %v, want %v", got, want)
	}
}
