// Package serve is `runtime serve`: the OpenAI-compatible, authenticated, rate-limited and
// metered front that runs beside the engine in every model pod. HTTP (with SSE streaming),
// WebSocket and gRPC all go through one Exchange, so auth, limits and usage are the same
// whichever way a client comes in.
package serve

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/internal/usage"
)

// Options configure the runtime. The flags of `runtime serve` map onto them one to one.
type Options struct {
	// Model and Namespace name the InferenceModel served.
	Model, Namespace string
	// Upstream is the engine's base URL on localhost, e.g. http://127.0.0.1:8000.
	Upstream string
	// HTTPAddress, GRPCAddress and MetricsAddress are listen addresses; "0" disables one.
	HTTPAddress, GRPCAddress, MetricsAddress string
	// UsageEndpoint is the manager's usage aggregator (host:port); empty disables reporting.
	UsageEndpoint string
	// UsageTokenFile holds the ServiceAccount token (audience usage.TokenAudience) sent with
	// each usage batch, read again for each; empty sends none.
	UsageTokenFile string
	// UsageCAFile holds the CA certificates (PEM) the aggregator's TLS certificate is
	// verified with, for UsageServerName (default: the host of UsageEndpoint); empty
	// connects with plain gRPC.
	UsageCAFile, UsageServerName string
	// MaxBodyBytes caps request bodies (413 beyond).
	MaxBodyBytes int64
	// MaxHeaderBytes caps request headers (431 beyond).
	MaxHeaderBytes int
	// RequestTimeout bounds one engine call, streams included (504 when it passes first).
	RequestTimeout time.Duration
	// BodyTimeout bounds the time a client takes to send a request body (408, or the
	// connection closed, beyond); zero means no bound.
	BodyTimeout time.Duration
	// ShutdownTimeout is how long in-flight requests and streams may finish on shutdown.
	ShutdownTimeout time.Duration
	// WebSocket tunes GET /v1/stream (allowed origins, ping interval, idle timeout).
	WebSocket WebSocketOptions
	// UpstreamHealthPath is the engine's health endpoint, for /readyz.
	UpstreamHealthPath string
	// Kube reaches the API server for the InferenceModel, ApiKeys and JWKS.
	Kube *rest.Config
	// Usage receives per-key usage; nil builds the gRPC reporter for UsageEndpoint.
	Usage UsageRecorder
	// Now is the clock of the limits; nil is time.Now.
	Now func() time.Time
	Log logr.Logger
}

// DefaultOptions are the documented defaults of `runtime serve`.
func DefaultOptions() Options {
	return Options{
		Upstream:           "http://127.0.0.1:8000",
		HTTPAddress:        fmt.Sprintf(":%d", servingv1alpha1.RuntimeHTTPPort),
		GRPCAddress:        fmt.Sprintf(":%d", servingv1alpha1.RuntimeGRPCPort),
		MetricsAddress:     fmt.Sprintf(":%d", servingv1alpha1.RuntimeMetricsPort),
		MaxBodyBytes:       8 << 20,
		MaxHeaderBytes:     64 << 10,
		RequestTimeout:     10 * time.Minute,
		BodyTimeout:        time.Minute,
		ShutdownTimeout:    30 * time.Second,
		UpstreamHealthPath: "/health",
	}
}

// UsageRecorder takes the tokens each key used, for the manager's usage aggregator. uid is
// the ApiKey object's metadata.uid.
type UsageRecorder interface {
	Record(namespace, apiKey string, uid types.UID, promptTokens, completionTokens int64)
}

// Server is one runtime: the fronts, the auth caches and the engine client.
type Server struct {
	opts         Options
	upstreamBase string
	client       *http.Client // health checks
	up           *upstream    // engine calls
	auth         *auth.Authenticator
	sources      *auth.Sources
	model        *modelWatch
	limits       *Limiter
	metrics      *Metrics
	usage        UsageRecorder
	reporter     *usage.Reporter // when the server built the usage reporter itself
	health       engineHealth
	draining     atomic.Bool
	exchanges    atomic.Int64 // calls in Exchange: shutdown flushes usage once they are out
	ws           wsHub
	h1           *h1Front // the HTTP front, once listening

	// forgetLater runs a key ID's forgetting after the wait of forgetKeys (tests run it when
	// they choose).
	forgetLater func(func())
}

