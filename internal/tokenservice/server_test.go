package tokenservice

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/apierror"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/internal/signing"
)

// fixture is a token service with one ApiKey per situation the tests need.
type fixture struct {
	handler http.Handler
	logs    *logBuffer
	lookup  *fakeLookup
	store   *signing.Store
	keys    map[string]string // situation -> plaintext key
}

func newFixture(t testing.TB, alg signing.Algorithm) *fixture {
	f := &fixture{logs: &logBuffer{}, keys: map[string]string{}}
	var aks []*servingv1alpha1.ApiKey
	add := func(name string, edit func(*servingv1alpha1.ApiKey)) {
		key, ak := newKey(t, name)
		edit(ak)
		f.keys[name] = key
		aks = append(aks, ak)
	}
	add("ok", func(*servingv1alpha1.ApiKey) {})
	add("all-models", func(ak *servingv1alpha1.ApiKey) { ak.Spec.Models = nil })
	add("suspended", func(ak *servingv1alpha1.ApiKey) { ak.Spec.Suspend = ptr.To(true) })
	add("expired", func(ak *servingv1alpha1.ApiKey) { ak.Spec.ExpiresAt = &metav1.Time{Time: now.Add(-time.Second)} })
	add("expiring", func(ak *servingv1alpha1.ApiKey) { ak.Spec.ExpiresAt = &metav1.Time{Time: now.Add(5 * time.Minute)} })
	add("quota", exhaustQuota)
	add("no-issue", func(ak *servingv1alpha1.ApiKey) { ak.Spec.Scopes = ak.Spec.Scopes[:1] })
	add("inference-only", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.Scopes = []servingv1alpha1.Scope{servingv1alpha1.ScopeInference, servingv1alpha1.ScopeIssueTokens}
	})
	f.keys["previous"] = addPrevious(t, aks[0], now.Add(10*time.Minute))
	f.keys["previous-expired"] = addPrevious(t, aks[0], now.Add(-time.Second))
	f.lookup = newLookup(t, aks...)
	f.store = newStore(t, alg)
	srv := NewServer(f.lookup, f.store, DisabledAddress)
	srv.Now = func() time.Time { return now }
	srv.Log = f.logs.logger()
	f.handler = srv.Handler()
	return f
}

// exhaustQuota marks the quota used up both ways a refusal can be derived (the condition and
// the counted usage), so the test holds whichever the shared rule reads.
func exhaustQuota(ak *servingv1alpha1.ApiKey) {
	ak.Spec.Quota = &servingv1alpha1.TokenQuota{Tokens: 100, Window: servingv1alpha1.QuotaWindowMonth}
	start := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	ak.Status.Usage = &servingv1alpha1.KeyUsage{WindowStart: &metav1.Time{Time: start}, Tokens: 100}
	meta.SetStatusCondition(&ak.Status.Conditions, metav1.Condition{
		Type: servingv1alpha1.ApiKeyConditionQuotaExhausted, Status: metav1.ConditionTrue, Reason: servingv1alpha1.ApiKeyReasonQuotaExhausted,
	})
}

// addPrevious records a rotated-out key on ak, accepted until validUntil.
func addPrevious(t testing.TB, ak *servingv1alpha1.ApiKey, validUntil time.Time) string {
	key, id, err := auth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	ak.Status.PreviousKeys = append(ak.Status.PreviousKeys, servingv1alpha1.PreviousKey{
		KeyID: id, KeyHash: auth.HashKey(key).String(), ValidUntil: metav1.Time{Time: validUntil},
	})
	return key
}

func (f *fixture) bearer(name string) string { return "Bearer " + f.keys[name] }

// assertNoKeyLeak fails if any plaintext key appears in body or in the logs so far.
func (f *fixture) assertNoKeyLeak(t *testing.T, body string) {
	t.Helper()
	logs := f.logs.String()
	for name, key := range f.keys {
		if strings.Contains(body, key) || strings.Contains(logs, key) {
			t.Fatalf("key %q leaked:\nbody: %s\nlogs: %s", name, body, logs)
		}
		secret := key[strings.LastIndexByte(key, '_')+1:]
		if strings.Contains(body, secret) || strings.Contains(logs, secret) {
			t.Fatalf("secret of key %q leaked", name)
		}
	}
}

func decodeError(t *testing.T, body []byte) apierror.Detail {
	t.Helper()
	var b apierror.Body
	if err := json.Unmarshal(body, &b); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	return b.Error
}

