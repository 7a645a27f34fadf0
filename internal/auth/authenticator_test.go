package auth

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// authFixture is an authenticator with one ApiKey "chat" and a trusted RS256 signer.
type authFixture struct {
	a      *Authenticator
	clock  *fakeClock
	signer *testSigner
	key    string
	keyID  string
	ak     *servingv1alpha1.ApiKey
}

func newAuthFixture(t testing.TB, mode servingv1alpha1.AuthMode, b *apiKeyBuilder) *authFixture {
	t.Helper()
	f := &authFixture{clock: newFakeClock(), signer: newRSASigner("rsa-1")}
	f.key, f.keyID = newKey(t)
	var err error
	f.a, err = NewAuthenticator(testNS, mode, WithClock(f.clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	if b == nil {
		b = makeApiKey("chat")
	}
	f.ak = b.Key(f.keyID, f.key).Obj()
	mustUpsert(t, f.a.Keys(), f.ak)
	if err := f.a.Tokens().SetJWKS(jwksOf(t, f.signer), ""); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *authFixture) token(t testing.TB, mut func(*Claims)) string {
	t.Helper()
	c := tokenClaims(f.ak.Name, f.keyID, f.clock.Now())
	if mut != nil {
		mut(c)
	}
	return f.signer.sign(t, c)
}

func TestAuthenticateModes(t *testing.T) {
	for _, tc := range []struct {
		mode            servingv1alpha1.AuthMode
		keyErr, jwtErr  *Error
		wantKey, wantTk Method
	}{
		{mode: servingv1alpha1.AuthModeAPIKey, wantKey: MethodAPIKey, jwtErr: ErrTokensNotAccepted},
		{mode: servingv1alpha1.AuthModeJWT, keyErr: ErrAPIKeysNotAccepted, wantTk: MethodJWT},
		{mode: servingv1alpha1.AuthModeAPIKeyOrJWT, wantKey: MethodAPIKey, wantTk: MethodJWT},
		{mode: "", wantKey: MethodAPIKey, wantTk: MethodJWT},
		{mode: servingv1alpha1.AuthModeNone, wantKey: MethodNone, wantTk: MethodNone},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			f := newAuthFixture(t, tc.mode, nil)
			check := func(header string, want Method, wantE *Error) {
				t.Helper()
				p, err := f.a.Authenticate(header)
				if wantE != nil {
					wantErr(t, err, wantE)
					return
				}
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if p.Method != want {
					t.Errorf("method %s, want %s", p.Method, want)
				}
			}
			check("Bearer "+f.key, tc.wantKey, tc.keyErr)
			check("Bearer "+f.token(t, nil), tc.wantTk, tc.jwtErr)
		})
	}
}

func TestAuthenticateNoneIsAnonymous(t *testing.T) {
	a, err := NewAuthenticator(testNS, servingv1alpha1.AuthModeNone)
	if err != nil {
		t.Fatal(err)
	}
	p, err := a.Authenticate("")
	if err != nil {
		t.Fatal(err)
	}
	if !p.AllowsModel("anything") || !p.HasScope(servingv1alpha1.ScopeInference) || p.Method != MethodNone {
		t.Errorf("anonymous principal %+v lacks full access", p)
	}
}

func TestNewAuthenticatorRefusesBadArguments(t *testing.T) {
	if _, err := NewAuthenticator(testNS, "Password"); err == nil {
		t.Error("unknown auth mode accepted")
	}
	if _, err := NewAuthenticator("", servingv1alpha1.AuthModeAPIKey); err == nil {
		t.Error("empty namespace accepted")
	}
}

func TestAuthenticateRefusesBadCredentials(t *testing.T) {
	f := newAuthFixture(t, servingv1alpha1.AuthModeAPIKeyOrJWT, nil)
	for _, tc := range []struct {
		name, header string
		want         *Error
	}{
		{name: "missing", header: "", want: ErrMissingCredentials},
		{name: "basic", header: "Basic Zm9vOmJhcg==", want: ErrMalformedAuthorization},
		{name: "unknown key", header: "Bearer hfk_aaaaaaaaaaaaaaaa_bbbbbbbb", want: ErrInvalidAPIKey},
		{name: "garbage", header: "Bearer nothing-like-a-key", want: ErrInvalidAPIKey},
		{name: "hash as key", header: "Bearer " + f.ak.Status.KeyHash, want: ErrInvalidAPIKey},
		{name: "one dot", header: "Bearer abc.def", want: ErrInvalidAPIKey},
		{name: "garbage jwt", header: "Bearer abc.def.ghi", want: ErrInvalidToken},
		{name: "expired jwt", header: "Bearer " + f.token(t, func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(t0.Add(-time.Hour)) }), want: ErrTokenExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := f.a.Authenticate(tc.header)
			wantErr(t, err, tc.want)
			if p != nil {
				t.Errorf("principal %+v returned with an error", p)
			}
			var e *Error
			if !errors.As(err, &e) || e.Status != http.StatusUnauthorized {
				t.Errorf("error %v, want a 401 *Error", err)
			}
		})
	}
}