// New builds a server; Run starts it.
func New(opts Options) (*Server, error) {
	if opts.Model == "" || opts.Namespace == "" {
		return nil, errors.New("--model and --namespace are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log.GetSink() == nil {
		opts.Log = logr.Discard()
	}
	up, err := newUpstream(opts.Upstream)
	if err != nil {
		return nil, err
	}
	a, err := auth.NewAuthenticator(opts.Namespace, servingv1alpha1.AuthModeAPIKeyOrJWT, auth.WithClock(opts.Now))
	if err != nil {
		return nil, err
	}
	s := &Server{
		opts:         opts,
		upstreamBase: strings.TrimRight(opts.Upstream, "/"),
		client:       &http.Client{Transport: engineTransport()},
		up:           up,
		auth:         a,
		model:        newModelWatch(&modelState{name: opts.Model, mode: servingv1alpha1.AuthModeAPIKeyOrJWT}),
		metrics:      NewMetrics(),
		usage:        opts.Usage,
	}
	if s.usage == nil && opts.UsageEndpoint != "" {
		ropts := []usage.ReporterOption{usage.WithReporterLogger(opts.Log.WithName("usage"))}
		if opts.UsageTokenFile != "" {
			ropts = append(ropts, usage.WithTokenFile(opts.UsageTokenFile))
		}
		if opts.UsageCAFile != "" {
			ropts = append(ropts, usage.WithServerCA(opts.UsageCAFile, opts.UsageServerName))
		}
		rep, err := usage.NewReporter(opts.UsageEndpoint, usage.NewReporterID(), ropts...)
		if err != nil {
			return nil, err
		}
		s.usage, s.reporter = rep, rep
		s.metrics.watchReporter(rep.Stats)
	}
	s.limits = NewLimiter(opts.Now, func() int32 { return s.model.Load().ready })
	s.forgetLater = func(f func()) { time.AfterFunc(opts.RequestTimeout+time.Minute, f) }
	a.Keys().OnForget(s.forgetKeys)
	s.health = engineHealth{url: s.upstreamBase + opts.UpstreamHealthPath, client: s.client}
	return s, nil
}

// forgetKeys drops what the runtime keeps per key once the auth index has dropped an ApiKey
// (gone) or some of its key IDs, so that a namespace's key churn does not grow the runtime's
// memory and its metrics. The limiter's state of a deleted ApiKey goes at once. The series of
// the key IDs wait RequestTimeout plus a minute: calls admitted before still count into them
// until they end, and Prometheus has a minute more to scrape the final values. A key ID the
// ApiKey has again by then (the same key brought back) keeps its series.
func (s *Server) forgetKeys(name string, keyIDs []string, gone bool) {
	if gone {
		s.limits.forget(s.opts.Namespace, name)
	}
	if len(keyIDs) == 0 {
		return
	}
	s.forgetLater(func() {
		keys := s.auth.Keys()
		s.metrics.forgetKeyIDs(slices.DeleteFunc(keyIDs, func(id string) bool { return keys.HasKeyID(name, id) }))
	})
}

// engineTransport keeps connections to the engine open: every request goes to the same
// loopback address, and a new TCP connection per request would cost more than the proxying.
func engineTransport() *http.Transport {
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
		// Bodies pass through as the engine sent them.
		DisableCompression: true,
	}
}

// Metrics are the server's Prometheus metrics.
func (s *Server) Metrics() *Metrics { return s.metrics }

