package tokenservice

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/signing"
)

var requestSeeds = []string{
	``, `{}`, ` { } `, `null`, `[]`, `"x"`, `{} {}`, `{}x`,
	`{"expires_in":60}`, `{"expires_in":0}`, `{"expires_in":-1}`, `{"expires_in":1.5}`, `{"expires_in":1e3}`,
	`{"expires_in":99999999999999999999}`, `{"expires_in":null}`,
	`{"models":["llama"],"scopes":["Inference","ListModels"]}`, `{"models":[""]}`, `{"models":["a","a"]}`,
	`{"scopes":["IssueTokens"]}`, `{"scopes":["Admin"]}`, `{"scopes":["Inference","Inference"]}`,
	`{"unknown":1}`, `{"EXPIRES_IN":5}`, "{\"models\":[\"\xff\"]}",
}

// FuzzParseTokenRequest: no input panics, and whatever is accepted is within the limits and
// survives a round trip.
func FuzzParseTokenRequest(f *testing.F) {
	for _, s := range requestSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := ParseTokenRequest(body)
		if err != nil {
			return
		}
		checkAccepted(t, r)
		again, err := ParseTokenRequest(encodeRequest(t, r))
		if err != nil || again.ExpiresIn != r.ExpiresIn || !slices.Equal(again.Models, r.Models) || !slices.Equal(again.Scopes, r.Scopes) {
			t.Fatalf("round trip of %q: %+v, %v", body, again, err)
		}
	})
}

func checkAccepted(t *testing.T, r TokenRequest) {
	t.Helper()
	if r.ExpiresIn < 0 || r.ExpiresIn%time.Second != 0 || r.ExpiresIn > time.Duration(maxExpiresIn)*time.Second {
		t.Fatalf("expires_in %v accepted", r.ExpiresIn)
	}
	if checkModels(r.Models) != nil || len(r.Models) > maxModels {
		t.Fatalf("models %q accepted", r.Models)
	}
	for _, s := range r.Scopes {
		if s != servingv1alpha1.ScopeInference && s != servingv1alpha1.ScopeListModels {
			t.Fatalf("scope %q accepted", s)
		}
	}
}

func encodeRequest(t *testing.T, r TokenRequest) []byte {
	t.Helper()
	w := wireRequest{Models: r.Models, Scopes: r.Scopes}
	if r.ExpiresIn > 0 {
		s := int64(r.ExpiresIn / time.Second)
		w.ExpiresIn = &s
	}
	raw, err := json.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// FuzzTokenHandler drives the whole handler with arbitrary credentials, content types and
// bodies: it never fails with a 5xx, always answers JSON, issues a token only for the real
// key, and never echoes the real key.
func FuzzTokenHandler(f *testing.F) {
	fx := newFixture(f, signing.ES256)
	for _, s := range requestSeeds {
		f.Add("ok", "application/json", []byte(s))
	}
	f.Add("", "", []byte(``))
	f.Add("Bearer hfk_x_y", "text/plain", []byte(`{}`))
	f.Add("bEaReR   hfk_x_y  ", "application/json; charset=utf-8", []byte(`{"expires_in":3600}`))
	f.Add("Bearer \x00\xff", "application/json;", []byte(`{"models":["gpt"]}`))
	f.Fuzz(func(t *testing.T, authz, contentType string, body []byte) {
		if authz == "ok" {
			authz = fx.bearer("ok")
		}
		req := httptest.NewRequest(http.MethodPost, TokensPath, bytes.NewReader(body))
		req.Header["Authorization"] = []string{authz}
		req.Header["Content-Type"] = []string{contentType}
		rec := newRecorderServe(fx.handler, req)
		checkFuzzResponse(t, fx, authz, rec)
	})
}

func checkFuzzResponse(t *testing.T, fx *fixture, authz string, rec *httptest.ResponseRecorder) {
	t.Helper()
	if rec.Code >= 500 || !json.Valid(rec.Body.Bytes()) {
		t.Fatalf("status %d body %q", rec.Code, rec.Body)
	}
	if rec.Code == http.StatusOK && !strings.Contains(authz, fx.keys["ok"]) {
		t.Fatalf("token issued for %q", authz)
	}
	if strings.Contains(rec.Body.String(), fx.keys["ok"]) {
		t.Fatal("key echoed")
	}
}
