package auth

import (
	"github.com/golang-jwt/jwt/v5"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

const (
	// JWKSConfigMapName is the ConfigMap the manager writes in every namespace that has an
	// InferenceModel; runtimes read it there and never the manager's namespace.
	JWKSConfigMapName = "helixflow-jwks"
	// JWKSDataKey holds the JSON Web Key Set (public keys only).
	JWKSDataKey = "jwks.json"
	// IssuerDataKey holds the issuer (iss) the runtimes require.
	IssuerDataKey = "issuer"
	// DefaultIssuer is the token service's iss unless the manager is told otherwise.
	DefaultIssuer = "https://token.helixflow.io"
	// audiencePrefix + namespace is the audience of tokens for keys of that namespace, so a
	// token minted for one namespace's key is refused by every other namespace's runtimes.
	audiencePrefix = "serving.helixflow.io/namespace/"
)

// Audience is the aud claim of tokens for ApiKeys in namespace.
func Audience(namespace string) string { return audiencePrefix + namespace }

// Claims are what the token service signs. Standard claims: iss, sub (<namespace>/<ApiKey
// name>), aud (Audience(namespace)), exp, iat, jti; the kid is in the JOSE header.
type Claims struct {
	jwt.RegisteredClaims
	// KeyID is the ApiKey's public key ID the token was exchanged for.
	KeyID string `json:"key_id"`
	// Models the token may be used for; empty means every model the ApiKey allows.
	Models []string `json:"models,omitempty"`
	// Scopes the token carries (never IssueTokens: a token cannot mint tokens).
	Scopes []servingv1alpha1.Scope `json:"scopes"`
	// RateLimit is the ApiKey's rate limit at issuance, for runtimes that do not know the key.
	RateLimit *servingv1alpha1.KeyRateLimit `json:"rate_limit,omitempty"`
}