// Run serves until ctx ends, then drains: readiness fails, new connections are refused, and
// in-flight requests and streams get ShutdownTimeout to finish; usage is flushed last.
func (s *Server) Run(ctx context.Context) error {
	if s.opts.Kube != nil {
		if err := s.model.start(ctx, s.opts.Kube, s.opts.Namespace, s.opts.Model); err != nil {
			return err
		}
		src, err := auth.StartSources(ctx, s.opts.Kube, s.auth)
		if err != nil {
			return err
		}
		s.sources = src
	}
	servers, err := s.listen()
	if err != nil {
		return err
	}
	if s.reporter != nil {
		// The reporter outlives ctx: the last streams still record usage while they drain,
		// and shutdown flushes it once they have ended.
		rctx, stopReporter := context.WithCancel(context.WithoutCancel(ctx))
		go func() { _ = s.reporter.Run(rctx) }()
		defer func() { stopReporter(); _ = s.reporter.Close() }()
	}
	errs := make(chan error, len(servers))
	for _, srv := range servers {
		go func() { errs <- srv.serve() }()
	}
	// The addresses bound, not the flags: with port 0 (tests, harnesses) this line is how a
	// caller learns the port the kernel picked.
	kv := []any{"model", s.opts.Model, "namespace", s.opts.Namespace, "upstream", s.opts.Upstream}
	for _, srv := range servers {
		kv = append(kv, srv.name, srv.addr.String())
	}
	s.opts.Log.Info("runtime serving", kv...)
	select {
	case <-ctx.Done():
	case err := <-errs:
		s.shutdown(servers)
		return err
	}
	s.shutdown(servers)
	return nil
}

// shutdown stops every front within ShutdownTimeout, then flushes usage.
func (s *Server) shutdown(servers []server) {
	s.draining.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.ShutdownTimeout)
	defer cancel()
	done := make(chan struct{}, len(servers)+1)
	for _, srv := range servers {
		go func() { srv.stop(ctx); done <- struct{}{} }()
	}
	// WebSocket connections are hijacked: http.Server.Shutdown neither closes nor waits for them.
	go func() { s.ws.drain(ctx); done <- struct{}{} }()
	for range len(servers) + 1 {
		<-done
	}
	// Calls the fronts cut at the deadline are unwinding and still record their usage.
	for until := time.Now().Add(exchangeUnwind); s.exchanges.Load() > 0 && time.Now().Before(until); {
		time.Sleep(5 * time.Millisecond)
	}
	if f, ok := s.usage.(interface{ Flush(context.Context) error }); ok {
		// Its own time: a stream that ran to the drain's deadline has used up ctx, and its
		// tokens are among those still to report.
		fctx, cancel := context.WithTimeout(context.Background(), usageFlushTimeout)
		defer cancel()
		if err := f.Flush(fctx); err != nil {
			s.opts.Log.Error(err, "usage not fully reported before shutdown")
		}
	}
}

// exchangeUnwind bounds the wait for calls cut at the drain's deadline to record their
// usage, and usageFlushTimeout the last usage report after it; the pods' termination grace
// period (60 s) leaves room for both after --shutdown-timeout.
const (
	exchangeUnwind    = 5 * time.Second
	usageFlushTimeout = 10 * time.Second
)

// server is one listening front.
type server struct {
	name  string   // "http", "grpc" or "metrics"
	addr  net.Addr // where it listens
	serve func() error
	stop  func(context.Context)
}

// listen opens the HTTP, gRPC and metrics listeners ("0" skips one).
func (s *Server) listen() ([]server, error) {
	var out []server
	if s.opts.HTTPAddress != "0" {
		ln, err := net.Listen("tcp", s.opts.HTTPAddress)
		if err != nil {
			return nil, fmt.Errorf("listening on %s: %w", s.opts.HTTPAddress, err)
		}
		srv := s.httpFront(ln)
		srv.name = "http"
		out = append(out, srv)
	}
	if s.opts.MetricsAddress != "0" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.Registry(), promhttp.HandlerOpts{}))
		srv, err := s.httpServer(s.opts.MetricsAddress, mux)
		if err != nil {
			return nil, err
		}
		srv.name = "metrics"
		out = append(out, srv)
	}
	if s.opts.GRPCAddress != "0" {
		srv, err := s.grpcServer(s.opts.GRPCAddress)
		if err != nil {
			return nil, err
		}
		srv.name = "grpc"
		out = append(out, srv)
	}
	return out, nil
}

