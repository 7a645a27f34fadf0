// Package tokenservice is the manager's token service: clients exchange an API key that has
// the IssueTokens scope for a short-lived JWT (POST /v1/tokens), which runtimes verify
// offline against the public keys it also serves (GET /.well-known/jwks.json). Every manager
// replica serves it; it needs no leadership, only the ApiKey cache and the signing keys.
package tokenservice

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/go-logr/logr"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/apierror"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/internal/signing"
)

const (
	// TokensPath exchanges an API key for a JWT.
	TokensPath = "/v1/tokens"
	// JWKSPath serves the public signing keys.
	JWKSPath = "/.well-known/jwks.json"
	// DefaultBindAddress is where the manager serves the token service by default.
	DefaultBindAddress = ":8082"
	// DisabledAddress as the bind address turns the token service off (as for the metrics
	// and probe addresses of controller-runtime).
	DisabledAddress = "0"
	// DefaultTTL is a token's lifetime when the request does not ask for one.
	DefaultTTL = 15 * time.Minute
	// DefaultMaxTTL is the longest lifetime a request may ask for.
	DefaultMaxTTL = time.Hour

	// jwksMaxAge lets clients cache the JWKS briefly; a rotation publishes the new key a full
	// period before it matters to anyone holding the old set, so a minute is harmless.
	jwksMaxAge = "public, max-age=60"
	// Timeouts: requests are tiny, so slow clients are cut off early.
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 10 * time.Second
	idleTimeout       = 60 * time.Second
	shutdownTimeout   = 10 * time.Second
	// maxHeaderBytes leaves room for the capped Authorization header plus ordinary headers;
	// net/http answers 431 beyond it.
	maxHeaderBytes = 32 << 10
)

// KeyLookup finds ApiKeys by key hash; the manager implements it on its informer cache.
type KeyLookup interface {
	// ApiKeyByHash returns the ApiKey whose status.keyHash or a status.previousKeys[].keyHash
	// is h, or (nil, nil) when there is none. The token service checks the match itself.
	ApiKeyByHash(ctx context.Context, h auth.KeyHash) (*servingv1alpha1.ApiKey, error)
}

// Server is the token service. Zero-valued optional fields take the defaults (see
// NewServer); Lookup and Keys are required.
type Server struct {
	Lookup KeyLookup
	Keys   *signing.Store
	// Issuer is the iss claim; runtimes require the same value.
	Issuer string
	// DefaultTTL and MaxTTL bound token lifetimes; DefaultTTL above MaxTTL is lowered to it.
	DefaultTTL, MaxTTL time.Duration
	Now                func() time.Time
	Log                logr.Logger
	// Addr is where Start listens; DisabledAddress ("0") makes Start return at once.
	Addr string
}

// NewServer returns a Server with the defaults: issuer auth.DefaultIssuer, 15m default and
// 1h maximum lifetime, the wall clock, no logging.
func NewServer(lookup KeyLookup, keys *signing.Store, addr string) *Server {
	return &Server{Lookup: lookup, Keys: keys, Addr: addr}
}

// withDefaults is a copy of s with the zero fields filled in.
func (s *Server) withDefaults() *Server {
	c := *s
	if c.Issuer == "" {
		c.Issuer = auth.DefaultIssuer
	}
	if c.MaxTTL <= 0 {
		c.MaxTTL = DefaultMaxTTL
	}
	if c.DefaultTTL <= 0 {
		c.DefaultTTL = DefaultTTL
	}
	c.DefaultTTL = min(c.DefaultTTL, c.MaxTTL)
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Log.GetSink() == nil {
		c.Log = logr.Discard()
	}
	return &c
}

// Handler serves TokensPath and JWKSPath; anything else is a 404 in the JSON error shape.
// The configuration is read once, here.
func (s *Server) Handler() http.Handler {
	c := s.withDefaults()
	mux := http.NewServeMux()
	mux.HandleFunc(TokensPath, c.serveTokens)
	mux.HandleFunc(JWKSPath, c.serveJWKS)
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		apierror.Write(w, http.StatusNotFound, apierror.TypeNotFound, "not_found", "Unknown path.")
	})
	return mux
}

func (s *Server) serveJWKS(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, "GET, HEAD")
		return
	}
	jwks, err := s.Keys.JWKS()
	if err != nil {
		s.Log.Error(err, "JWKS unavailable")
		apierror.Write(w, http.StatusServiceUnavailable, apierror.TypeServer, "signing_key_unavailable", "No signing keys are loaded yet.")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", jwksMaxAge)
	_, _ = w.Write(jwks) // a failed write means the client left
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	apierror.Write(w, http.StatusMethodNotAllowed, apierror.TypeInvalidRequest, "method_not_allowed", "Method not allowed; use "+allow+".")
}

// NeedLeaderElection is false: every manager replica serves tokens (manager.Runnable).
func (s *Server) NeedLeaderElection() bool { return false }

// Start serves on s.Addr until ctx ends, then shuts down gracefully. With DisabledAddress it
// returns nil at once, so the manager can add it unconditionally.
func (s *Server) Start(ctx context.Context) error {
	switch s.Addr {
	case DisabledAddress:
		return nil
	case "":
		return errors.New("token service: no bind address (use \"0\" to disable it)")
	}
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("token service: listening on %s: %w", s.Addr, err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves on ln until ctx ends, then lets in-flight requests finish (up to 10s).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.Lookup == nil || s.Keys == nil {
		_ = ln.Close()
		return errors.New("token service: Lookup and Keys are required")
	}
	srv := &http.Server{
		Handler: s.Handler(), ReadHeaderTimeout: readHeaderTimeout, ReadTimeout: readTimeout,
		WriteTimeout: writeTimeout, IdleTimeout: idleTimeout, MaxHeaderBytes: maxHeaderBytes,
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	s.withDefaults().Log.Info("token service listening", "address", ln.Addr().String())
	select {
	case err := <-serveErr:
		return fmt.Errorf("token service: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("token service: shutting down: %w", err)
	}
	return nil
}
