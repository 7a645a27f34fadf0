package auth

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// Method is how a principal authenticated.
type Method string

const (
	MethodAPIKey Method = "APIKey"
	MethodJWT    Method = "JWT"
	MethodNone   Method = "None"
)

// Principal is who a request acts for and what it may do. Principals returned for API keys
// are shared between requests (prebuilt, so the hit path allocates nothing): never modify one.
type Principal struct {
	// Namespace and Name are the ApiKey's ("" for anonymous).
	Namespace string
	Name      string
	// UID is the ApiKey's metadata.uid: usage is charged to this object, not to a key
	// created later under the same name.
	UID types.UID
	// KeyID is the public key ID, safe to log and to use as a metric label.
	KeyID string
	// Method is APIKey, JWT or None.
	Method Method
	// AllModels is true when no model list restricts the principal; Models is then empty.
	AllModels bool
	// Models the principal may use when AllModels is false.
	Models []string
	// Scopes the principal has.
	Scopes []servingv1alpha1.Scope
	// RateLimit is the ApiKey's rate limit; nil means unlimited.
	RateLimit *servingv1alpha1.KeyRateLimit
	// Quota is the ApiKey's token quota; nil means none.
	Quota *servingv1alpha1.TokenQuota
}

// AllowsModel reports whether the principal may use the served model name.
func (p *Principal) AllowsModel(name string) bool {
	return p.AllModels || slices.Contains(p.Models, name)
}

// HasScope reports whether the principal has scope s.
func (p *Principal) HasScope(s servingv1alpha1.Scope) bool { return HasScope(p.Scopes, s) }

// anonymous is the principal of AuthMode None: trusted networks only, so it may do anything.
var anonymous = &Principal{
	Method:    MethodNone,
	AllModels: true,
	Scopes: []servingv1alpha1.Scope{
		servingv1alpha1.ScopeInference, servingv1alpha1.ScopeListModels, servingv1alpha1.ScopeIssueTokens,
	},
}

// Authenticator decides who a request is from its Authorization header, for the runtimes of
// one namespace. Its Index and Verifier are fed by informers (see StartSources).
type Authenticator struct {
	namespace string
	mode      servingv1alpha1.AuthMode
	now       func() time.Time
	keys      *Index
	tokens    *Verifier
}

// Option configures an Authenticator.
type Option func(*Authenticator)

// WithClock replaces the clock (CoarseNow by default), so tests can move time.
func WithClock(now func() time.Time) Option { return func(a *Authenticator) { a.now = now } }

// NewAuthenticator returns an authenticator for namespace's ApiKeys and tokens accepting the
// credentials of mode ("" is the CRD default, APIKeyOrJWT).
func NewAuthenticator(namespace string, mode servingv1alpha1.AuthMode, opts ...Option) (*Authenticator, error) {
	if namespace == "" {
		// An empty namespace would make the sources watch every namespace's ApiKeys.
		return nil, errors.New("auth: a namespace is required")
	}
	switch mode {
	case "":
		mode = servingv1alpha1.AuthModeAPIKeyOrJWT
	case servingv1alpha1.AuthModeAPIKey, servingv1alpha1.AuthModeJWT,
		servingv1alpha1.AuthModeAPIKeyOrJWT, servingv1alpha1.AuthModeNone:
	default:
		return nil, fmt.Errorf("unknown auth mode %q", mode)
	}
	a := &Authenticator{namespace: namespace, mode: mode, now: CoarseNow, keys: NewIndex(namespace)}
	for _, opt := range opts {
		opt(a)
	}
	a.tokens = NewVerifier(namespace, a.now)
	return a, nil
}

// Namespace is the namespace whose ApiKeys and tokens are accepted.
func (a *Authenticator) Namespace() string { return a.namespace }

// Mode is the accepted credential kind.
func (a *Authenticator) Mode() servingv1alpha1.AuthMode { return a.mode }

// Keys is the API key index to feed with ApiKey events.
func (a *Authenticator) Keys() *Index { return a.keys }

// Tokens is the JWT verifier to feed with the JWKS ConfigMap.
func (a *Authenticator) Tokens() *Verifier { return a.tokens }

// Authenticate returns the principal of an Authorization header value, or an *Error.
//
// A credential starting with KeyPrefix is an API key; one made of three dot-separated parts
// is a JWT; anything else is looked up as an API key too, since keys brought by users
// (existingSecretRef) may have any shape; an unknown one is refused as invalid_api_key.
func (a *Authenticator) Authenticate(header string) (*Principal, error) {
	if a.mode == servingv1alpha1.AuthModeNone {
		return anonymous, nil
	}
	cred, err := ParseAuthorization(header)
	if err != nil {
		return nil, err
	}
	var p *Principal
	var aerr *Error
	if looksLikeJWT(cred) {
		p, aerr = a.authenticateToken(cred)
	} else {
		p, aerr = a.authenticateKey(cred)
	}
	// Returned apart so a nil *Error never becomes a non-nil error.
	if aerr != nil {
		return nil, aerr
	}
	return p, nil
}

// looksLikeJWT is true for <header>.<payload>.<signature> that is not a HelixFlow key.
func looksLikeJWT(cred string) bool {
	return !strings.HasPrefix(cred, KeyPrefix) && strings.Count(cred, ".") == 2
}

func (a *Authenticator) authenticateKey(key string) (*Principal, *Error) {
	if a.mode == servingv1alpha1.AuthModeJWT {
		return nil, ErrAPIKeysNotAccepted
	}
	return a.keys.authenticateKey(key, a.now())
}

// authenticateToken verifies the token, then requires its ApiKey to be usable now: a token
// lives up to an hour, and suspending, deleting, expiring or rotating out the key must stop
// it as fast as it stops the key itself.
func (a *Authenticator) authenticateToken(token string) (*Principal, *Error) {
	if a.mode == servingv1alpha1.AuthModeAPIKey {
		return nil, ErrTokensNotAccepted
	}
	claims, name, err := a.tokens.check(token)
	if err != nil {
		return nil, err
	}
	rec := a.keys.record(name)
	now := a.now()
	if rec == nil || !rec.acceptsKeyID(claims.KeyID, now) {
		return nil, ErrTokenKeyRevoked
	}
	if refusal := keyRefusalError(rec.ak, now); refusal != nil {
		return nil, refusal
	}
	return tokenPrincipal(rec.base, claims), nil
}

// tokenPrincipal narrows the key's principal to the token: models and scopes are what both
// allow, so a token never outgrows its key, even if the key was narrowed after issuance.
func tokenPrincipal(base *Principal, c *Claims) *Principal {
	p := *base
	p.Method = MethodJWT
	p.KeyID = c.KeyID
	p.Scopes = intersect(base.Scopes, c.Scopes)
	// A token cannot mint tokens, whatever it claims.
	p.Scopes = slices.DeleteFunc(p.Scopes, func(s servingv1alpha1.Scope) bool { return s == servingv1alpha1.ScopeIssueTokens })
	if len(c.Models) > 0 {
		if base.AllModels {
			p.Models = slices.Clone(c.Models)
		} else {
			p.Models = intersect(base.Models, c.Models)
		}
		p.AllModels = false
	}
	return &p
}

// intersect returns the elements of a that are also in b, in a's order, in a new slice.
func intersect[T comparable](a, b []T) []T {
	out := make([]T, 0, len(a))
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
