package tokenservice

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/apierror"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/internal/signing"
)

// MaxAuthorizationBytes caps the Authorization header (431 beyond), as in the runtime.
const MaxAuthorizationBytes = auth.MaxAuthorizationHeaderBytes

// TokenResponse is the body of a successful POST /v1/tokens (RFC 6749 section 5.1 names).
type TokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	// ExpiresIn is the token's lifetime in seconds.
	ExpiresIn int64 `json:"expires_in"`
}

// failure is a refusal on its way to the client. Messages are fixed strings or name a model
// or scope from the request body, never the presented key.
type failure struct {
	status              int
	typ, code, message  string
	param               string
	apiKey, apiKeyKeyID string // for the log line, when the key was identified
}

func (f *failure) write(w http.ResponseWriter) {
	if f.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="helixflow"`)
	}
	b := apierror.Body{Error: apierror.Detail{Message: f.message, Type: f.typ, Code: f.code}}
	if f.param != "" {
		b.Error.Param = &f.param
	}
	apierror.WriteBody(w, f.status, b)
}

// Refusals that carry nothing request-specific; fail copies them so callers may annotate.
var (
	errMissingKey = failure{status: http.StatusUnauthorized, typ: apierror.TypeAuthentication, code: "missing_api_key",
		message: "No API key provided: send it as Authorization: Bearer <key>."}
	errInvalidKey = failure{status: http.StatusUnauthorized, typ: apierror.TypeAuthentication, code: "invalid_api_key",
		message: "Incorrect API key provided."}
	errHeaderTooLarge = failure{status: http.StatusRequestHeaderFieldsTooLarge, typ: apierror.TypeInvalidRequest,
		code: "header_too_large", message: fmt.Sprintf("The Authorization header is longer than %d bytes.", MaxAuthorizationBytes)}
	errBodyTooLarge = failure{status: http.StatusRequestEntityTooLarge, typ: apierror.TypeInvalidRequest,
		code: "request_too_large", message: fmt.Sprintf("The request body is larger than %d bytes.", MaxRequestBytes)}
	errMediaType = failure{status: http.StatusUnsupportedMediaType, typ: apierror.TypeInvalidRequest,
		code: "unsupported_media_type", message: "The request body must be application/json."}
	errUnavailable = failure{status: http.StatusServiceUnavailable, typ: apierror.TypeServer,
		code: "service_unavailable", message: "The token service cannot issue tokens right now; retry shortly."}
)

// refusals maps auth.KeyRefusal to the answer for a known but unusable key.
var refusals = map[auth.Refusal]failure{
	auth.RefusalSuspended: {status: http.StatusUnauthorized, typ: apierror.TypeAuthentication, code: "key_suspended",
		message: "This API key is suspended."},
	auth.RefusalExpired: {status: http.StatusUnauthorized, typ: apierror.TypeAuthentication, code: "key_expired",
		message: "This API key has expired."},
	auth.RefusalQuotaExhausted: {status: http.StatusTooManyRequests, typ: apierror.TypeInsufficientQuota,
		code: "insufficient_quota", message: "This API key has used its token quota for the current window."},
}

func fail(f failure) *failure { return &f }

func (s *Server) serveTokens(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		methodNotAllowed(w, http.MethodPost)
		return
	}
	resp, f := s.issue(w, r)
	if f != nil {
		// Which ApiKey (when identified) and from where, never what was presented.
		s.Log.V(1).Info("token refused", "code", f.code, "apiKey", f.apiKey, "keyID", f.apiKeyKeyID, "remote", r.RemoteAddr)
		f.write(w)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	_ = json.NewEncoder(w).Encode(resp) // a failed write means the client left
}

// issue runs the exchange: authenticate the key, then turn the request into a signed token.
func (s *Server) issue(w http.ResponseWriter, r *http.Request) (*TokenResponse, *failure) {
	now := s.Now()
	ak, notAfter, f := s.authenticate(r, now)
	var resp *TokenResponse
	if f == nil {
		resp, f = s.exchange(w, r, ak, notAfter, now)
	}
	if f != nil && ak != nil {
		f.apiKey, f.apiKeyKeyID = ak.Namespace+"/"+ak.Name, ak.Status.KeyID
	}
	return resp, f
}

func (s *Server) exchange(w http.ResponseWriter, r *http.Request, ak *servingv1alpha1.ApiKey, notAfter, now time.Time) (*TokenResponse, *failure) {
	req, f := readTokenRequest(w, r)
	if f != nil {
		return nil, f
	}
	claims, f := s.claimsFor(ak, notAfter, req, now)
	if f != nil {
		return nil, f
	}
	return s.sign(ak, claims)
}

// authenticate finds the ApiKey for the presented key and checks it may issue tokens now.
// notAfter is when the key stops being accepted (zero: no limit); tokens end by then. The
// ApiKey is returned with a refusal too, when the key matched, so the refusal can be logged
// against it.
func (s *Server) authenticate(r *http.Request, now time.Time) (*servingv1alpha1.ApiKey, time.Time, *failure) {
	key, f := bearerKey(r.Header.Get("Authorization"))
	if f != nil {
		return nil, time.Time{}, f
	}
	h := auth.HashKey(key)
	ak, err := s.Lookup.ApiKeyByHash(r.Context(), h)
	if err != nil {
		s.Log.Error(err, "looking up API key")
		return nil, time.Time{}, fail(errUnavailable)
	}
	if ak == nil {
		return nil, time.Time{}, fail(errInvalidKey)
	}
	notAfter, ok := matchHash(ak, h, now)
	if !ok {
		return nil, time.Time{}, fail(errInvalidKey) // not this key's: say nothing about the ApiKey
	}
	return ak, earliest(notAfter, keyExpiry(ak)), checkUsable(ak, now)
}

// bearerKey reads "Authorization: Bearer <key>" with the runtime's parser, so a header the
// runtime accepts is accepted here and the other way round.
func bearerKey(header string) (string, *failure) {
	key, err := auth.ParseAuthorization(header)
	switch {
	case errors.Is(err, auth.ErrHeaderTooLarge):
		return "", fail(errHeaderTooLarge)
	case err != nil:
		return "", fail(errMissingKey)
	case len(key) > auth.MaxKeyLength:
		return "", fail(errInvalidKey) // not worth hashing: no stored key looks like this
	}
	return key, nil
}

// checkUsable applies the shared usability rule and requires the IssueTokens scope.
func checkUsable(ak *servingv1alpha1.ApiKey, now time.Time) *failure {
	if refusal := auth.KeyRefusal(ak, now); refusal != auth.RefusalNone {
		return fail(refusals[refusal])
	}
	if !auth.HasScope(ak.Spec.Scopes, servingv1alpha1.ScopeIssueTokens) {
		return &failure{status: http.StatusForbidden, typ: apierror.TypePermission, code: "missing_scope",
			message: "This API key does not have the IssueTokens scope."}
	}
	return nil
}

func keyExpiry(ak *servingv1alpha1.ApiKey) time.Time {
	if ak.Spec.ExpiresAt == nil {
		return time.Time{}
	}
	return ak.Spec.ExpiresAt.Time
}

// matchHash reports whether h is ak's current key or a previous key still in its grace
// period (whose end it returns), comparing in constant time: the lookup found ak by h, but
// the service does not rely on that.
func matchHash(ak *servingv1alpha1.ApiKey, h auth.KeyHash, now time.Time) (time.Time, bool) {
	presented := []byte(h.String())
	if subtle.ConstantTimeCompare([]byte(ak.Status.KeyHash), presented) == 1 {
		return time.Time{}, true
	}
	for _, p := range ak.Status.PreviousKeys {
		if subtle.ConstantTimeCompare([]byte(p.KeyHash), presented) == 1 && now.Before(p.ValidUntil.Time) {
			return p.ValidUntil.Time, true
		}
	}
	return time.Time{}, false
}

// earliest is the earlier of two instants, where zero means "no limit".
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// readTokenRequest reads the optional JSON body within MaxRequestBytes.
func readTokenRequest(w http.ResponseWriter, r *http.Request) (TokenRequest, *failure) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return TokenRequest{}, fail(errMediaType)
		}
	}
	if r.ContentLength > MaxRequestBytes {
		return TokenRequest{}, fail(errBodyTooLarge)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxRequestBytes))
	if err != nil {
		if _, tooLarge := errors.AsType[*http.MaxBytesError](err); tooLarge {
			return TokenRequest{}, fail(errBodyTooLarge)
		}
		return TokenRequest{}, badRequest("", "The request body could not be read.")
	}
	req, err := ParseTokenRequest(body)
	if err != nil {
		return TokenRequest{}, badRequest("", err.Error())
	}
	return req, nil
}

func badRequest(param, message string) *failure {
	return &failure{status: http.StatusBadRequest, typ: apierror.TypeInvalidRequest, code: "invalid_request", param: param, message: message}
}

func forbidden(param, code, message string) *failure {
	return &failure{status: http.StatusForbidden, typ: apierror.TypePermission, code: code, param: param, message: message}
}

// claimsFor builds the token's claims: the key's policy, narrowed as requested, ending no
// later than the key itself.
func (s *Server) claimsFor(ak *servingv1alpha1.ApiKey, notAfter time.Time, req TokenRequest, now time.Time) (auth.Claims, *failure) {
	iat := now.Truncate(time.Second) // JWT times are whole seconds
	exp, f := s.expiry(req.ExpiresIn, notAfter, iat)
	if f != nil {
		return auth.Claims{}, f
	}
	models, f := narrowModels(ak.Spec.Models, req.Models)
	if f != nil {
		return auth.Claims{}, f
	}
	scopes, f := narrowScopes(ak.Spec.Scopes, req.Scopes)
	if f != nil {
		return auth.Claims{}, f
	}
	return auth.Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer: s.Issuer, Subject: ak.Namespace + "/" + ak.Name, Audience: jwt.ClaimStrings{auth.Audience(ak.Namespace)},
			ExpiresAt: jwt.NewNumericDate(exp), IssuedAt: jwt.NewNumericDate(iat), ID: newJTI(),
		},
		KeyID: ak.Status.KeyID, Models: models, Scopes: scopes, RateLimit: ak.Spec.RateLimit.DeepCopy(),
	}, nil
}

// expiry is iat plus the requested or default lifetime, cut to the key's own end so a token
// never outlives the key (or previous key) it was exchanged for.
func (s *Server) expiry(requested time.Duration, notAfter, iat time.Time) (time.Time, *failure) {
	ttl := s.DefaultTTL
	if requested > 0 {
		if requested > s.MaxTTL {
			return time.Time{}, badRequest("expires_in", fmt.Sprintf("expires_in must be at most %d seconds.", int64(s.MaxTTL/time.Second)))
		}
		ttl = requested
	}
	exp := earliest(iat.Add(ttl), notAfter).Truncate(time.Second)
	if exp.Sub(iat) < time.Second {
		return time.Time{}, fail(refusals[auth.RefusalExpired])
	}
	return exp, nil
}

// narrowModels is the token's model list: the request's, which must lie within the key's
// list when the key has one; else the key's (empty: every model).
func narrowModels(allowed, requested []string) ([]string, *failure) {
	if len(requested) == 0 {
		return slices.Clone(allowed), nil
	}
	for _, m := range requested {
		if len(allowed) > 0 && !slices.Contains(allowed, m) {
			return nil, forbidden("models", "model_not_allowed", fmt.Sprintf("Model %q is not allowed for this API key.", m))
		}
	}
	return slices.Clone(requested), nil
}

// narrowScopes is the token's scopes: the request's, which must lie within the key's; else
// the key's. Never IssueTokens: a token cannot mint tokens.
func narrowScopes(keyScopes, requested []servingv1alpha1.Scope) ([]servingv1alpha1.Scope, *failure) {
	delegable := slices.DeleteFunc(slices.Clone(keyScopes), func(s servingv1alpha1.Scope) bool {
		return s == servingv1alpha1.ScopeIssueTokens
	})
	if len(requested) == 0 {
		return append([]servingv1alpha1.Scope{}, delegable...), nil
	}
	for _, sc := range requested {
		if !slices.Contains(delegable, sc) {
			return nil, forbidden("scopes", "scope_not_allowed", fmt.Sprintf("Scope %s is not allowed for this API key.", sc))
		}
	}
	return slices.Clone(requested), nil
}

// newJTI is 128 random bits, enough that token IDs never repeat.
func newJTI() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (it crashes the program instead)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func (s *Server) sign(ak *servingv1alpha1.ApiKey, claims auth.Claims) (*TokenResponse, *failure) {
	tok, err := s.Keys.Sign(claims)
	if err != nil {
		if !errors.Is(err, signing.ErrNoSigningKey) {
			s.Log.Error(err, "signing token")
		}
		return nil, fail(errUnavailable)
	}
	s.Log.V(1).Info("issued token", "apiKey", claims.Subject, "keyID", ak.Status.KeyID, "jti", claims.ID,
		"expiresAt", claims.ExpiresAt.Time)
	return &TokenResponse{AccessToken: tok, TokenType: "Bearer", ExpiresIn: int64(claims.ExpiresAt.Sub(claims.IssuedAt.Time) / time.Second)}, nil
}
