// Package apierror writes errors in the shape OpenAI clients parse:
// {"error": {"message": ..., "type": ..., "param": null, "code": ...}}. The manager's token
// service and the runtime data plane both answer with it, so SDKs surface the message.
package apierror

import (
	"encoding/json"
	"net/http"
)

// Error types, as OpenAI uses them; callers may pass others.
const (
	TypeInvalidRequest    = "invalid_request_error"
	TypeAuthentication    = "authentication_error"
	TypePermission        = "permission_error"
	TypeNotFound          = "not_found_error"
	TypeInsufficientQuota = "insufficient_quota"
	TypeRateLimit         = "rate_limit_error"
	TypeServer            = "server_error"
)

// Body is the JSON error envelope.
type Body struct {
	Error Detail `json:"error"`
}

// Detail is the error itself. Messages are for people and must never contain a credential.
type Detail struct {
	Message string `json:"message"`
	Type    string `json:"type"`
	// Param names the offending request field; null when none, as OpenAI sends it.
	Param *string `json:"param"`
	Code  string  `json:"code,omitempty"`
}

// Write sends status with the error body. Errors are never cached and never sniffed as HTML,
// since messages may quote request fields.
func Write(w http.ResponseWriter, status int, typ, code, message string) {
	WriteBody(w, status, Body{Error: Detail{Message: message, Type: typ, Code: code}})
}

// WriteBody sends status with b, for errors that name a Param.
func WriteBody(w http.ResponseWriter, status int, b Body) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	// The client may have gone away; there is nobody left to tell.
	_ = json.NewEncoder(w).Encode(b)
}