func TestAuthenticateKeyFollowsTheApiKey(t *testing.T) {
	f := newAuthFixture(t, servingv1alpha1.AuthModeAPIKeyOrJWT, makeApiKey("chat").ExpiresAt(t0.Add(time.Hour)))
	header := "Bearer " + f.key
	if _, err := f.a.Authenticate(header); err != nil {
		t.Fatalf("key refused before expiry: %v", err)
	}
	f.clock.Add(time.Hour)
	_, err := f.a.Authenticate(header)
	wantErr(t, err, ErrKeyExpired)
}

// TestAuthenticateTokenFollowsTheApiKey: a token is only as good as its key right now.
func TestAuthenticateTokenFollowsTheApiKey(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(f *authFixture)
		want   *Error
	}{
		{name: "deleted", change: func(f *authFixture) { f.a.Keys().Delete("chat") }, want: ErrTokenKeyRevoked},
		{name: "suspended", change: func(f *authFixture) {
			mustUpsert(t, f.a.Keys(), makeApiKey("chat").Key(f.keyID, f.key).Suspend().Obj())
		}, want: ErrKeySuspended},
		{name: "expired", change: func(f *authFixture) {
			mustUpsert(t, f.a.Keys(), makeApiKey("chat").Key(f.keyID, f.key).ExpiresAt(t0.Add(time.Minute)).Obj())
			f.clock.Add(time.Minute)
		}, want: ErrKeyExpired},
		{name: "quota used up", change: func(f *authFixture) {
			mustUpsert(t, f.a.Keys(), makeApiKey("chat").Key(f.keyID, f.key).QuotaUsedUp().Obj())
		}, want: ErrQuotaExceeded},
		{name: "rotated, in grace", change: func(f *authFixture) {
			k, id := newKey(t)
			mustUpsert(t, f.a.Keys(), makeApiKey("chat").Key(id, k).Previous(f.keyID, f.key, t0.Add(time.Minute)).Obj())
		}},
		{name: "rotated, grace over", change: func(f *authFixture) {
			k, id := newKey(t)
			mustUpsert(t, f.a.Keys(), makeApiKey("chat").Key(id, k).Previous(f.keyID, f.key, t0.Add(time.Minute)).Obj())
			f.clock.Add(time.Minute)
		}, want: ErrTokenKeyRevoked},
		{name: "regenerated without grace", change: func(f *authFixture) {
			k, id := newKey(t)
			mustUpsert(t, f.a.Keys(), makeApiKey("chat").Key(id, k).Obj())
		}, want: ErrTokenKeyRevoked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newAuthFixture(t, servingv1alpha1.AuthModeAPIKeyOrJWT, nil)
			header := "Bearer " + f.token(t, nil)
			if _, err := f.a.Authenticate(header); err != nil {
				t.Fatalf("token refused before the change: %v", err)
			}
			tc.change(f)
			_, err := f.a.Authenticate(header)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("token refused: %v", err)
				}
				return
			}
			wantErr(t, err, tc.want)
		})
	}
}

