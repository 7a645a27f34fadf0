package tokenservice

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

const (
	// MaxRequestBytes caps the token request body. The largest valid request (64 model names
	// of 128 characters, both scopes) is about 9 KiB; anything bigger gets 413 unparsed.
	MaxRequestBytes = 16 << 10
	// maxModels and maxModelNameLength mirror the ApiKey CRD's limits on spec.models.
	maxModels          = 64
	maxModelNameLength = 128
	// maxExpiresIn bounds expires_in before it becomes a Duration, so it cannot overflow; the
	// service's MaxTTL is checked later.
	maxExpiresIn = int64(365 * 24 * time.Hour / time.Second)
)

// TokenRequest is the optional body of POST /v1/tokens. Zero values mean "as the key allows".
type TokenRequest struct {
	// ExpiresIn is the requested lifetime; 0 means the service default.
	ExpiresIn time.Duration
	// Models narrows the token to these models.
	Models []string
	// Scopes narrows the token to these scopes.
	Scopes []servingv1alpha1.Scope
}

// wireRequest is the JSON form; ExpiresIn is a pointer to tell 0 (an error) from absent.
type wireRequest struct {
	ExpiresIn *int64                  `json:"expires_in"`
	Models    []string                `json:"models"`
	Scopes    []servingv1alpha1.Scope `json:"scopes"`
}

// ParseTokenRequest reads a token request body. An empty body is a request with every field
// absent. Unknown fields, trailing data, anything but one JSON object, and values out of range
// are errors whose messages are safe to return to the client.
func ParseTokenRequest(body []byte) (TokenRequest, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return TokenRequest{}, nil
	}
	if body[0] != '{' {
		return TokenRequest{}, errors.New("the request body must be a JSON object")
	}
	var w wireRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return TokenRequest{}, fmt.Errorf("the request body is not valid: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return TokenRequest{}, errors.New("the request body has data after the JSON object")
	}
	return w.validate()
}

func (w wireRequest) validate() (TokenRequest, error) {
	var r TokenRequest
	if w.ExpiresIn != nil {
		if *w.ExpiresIn < 1 || *w.ExpiresIn > maxExpiresIn {
			return r, errors.New("expires_in must be a positive number of seconds")
		}
		r.ExpiresIn = time.Duration(*w.ExpiresIn) * time.Second
	}
	if err := checkModels(w.Models); err != nil {
		return r, err
	}
	if err := checkScopes(w.Scopes); err != nil {
		return r, err
	}
	r.Models, r.Scopes = w.Models, w.Scopes
	return r, nil
}

func checkModels(models []string) error {
	if len(models) > maxModels {
		return fmt.Errorf("models lists more than %d models", maxModels)
	}
	seen := make(map[string]bool, len(models))
	for _, m := range models {
		if m == "" || len(m) > maxModelNameLength {
			return fmt.Errorf("models entries must be 1 to %d characters", maxModelNameLength)
		}
		if seen[m] {
			return fmt.Errorf("models lists %q twice", m)
		}
		seen[m] = true
	}
	return nil
}

func checkScopes(scopes []servingv1alpha1.Scope) error {
	seen := make(map[servingv1alpha1.Scope]bool, len(scopes))
	for _, s := range scopes {
		switch s {
		case servingv1alpha1.ScopeInference, servingv1alpha1.ScopeListModels:
		case servingv1alpha1.ScopeIssueTokens:
			return errors.New("a token cannot carry the IssueTokens scope")
		default:
			return errors.New("scopes may only contain Inference and ListModels")
		}
		if seen[s] {
			return fmt.Errorf("scopes lists %s twice", s)
		}
		seen[s] = true
	}
	return nil
}
