package tokenservice

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/helixflow/helixflow/internal/signing"
)

// BenchmarkIssueToken is one whole POST /v1/tokens through the handler: header parsing,
// key hash and lookup, policy checks, claims, signing and the JSON response.
func BenchmarkIssueToken(b *testing.B) {
	for _, alg := range []signing.Algorithm{signing.RS256, signing.ES256} {
		b.Run(string(alg), func(b *testing.B) {
			fx := newFixture(b, alg)
			authz := fx.bearer("ok")
			b.ReportAllocs()
			for b.Loop() {
				req := httptest.NewRequest(http.MethodPost, TokensPath, http.NoBody)
				req.Header.Set("Authorization", authz)
				if rec := newRecorderServe(fx.handler, req); rec.Code != http.StatusOK {
					b.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
			}
		})
	}
}
