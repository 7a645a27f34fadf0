package auth

import (
	"fmt"
	"net/http"
	"time"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/apierror"
)

// Error codes (the "code" field of an OpenAI error body).
const (
	CodeInvalidAPIKey     = "invalid_api_key"
	CodeInvalidToken      = "invalid_token"
	CodeKeySuspended      = "key_suspended"
	CodeKeyExpired        = "key_expired"
	CodeInsufficientQuota = "insufficient_quota"
	CodeModelNotAllowed   = "model_not_allowed"
	CodeMissingScope      = "missing_scope"
	CodeHeaderTooLarge    = "header_too_large"
)

// Error is why a request is refused, in the shape the runtime writes as an OpenAI error body
// (apierror.Write(w, e.Status, e.Type, e.Code, e.Message)).
// Message never contains the presented credential: the messages are fixed strings (or name a
// model or scope), so an Error is safe to log and to return to the client.
//
// The refusals of Authenticate are shared package values, treated as read-only, so an
// unknown credential's refusal allocates nothing; a known key's refusal (suspended, expired,
// quota) is a copy that names the key ID. errors.Is(err, ErrQuotaExceeded) matches either.
type Error struct {
	// Status is the HTTP status: 401, 403, 429 or 431.
	Status int
	// Type is the OpenAI error type (apierror.Type*).
	Type string
	// Code is the OpenAI error code.
	Code string
	// Message is for people.
	Message string
	// RetryAfter, on a 429, is when asking again can succeed: the quota's window end.
	RetryAfter time.Duration
	// KeyID is the public ID of a known key that is refused (suspended, expired, quota), for
	// metrics; empty when the credential names no key.
	KeyID string
}

// Is matches a refusal by what the client sees (status, code, message), so that
// errors.Is(err, ErrQuotaExceeded) holds for a copy that carries its own RetryAfter.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && e != nil && t != nil && e.Status == t.Status && e.Code == t.Code && e.Message == t.Message
}

func (e *Error) Error() string { return e.Message }

func unauthorized(code, msg string) *Error {
	return &Error{Status: http.StatusUnauthorized, Type: apierror.TypeAuthentication, Code: code, Message: msg}
}

// Refusals of Authenticate.
var (
	ErrMissingCredentials = unauthorized(CodeInvalidAPIKey,
		"missing credentials: send Authorization: Bearer <API key or token>")
	ErrMalformedAuthorization = unauthorized(CodeInvalidAPIKey,
		"malformed Authorization header: expected Bearer <API key or token>")
	// ErrHeaderTooLarge is 431, as the security rules ask of oversize headers.
	ErrHeaderTooLarge = &Error{Status: http.StatusRequestHeaderFieldsTooLarge, Type: apierror.TypeInvalidRequest,
		Code: CodeHeaderTooLarge, Message: "Authorization header is too large"}
	ErrInvalidAPIKey = unauthorized(CodeInvalidAPIKey, "invalid API key")
	ErrKeySuspended  = unauthorized(CodeKeySuspended, "API key is suspended")
	ErrKeyExpired    = unauthorized(CodeKeyExpired, "API key has expired")
	ErrKeyRotatedOut = unauthorized(CodeKeyExpired, "API key was rotated and its grace period has ended")
	ErrQuotaExceeded = &Error{Status: http.StatusTooManyRequests, Type: apierror.TypeInsufficientQuota,
		Code: CodeInsufficientQuota, Message: "the API key's token quota for this window is used up"}

	ErrInvalidToken     = unauthorized(CodeInvalidToken, "invalid token")
	ErrTokenExpired     = unauthorized(CodeInvalidToken, "token has expired")
	ErrTokenUnknownKey  = unauthorized(CodeInvalidToken, "token is signed by an unknown key")
	ErrTokenAudience    = unauthorized(CodeInvalidToken, "token was not issued for this namespace")
	ErrTokenIssuer      = unauthorized(CodeInvalidToken, "token has an unexpected issuer")
	ErrTokenKeyRevoked  = unauthorized(CodeInvalidToken, "the API key the token was issued for no longer exists")
	ErrTokenNotVerified = unauthorized(CodeInvalidToken, "no token signing keys are known yet")
	// ErrTokensNotAccepted and ErrAPIKeysNotAccepted say the model's auth mode excludes the method.
	ErrTokensNotAccepted  = unauthorized(CodeInvalidToken, "this model does not accept tokens; use an API key")
	ErrAPIKeysNotAccepted = unauthorized(CodeInvalidAPIKey, "this model does not accept API keys; use a token")
)

// maxNameInMessage bounds the caller-supplied model name echoed in a message.
const maxNameInMessage = 128

// ErrModelNotAllowed is the 403 for a principal whose AllowsModel(model) is false.
func ErrModelNotAllowed(model string) *Error {
	return &Error{Status: http.StatusForbidden, Type: apierror.TypePermission, Code: CodeModelNotAllowed,
		Message: fmt.Sprintf("the credential is not allowed to use model %.*q", maxNameInMessage, model)}
}

// ErrScopeMissing is the 403 for a principal whose HasScope(scope) is false.
func ErrScopeMissing(scope servingv1alpha1.Scope) *Error {
	return &Error{Status: http.StatusForbidden, Type: apierror.TypePermission, Code: CodeMissingScope,
		Message: fmt.Sprintf("the credential lacks scope %.*q", maxNameInMessage, string(scope))}
}

// keyRefusalError is the error a client sees for ak at now, or nil when ak is usable. It
// names the key's ID (for metrics), and a quota refusal says when the quota's window ends.
func keyRefusalError(ak *servingv1alpha1.ApiKey, now time.Time) *Error {
	r := KeyRefusal(ak, now)
	if r == RefusalNone {
		return nil
	}
	e := *refusalError(r)
	e.KeyID = ak.Status.KeyID
	if r == RefusalQuotaExhausted {
		e.RetryAfter = QuotaWindowEnd(ak.Spec.Quota.Window, now).Sub(now)
	}
	return &e
}

// refusalError maps the shared usability rule to the error a client sees.
func refusalError(r Refusal) *Error {
	switch r {
	case RefusalNone:
		return nil
	case RefusalSuspended:
		return ErrKeySuspended
	case RefusalExpired:
		return ErrKeyExpired
	case RefusalQuotaExhausted:
		return ErrQuotaExceeded
	}
	// A refusal this code does not know yet still refuses.
	return ErrInvalidAPIKey
}