func TestIssueTokenClaims(t *testing.T) {
	for _, alg := range []signing.Algorithm{signing.RS256, signing.ES256} {
		t.Run(string(alg), func(t *testing.T) {
			f := newFixture(t, alg)
			rec := serve(f.handler, request{authz: f.bearer("ok")})
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control %q", cc)
			}
			var resp TokenResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
				t.Fatal(err)
			}
			if resp.TokenType != "Bearer" || resp.ExpiresIn != int64(DefaultTTL/time.Second) {
				t.Fatalf("response %+v", resp)
			}
			claims, tok, err := verifyToken(t, f.handler, resp.AccessToken, now.Add(time.Minute))
			if err != nil {
				t.Fatal(err)
			}
			checkClaims(t, f, claims, tok.Header)
			if _, _, err := verifyToken(t, f.handler, resp.AccessToken, now.Add(DefaultTTL)); err == nil {
				t.Fatal("token still valid at exp")
			}
			f.assertNoKeyLeak(t, rec.Body.String())
		})
	}
}

func checkClaims(t *testing.T, f *fixture, c *auth.Claims, header map[string]any) {
	t.Helper()
	iat := now.Truncate(time.Second)
	ak := f.lookup.byHash[auth.HashKey(f.keys["ok"])]
	switch {
	case c.Issuer != auth.DefaultIssuer, c.Subject != "team-a/ok",
		!slices.Equal(c.Audience, []string{auth.Audience("team-a")}):
		t.Errorf("iss/sub/aud: %q %q %q", c.Issuer, c.Subject, c.Audience)
	case !c.IssuedAt.Equal(iat), !c.ExpiresAt.Equal(iat.Add(DefaultTTL)):
		t.Errorf("iat %v exp %v", c.IssuedAt, c.ExpiresAt)
	case len(c.ID) < 20:
		t.Errorf("jti %q", c.ID)
	case c.KeyID != ak.Status.KeyID:
		t.Errorf("key_id %q, want %q", c.KeyID, ak.Status.KeyID)
	case !slices.Equal(c.Models, []string{"llama", "mistral"}):
		t.Errorf("models %v", c.Models)
	case !slices.Equal(c.Scopes, []servingv1alpha1.Scope{servingv1alpha1.ScopeInference, servingv1alpha1.ScopeListModels}):
		t.Errorf("scopes %v (IssueTokens must never be delegated)", c.Scopes)
	case c.RateLimit == nil || *c.RateLimit != *ak.Spec.RateLimit:
		t.Errorf("rate_limit %+v", c.RateLimit)
	}
	set, _ := f.store.Get()
	if header["kid"] != set.Keys[0].ID {
		t.Errorf("kid %v, want %s", header["kid"], set.Keys[0].ID)
	}
}

func TestIssueTokenRefusals(t *testing.T) {
	f := newFixture(t, signing.ES256)
	long := `{"models":["` + strings.Repeat("m", MaxRequestBytes) + `"]}`
	cases := []struct {
		name   string
		req    request
		status int
		code   string
	}{
		{"no header", request{}, 401, "missing_api_key"},
		{"basic auth", request{authz: "Basic dXNlcjpwYXNz"}, 401, "missing_api_key"},
		{"bearer without key", request{authz: "Bearer "}, 401, "missing_api_key"},
		{"unknown key", request{authz: "Bearer hfk_aaaaaaaaaaaaaaaa_bbbbbbbb"}, 401, "invalid_api_key"},
		{"hash as key", request{authz: "Bearer " + auth.HashKey(f.keys["ok"]).String()}, 401, "invalid_api_key"},
		{"key too long", request{authz: "Bearer " + strings.Repeat("k", auth.MaxKeyLength+1)}, 401, "invalid_api_key"},
		{"header too long", request{authz: "Bearer " + strings.Repeat("k", MaxAuthorizationBytes)}, 431, "header_too_large"},
		{"previous key after grace", request{authz: f.bearer("previous-expired")}, 401, "invalid_api_key"},
		{"suspended", request{authz: f.bearer("suspended")}, 401, "key_suspended"},
		{"expired", request{authz: f.bearer("expired")}, 401, "key_expired"},
		{"quota", request{authz: f.bearer("quota")}, 429, "insufficient_quota"},
		{"missing scope", request{authz: f.bearer("no-issue")}, 403, "missing_scope"},
		{"model not allowed", request{authz: f.bearer("ok"), body: `{"models":["gpt"]}`}, 403, "model_not_allowed"},
		{"scope not allowed", request{authz: f.bearer("inference-only"), body: `{"scopes":["ListModels"]}`}, 403, "scope_not_allowed"},
		{"delegating IssueTokens", request{authz: f.bearer("ok"), body: `{"scopes":["IssueTokens"]}`}, 400, "invalid_request"},
		{"unknown scope", request{authz: f.bearer("ok"), body: `{"scopes":["Admin"]}`}, 400, "invalid_request"},
		{"body too large", request{authz: f.bearer("ok"), body: long}, 413, "request_too_large"},
		{"bad JSON", request{authz: f.bearer("ok"), body: `{"expires_in":`}, 400, "invalid_request"},
		{"unknown field", request{authz: f.bearer("ok"), body: `{"ttl":60}`}, 400, "invalid_request"},
		{"expires_in over max", request{authz: f.bearer("ok"), body: `{"expires_in":3601}`}, 400, "invalid_request"},
		{"expires_in zero", request{authz: f.bearer("ok"), body: `{"expires_in":0}`}, 400, "invalid_request"},
		{"wrong content type", request{authz: f.bearer("ok"), contentType: "text/plain", body: `{}`}, 415, "unsupported_media_type"},
		{"GET", request{method: http.MethodGet, authz: f.bearer("ok")}, 405, "method_not_allowed"},
		{"unknown path", request{path: "/v1/other", authz: f.bearer("ok")}, 404, "not_found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := serve(f.handler, c.req)
			if rec.Code != c.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, c.status, rec.Body)
			}
			if d := decodeError(t, rec.Body.Bytes()); d.Code != c.code || d.Message == "" || d.Type == "" {
				t.Fatalf("error %+v, want code %s", d, c.code)
			}
			if c.status == 401 && !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer") {
				t.Error("401 without WWW-Authenticate: Bearer")
			}
			if c.status == 405 && rec.Header().Get("Allow") != http.MethodPost {
				t.Errorf("Allow %q", rec.Header().Get("Allow"))
			}
			f.assertNoKeyLeak(t, rec.Body.String())
		})
	}
}

