package apierror

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestWrite(t *testing.T) {
	rec := httptest.NewRecorder()
	Write(rec, http.StatusUnauthorized, TypeInvalidRequest, "invalid_api_key", "Incorrect API key provided.")
	if rec.Code != http.StatusUnauthorized {
		t.Fatalf("status %d", rec.Code)
	}
	for h, want := range map[string]string{
		"Content-Type": "application/json", "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
	} {
		if got := rec.Header().Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
	// The exact shape OpenAI SDKs parse, param included as null.
	var raw map[string]map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"message": "Incorrect API key provided.", "type": TypeInvalidRequest, "param": nil, "code": "invalid_api_key"}
	if len(raw["error"]) != len(want) {
		t.Fatalf("body %s", rec.Body)
	}
	for k, v := range want {
		if got, ok := raw["error"][k]; !ok || got != v {
			t.Errorf("%s = %v, want %v", k, got, v)
		}
	}
}

func TestWriteBodyParam(t *testing.T) {
	rec := httptest.NewRecorder()
	p := "expires_in"
	WriteBody(rec, http.StatusBadRequest, Body{Error: Detail{Message: "too long", Type: TypeInvalidRequest, Param: &p}})
	var b Body
	if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil || b.Error.Param == nil || *b.Error.Param != p {
		t.Fatalf("body %s: %v", rec.Body, err)
	}
}
