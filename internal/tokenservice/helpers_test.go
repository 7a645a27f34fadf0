package tokenservice

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/golang-jwt/jwt/v5"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/internal/signing"
)

// now has a fraction of a second so the tests see JWT times truncated to whole seconds.
var now = time.Date(2026, 3, 10, 12, 0, 0, 500_000_000, time.UTC)

// fakeLookup is the boundary the manager's cache implements: keys by current and previous
// hash, nothing more.
type fakeLookup struct {
	byHash map[auth.KeyHash]*servingv1alpha1.ApiKey
	err    error
}

func (f *fakeLookup) ApiKeyByHash(_ context.Context, h auth.KeyHash) (*servingv1alpha1.ApiKey, error) {
	return f.byHash[h], f.err
}

func newLookup(t testing.TB, aks ...*servingv1alpha1.ApiKey) *fakeLookup {
	f := &fakeLookup{byHash: map[auth.KeyHash]*servingv1alpha1.ApiKey{}}
	add := func(ak *servingv1alpha1.ApiKey, s string) {
		h, err := auth.ParseKeyHash(s)
		if err != nil {
			t.Fatal(err)
		}
		f.byHash[h] = ak
	}
	for _, ak := range aks {
		add(ak, ak.Status.KeyHash)
		for _, p := range ak.Status.PreviousKeys {
			add(ak, p.KeyHash)
		}
	}
	return f
}

// newKey makes an API key and the ApiKey it belongs to: scopes include IssueTokens, two
// models, a rate limit.
func newKey(t testing.TB, name string) (string, *servingv1alpha1.ApiKey) {
	key, id, err := auth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return key, &servingv1alpha1.ApiKey{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: name},
		Spec: servingv1alpha1.ApiKeySpec{
			Models:    []string{"llama", "mistral"},
			Scopes:    []servingv1alpha1.Scope{servingv1alpha1.ScopeInference, servingv1alpha1.ScopeListModels, servingv1alpha1.ScopeIssueTokens},
			RateLimit: &servingv1alpha1.KeyRateLimit{RequestsPerMinute: 60, MaxConcurrent: 4},
		},
		Status: servingv1alpha1.ApiKeyStatus{KeyID: id, KeyHash: auth.HashKey(key).String()},
	}
}

func newStore(t testing.TB, alg signing.Algorithm) *signing.Store {
	set, _, err := signing.Rotate(signing.KeySet{}, alg, now, 720*time.Hour, DefaultMaxTTL)
	if err != nil {
		t.Fatal(err)
	}
	var st signing.Store
	st.Set(set)
	return &st
}

// logBuffer captures every log line at every verbosity, to search for leaked keys.
type logBuffer struct {
	mu sync.Mutex
	sb strings.Builder
}

func (b *logBuffer) logger() logr.Logger {
	return funcr.New(func(prefix, args string) {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.sb.WriteString(prefix + " " + args + "\n")
	}, funcr.Options{Verbosity: 10})
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.String()
}

type request struct {
	method, path, authz, contentType, body string
}

func serve(h http.Handler, r request) *httptest.ResponseRecorder {
	if r.method == "" {
		r.method = http.MethodPost
	}
	if r.path == "" {
		r.path = TokensPath
	}
	req := httptest.NewRequest(r.method, r.path, strings.NewReader(r.body))
	if r.authz != "" {
		req.Header.Set("Authorization", r.authz)
	}
	if r.contentType != "" {
		req.Header.Set("Content-Type", r.contentType)
	}
	return newRecorderServe(h, req)
}

func newRecorderServe(h http.Handler, req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// verifyToken checks tok the way a runtime does: public key from the served JWKS by kid,
// algorithm pinned, issuer and audience required, at the test clock.
func verifyToken(t testing.TB, h http.Handler, tok string, at time.Time) (*auth.Claims, *jwt.Token, error) {
	t.Helper()
	rec := serve(h, request{method: http.MethodGet, path: JWKSPath})
	keys, err := signing.ParseJWKS(rec.Body.Bytes())
	if err != nil {
		t.Fatalf("JWKS: %v", err)
	}
	claims := &auth.Claims{}
	parsed, err := jwt.ParseWithClaims(tok, claims, func(tk *jwt.Token) (any, error) {
		if k, ok := keys[tk.Header["kid"].(string)]; ok {
			return k, nil
		}
		return nil, errors.New("unknown kid")
	}, jwt.WithValidMethods([]string{"RS256", "ES256"}), jwt.WithIssuer(auth.DefaultIssuer),
		jwt.WithAudience(auth.Audience("team-a")), jwt.WithExpirationRequired(), jwt.WithIssuedAt(),
		jwt.WithTimeFunc(func() time.Time { return at }))
	return claims, parsed, err
}