func (s *Server) httpServer(addr string, h http.Handler) (server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return server{}, fmt.Errorf("listening on %s: %w", addr, err)
	}
	srv := s.stdServer(h)
	return server{
		addr: ln.Addr(),
		serve: func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serving %s: %w", addr, err)
			}
			return nil
		},
		stop: func(ctx context.Context) {
			if err := srv.Shutdown(ctx); err != nil {
				_ = srv.Close()
			}
		},
	}, nil
}

// httpFront serves the HTTP API on ln: the fast path for non-streamed calls, in front of
// net/http for the rest (h1.go).
func (s *Server) httpFront(ln net.Listener) server {
	std := s.stdServer(s.Handler())
	// A hard cap on what net/http reads (its own 431 is plain text); headerCap refuses heads
	// over the real cap with an OpenAI 431 before that.
	if m := s.maxHeaderBytes(); m <= math.MaxInt/2 {
		std.MaxHeaderBytes = 2 * m
	}
	f := newH1Front(s, ln, std)
	return server{addr: ln.Addr(), serve: f.serve, stop: f.stop}
}

// stdServer is the net/http server of the HTTP and metrics ports.
func (s *Server) stdServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: h1ReadHeaderTimeout,
		IdleTimeout:       h1IdleTimeout,
		MaxHeaderBytes:    s.opts.MaxHeaderBytes,
		// No WriteTimeout: streams last as long as the generation; RequestTimeout bounds them.
	}
}

// maxHeaderBytes is the cap on a request head: --max-header-bytes, or net/http's default.
func (s *Server) maxHeaderBytes() int {
	if s.opts.MaxHeaderBytes > 0 {
		return s.opts.MaxHeaderBytes
	}
	return http.DefaultMaxHeaderBytes
}

// Ready reports whether the runtime can serve: its model and auth caches are synced and the
// engine answers its health check. The reason says what is missing.
func (s *Server) Ready(ctx context.Context) (bool, string) {
	switch {
	case s.draining.Load():
		return false, "shutting down"
	case s.opts.Kube != nil && !s.model.synced():
		return false, "InferenceModel not read yet"
	case s.opts.Kube != nil && !s.model.Load().known:
		return false, "InferenceModel " + s.opts.Model + " not found"
	case s.sources != nil && !s.sources.Synced():
		return false, "API keys and JWKS not synced yet"
	}
	if err := s.health.check(ctx); err != nil {
		return false, "engine not healthy: " + err.Error()
	}
	return true, ""
}

// engineHealth asks the engine's health endpoint, remembering a success for a second so a
// burst of probes (kubelet, load balancers) does not become a burst at the engine.
type engineHealth struct {
	url    string
	client *http.Client
	okAt   atomic.Int64
}

func (h *engineHealth) check(ctx context.Context) error {
	if time.Since(time.Unix(0, h.okAt.Load())) < time.Second {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
	if err != nil {
		return err
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return unwrapURLError(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %d", h.url, resp.StatusCode)
	}
	h.okAt.Store(time.Now().UnixNano())
	return nil
}

// Authenticator is the server's authenticator, which the informers (or, where the runtime
// is embedded without an API server, the embedder) feed with ApiKeys and the JWKS.
func (s *Server) Authenticator() *auth.Authenticator { return s.auth }

// SetInferenceModel sets what the runtime knows of its model (served name, auth mode, ready
// replicas), as the model informer does; for embedding without an API server.
func (s *Server) SetInferenceModel(m *servingv1alpha1.InferenceModel) { s.model.set(m) }
