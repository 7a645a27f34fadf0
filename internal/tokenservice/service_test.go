package tokenservice

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/internal/signing"
)

// The manager adds the Server as a runnable on every replica.
var (
	_ manager.Runnable               = (*Server)(nil)
	_ manager.LeaderElectionRunnable = (*Server)(nil)
)

func TestJWKSEndpoint(t *testing.T) {
	f := newFixture(t, signing.RS256)
	rec := serve(f.handler, request{method: http.MethodGet, path: JWKSPath})
	if rec.Code != http.StatusOK || !strings.Contains(rec.Header().Get("Cache-Control"), "max-age=") ||
		rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("status %d headers %v", rec.Code, rec.Header())
	}
	want, _ := f.store.JWKS()
	if rec.Body.String() != string(want) {
		t.Fatalf("served %s, want the store's JWKS", rec.Body)
	}
	if rec := serve(f.handler, request{method: http.MethodHead, path: JWKSPath}); rec.Code != http.StatusOK {
		t.Fatalf("HEAD: %d", rec.Code)
	}
	rec = serve(f.handler, request{method: http.MethodPost, path: JWKSPath})
	if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != "GET, HEAD" {
		t.Fatalf("POST: %d Allow %q", rec.Code, rec.Header().Get("Allow"))
	}
}

// TestNoSigningKey: before the controller has loaded the keys, both endpoints say 503.
func TestNoSigningKey(t *testing.T) {
	key, ak := newKey(t, "ok")
	srv := NewServer(newLookup(t, ak), &signing.Store{}, DisabledAddress)
	h := srv.Handler()
	for _, r := range []request{{authz: "Bearer " + key}, {method: http.MethodGet, path: JWKSPath}} {
		rec := serve(h, r)
		if rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("%s %s: %d %s", r.method, r.path, rec.Code, rec.Body)
		}
		if strings.Contains(rec.Body.String(), key) {
			t.Fatal("key in body")
		}
	}
}

func TestLookupFailures(t *testing.T) {
	key, ak := newKey(t, "ok")
	lookup := newLookup(t, ak)
	lookup.err = errors.New("cache not synced")
	srv := NewServer(lookup, newStore(t, signing.ES256), DisabledAddress)
	if rec := serve(srv.Handler(), request{authz: "Bearer " + key}); rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("lookup error: %d %s", rec.Code, rec.Body)
	}
	// A lookup that returns a key whose hashes do not match must not be trusted.
	other, _ := newKey(t, "other")
	lookup.err = nil
	lookup.byHash[auth.HashKey(other)] = ak
	if rec := serve(srv.Handler(), request{authz: "Bearer " + other}); rec.Code != http.StatusUnauthorized {
		t.Fatalf("mismatched lookup: %d %s", rec.Code, rec.Body)
	}
}

// TestBodyTooLargeWithoutContentLength: a chunked body is cut off at the cap, not read whole.
func TestBodyTooLargeWithoutContentLength(t *testing.T) {
	f := newFixture(t, signing.ES256)
	body := io.MultiReader(strings.NewReader(`{"models":["`), strings.NewReader(strings.Repeat("m", 1<<20)))
	req, _ := http.NewRequest(http.MethodPost, TokensPath, body)
	req.Header.Set("Authorization", f.bearer("ok"))
	rec := newRecorderServe(f.handler, req)
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d", rec.Code)
	}
}

func TestServeLifecycle(t *testing.T) {
	f := newFixture(t, signing.ES256)
	srv := NewServer(f.lookup, f.store, "127.0.0.1:0")
	srv.Now = func() time.Time { return now }
	if srv.NeedLeaderElection() {
		t.Fatal("the token service must run on every replica")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()

	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+ln.Addr().String()+TokensPath, nil)
	req.Header.Set("Authorization", f.bearer("ok"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var tok TokenResponse
	err = json.NewDecoder(resp.Body).Decode(&tok)
	_ = resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || tok.AccessToken == "" {
		t.Fatalf("status %d, %v", resp.StatusCode, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

func TestStartDisabledAndInvalid(t *testing.T) {
	if err := NewServer(nil, nil, DisabledAddress).Start(t.Context()); err != nil {
		t.Fatalf("disabled: %v", err)
	}
	if err := NewServer(nil, nil, "").Start(t.Context()); err == nil {
		t.Fatal("empty address accepted")
	}
	if err := NewServer(nil, nil, "127.0.0.1:0").Start(t.Context()); err == nil {
		t.Fatal("missing Lookup and Keys accepted")
	}
}