// TestIssueTokenNarrowing covers requests that narrow the key's policy or lifetime, and
// lifetimes cut to the key's own end.
func TestIssueTokenNarrowing(t *testing.T) {
	f := newFixture(t, signing.ES256)
	cases := []struct {
		name, key, body string
		models          []string
		scopes          []servingv1alpha1.Scope
		expiresIn       int64
	}{
		{"models subset", "ok", `{"models":["mistral"]}`, []string{"mistral"}, []servingv1alpha1.Scope{"Inference", "ListModels"}, 900},
		{"scopes subset", "ok", `{"scopes":["Inference"]}`, []string{"llama", "mistral"}, []servingv1alpha1.Scope{"Inference"}, 900},
		{"any model on an all-models key", "all-models", `{"models":["gpt"]}`, []string{"gpt"}, []servingv1alpha1.Scope{"Inference", "ListModels"}, 900},
		{"all models stays all", "all-models", ``, nil, []servingv1alpha1.Scope{"Inference", "ListModels"}, 900},
		{"expires_in max", "ok", `{"expires_in":3600}`, []string{"llama", "mistral"}, []servingv1alpha1.Scope{"Inference", "ListModels"}, 3600},
		{"expires_in short, charset", "ok", ` {"expires_in":60} `, []string{"llama", "mistral"}, []servingv1alpha1.Scope{"Inference", "ListModels"}, 60},
		{"cut to key expiry", "expiring", ``, []string{"llama", "mistral"}, []servingv1alpha1.Scope{"Inference", "ListModels"}, 300},
		{"previous key within grace, cut to its end", "previous", ``, []string{"llama", "mistral"}, []servingv1alpha1.Scope{"Inference", "ListModels"}, 600},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := serve(f.handler, request{authz: f.bearer(c.key), contentType: "application/json; charset=utf-8", body: c.body})
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			var resp TokenResponse
			_ = json.Unmarshal(rec.Body.Bytes(), &resp)
			claims, _, err := verifyToken(t, f.handler, resp.AccessToken, now)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(claims.Models, c.models) || !slices.Equal(claims.Scopes, c.scopes) || resp.ExpiresIn != c.expiresIn ||
				!claims.ExpiresAt.Equal(claims.IssuedAt.Add(time.Duration(c.expiresIn)*time.Second)) {
				t.Fatalf("models %v scopes %v expires_in %d exp %v", claims.Models, claims.Scopes, resp.ExpiresIn, claims.ExpiresAt)
			}
			f.assertNoKeyLeak(t, rec.Body.String())
		})
	}
}

// TestNoKeyInLogsAtAnyVerbosity runs every situation and searches the whole log.
func TestNoKeyInLogsAtAnyVerbosity(t *testing.T) {
	f := newFixture(t, signing.ES256)
	for name := range f.keys {
		for _, body := range []string{``, `{"models":["x"]}`, `{"bad"`} {
			rec := serve(f.handler, request{authz: "Bearer " + f.keys[name], body: body})
			f.assertNoKeyLeak(t, rec.Body.String())
		}
	}
	if !strings.Contains(f.logs.String(), "token refused") || !strings.Contains(f.logs.String(), "issued token") {
		t.Fatalf("expected refusal and issuance log lines, got:\n%s", f.logs)
	}
}

func TestBearerKey(t *testing.T) {
	cases := map[string]string{ // header -> key, "" when refused
		"Bearer k": "k", "bearer k": "k", "BEARER\tk": "k", "  Bearer   k  ": "k",
		"Bearer": "", "Bearerk": "", "Basic k": "", "Bearer a b": "", "": "",
	}
	for header, want := range cases {
		key, f := bearerKey(header)
		if key != want || (want == "") != (f != nil) {
			t.Errorf("bearerKey(%q) = %q, %v; want %q", header, key, f, want)
		}
	}
}