func TestAuthenticateTokenNarrowsToTheKey(t *testing.T) {
	rl := &servingv1alpha1.KeyRateLimit{TokensPerMinute: 1000}
	for _, tc := range []struct {
		name                    string
		keyModels, tokenModels  []string
		keyScopes, tokenScopes  []servingv1alpha1.Scope
		wantAll                 bool
		wantModels              []string
		wantScopes              []servingv1alpha1.Scope
		allowed, notAllowed     string
		wantScope, missingScope servingv1alpha1.Scope
	}{
		{
			name:      "both list models",
			keyModels: []string{"a", "b"}, tokenModels: []string{"b", "c"},
			keyScopes: []servingv1alpha1.Scope{"Inference", "IssueTokens"}, tokenScopes: []servingv1alpha1.Scope{"Inference", "ListModels"},
			wantModels: []string{"b"}, wantScopes: []servingv1alpha1.Scope{"Inference"},
		},
		{
			name:      "token lists none",
			keyModels: []string{"a"},
			keyScopes: []servingv1alpha1.Scope{"Inference", "ListModels"}, tokenScopes: []servingv1alpha1.Scope{"ListModels"},
			wantModels: []string{"a"}, wantScopes: []servingv1alpha1.Scope{"ListModels"},
		},
		{
			name:        "key allows all",
			tokenModels: []string{"c"},
			keyScopes:   []servingv1alpha1.Scope{"Inference"}, tokenScopes: []servingv1alpha1.Scope{"Inference", "IssueTokens"},
			wantModels: []string{"c"}, wantScopes: []servingv1alpha1.Scope{"Inference"},
		},
		{
			name:      "no model in common allows none",
			keyModels: []string{"a"}, tokenModels: []string{"b"},
			keyScopes: []servingv1alpha1.Scope{"Inference"}, tokenScopes: []servingv1alpha1.Scope{"Inference"},
			wantModels: []string{}, wantScopes: []servingv1alpha1.Scope{"Inference"},
		},
		{
			name:      "neither lists models",
			keyScopes: []servingv1alpha1.Scope{"Inference"}, tokenScopes: []servingv1alpha1.Scope{"Inference"},
			wantAll: true, wantScopes: []servingv1alpha1.Scope{"Inference"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := makeApiKey("chat").Models(tc.keyModels...).Scopes(tc.keyScopes...)
			b.ak.Spec.RateLimit = rl
			f := newAuthFixture(t, servingv1alpha1.AuthModeJWT, b)
			p, err := f.a.Authenticate("Bearer " + f.token(t, func(c *Claims) { c.Models, c.Scopes = tc.tokenModels, tc.tokenScopes }))
			if err != nil {
				t.Fatal(err)
			}
			want := &Principal{
				Namespace: testNS, Name: "chat", KeyID: f.keyID, Method: MethodJWT,
				AllModels: tc.wantAll, Models: tc.wantModels, Scopes: tc.wantScopes, RateLimit: rl,
			}
			if diff := cmp.Diff(want, p); diff != "" {
				t.Errorf("principal (-want +got):\n%s", diff)
			}
			if !tc.wantAll && (p.AllowsModel("z") || p.AllModels) {
				t.Error("a token with a model list allows an unlisted model")
			}
		})
	}
}

func TestAuthenticateAPIKeyAllocatesNothing(t *testing.T) {
	f := newAuthFixture(t, servingv1alpha1.AuthModeAPIKeyOrJWT, nil)
	header := "Bearer " + f.key
	if n := testing.AllocsPerRun(100, func() { _, _ = f.a.Authenticate(header) }); n != 0 {
		t.Errorf("API key hit path allocates %v times", n)
	}
	f.a.now = time.Now // the real clock must not allocate either
	if n := testing.AllocsPerRun(100, func() { _, _ = f.a.Authenticate(header) }); n != 0 {
		t.Errorf("API key hit path with time.Now allocates %v times", n)
	}
}

func TestPermissionErrors(t *testing.T) {
	p := &Principal{Models: []string{"a"}, Scopes: []servingv1alpha1.Scope{servingv1alpha1.ScopeListModels}}
	if p.AllowsModel("b") != false || p.AllowsModel("a") != true {
		t.Error("AllowsModel does not follow Models")
	}
	if p.HasScope(servingv1alpha1.ScopeInference) || !p.HasScope(servingv1alpha1.ScopeListModels) {
		t.Error("HasScope does not follow Scopes")
	}
	for _, e := range []*Error{ErrModelNotAllowed("b"), ErrScopeMissing(servingv1alpha1.ScopeInference)} {
		if e.Status != http.StatusForbidden || e.Type != "permission_error" {
			t.Errorf("%v: status %d type %s, want 403 permission_error", e, e.Status, e.Type)
		}
	}
	if ErrModelNotAllowed("m").Code != CodeModelNotAllowed || ErrScopeMissing("s").Code != CodeMissingScope {
		t.Error("wrong codes")
	}
}
