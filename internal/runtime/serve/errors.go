package serve

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/helixflow/helixflow/internal/apierror"
	"github.com/helixflow/helixflow/internal/auth"
)

// Failure is why a call did not reach the engine or the engine failed it, in the shape every
// front (HTTP, WebSocket, gRPC) turns into its own error: an OpenAI error body, a WebSocket
// error message, a gRPC status. Messages never contain a credential.
type Failure struct {
	Status  int
	Type    string
	Code    string
	Message string
	// Reason labels the rejection metric (auth, model, scope, rate_limit, ...).
	Reason string
	// RetryAfter is sent as Retry-After on 429s.
	RetryAfter time.Duration
	// KeyID labels the rejection of a known key that authentication refused (suspended,
	// expired, quota); empty for an unknown credential.
	KeyID string
}

func (f *Failure) Error() string { return f.Message }

// fromAuth turns an authentication refusal into a Failure.
func fromAuth(err error) *Failure {
	var ae *auth.Error
	if !errors.As(err, &ae) {
		return &Failure{Status: http.StatusUnauthorized, Type: apierror.TypeAuthentication, Code: auth.CodeInvalidAPIKey, Message: "invalid credentials", Reason: "auth"}
	}
	reason := "auth"
	switch ae.Status {
	case http.StatusForbidden:
		reason = ae.Code
	case http.StatusTooManyRequests:
		reason = "quota"
	}
	return &Failure{Status: ae.Status, Type: ae.Type, Code: ae.Code, Message: ae.Message, Reason: reason, RetryAfter: ae.RetryAfter, KeyID: ae.KeyID}
}

func badRequest(code, format string, args ...any) *Failure {
	return &Failure{Status: http.StatusBadRequest, Type: apierror.TypeInvalidRequest, Code: code, Message: fmt.Sprintf(format, args...), Reason: "bad_request"}
}

func modelNotFound(model string) *Failure {
	return &Failure{Status: http.StatusNotFound, Type: apierror.TypeNotFound, Code: "model_not_found",
		Message: fmt.Sprintf("The model %.128q does not exist or is not served here.", model), Reason: "model_not_found"}
}

func tooLarge(limit int64) *Failure {
	return &Failure{Status: http.StatusRequestEntityTooLarge, Type: apierror.TypeInvalidRequest, Code: "request_too_large",
		Message: fmt.Sprintf("request body is larger than %d bytes", limit), Reason: "too_large"}
}

func headerTooLarge(limit int) *Failure {
	return &Failure{Status: http.StatusRequestHeaderFieldsTooLarge, Type: apierror.TypeInvalidRequest, Code: auth.CodeHeaderTooLarge,
		Message: fmt.Sprintf("request headers are larger than %d bytes", limit), Reason: "header_too_large"}
}

func rateLimited(what string, retry time.Duration) *Failure {
	return &Failure{Status: http.StatusTooManyRequests, Type: apierror.TypeRateLimit, Code: "rate_limit_exceeded",
		Message: "rate limit reached for the API key: " + what, Reason: "rate_limit", RetryAfter: retry}
}

func upstreamFailure(status int, format string, args ...any) *Failure {
	return &Failure{Status: status, Type: apierror.TypeServer, Code: "upstream_error", Message: fmt.Sprintf(format, args...), Reason: "upstream"}
}

var errNotReady = &Failure{Status: http.StatusServiceUnavailable, Type: apierror.TypeServer, Code: "not_ready",
	Message: "the model is not ready to serve yet", Reason: "not_ready"}

// body is f as an OpenAI error body.
func (f *Failure) body() []byte {
	data, _ := json.Marshal(apierror.Body{Error: apierror.Detail{Message: f.Message, Type: f.Type, Code: f.Code}})
	return data
}

// writeHTTP sends f as an OpenAI error body.
func (f *Failure) writeHTTP(w http.ResponseWriter) {
	if f.RetryAfter > 0 {
		w.Header().Set("Retry-After", retryAfterHeader(f.RetryAfter))
	}
	apierror.Write(w, f.Status, f.Type, f.Code, f.Message)
}

// GRPCCode is the gRPC status code of an HTTP-shaped failure.
func (f *Failure) GRPCCode() codes.Code {
	switch f.Status {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusRequestHeaderFieldsTooLarge:
		return codes.InvalidArgument
	case http.StatusUnauthorized:
		return codes.Unauthenticated
	case http.StatusForbidden:
		return codes.PermissionDenied
	case http.StatusNotFound:
		return codes.NotFound
	case http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case http.StatusServiceUnavailable, http.StatusBadGateway:
		return codes.Unavailable
	case http.StatusGatewayTimeout:
		return codes.DeadlineExceeded
	}
	return codes.Internal
}
