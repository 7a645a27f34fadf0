package usage

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/helixflow/helixflow/internal/usage/usagev1"
)

const (
	// DefaultBindAddress is where the manager serves the aggregator by default
	// (--usage-bind-address).
	DefaultBindAddress = ":9443"
	// DisabledAddress as the bind address turns the aggregator off.
	DisabledAddress = "0"
	// DefaultFlushInterval is how often queued counts are written: each key is written at
	// most once per interval, whatever the number of runtimes reporting on it.
	DefaultFlushInterval = 2 * time.Second

	// shutdownTimeout bounds how long in-flight Reports may take to be stored on shutdown.
	shutdownTimeout = 10 * time.Second
	// writeTimeout bounds the writes of one key in one flush.
	writeTimeout = 10 * time.Second
	// maxWriteAttempts bounds the conflict retries of one key in one flush; the reporters
	// resend what is still unwritten.
	maxWriteAttempts = 5
	// parallelWrites is how many keys one flush writes at once.
	parallelWrites = 8
	// confirmReadsPerSecond and confirmReadsBurst bound the confirming reads (Aggregator's
	// confirms): far above what keys created or deleted while in use need.
	confirmReadsPerSecond = 20
	confirmReadsBurst     = 100
)

// Aggregator is the manager's usage aggregator: a gRPC UsageAggregator server and a
// manager.Runnable that every replica runs. Build it with NewAggregator; an Aggregator serves
// once (Start or Serve), a restart takes a new one.
type Aggregator struct {
	usagev1.UnimplementedUsageAggregatorServer

	client        client.Client
	apiReader     client.Reader // uncached; nil when client is uncached itself
	addr          string
	flushInterval time.Duration
	// confirms bounds the reads from the API server that confirm a key is gone (or another
	// object) before its usage is dropped: anyone who reaches the port can name keys that do
	// not exist, and each would cost one.
	confirms   *rate.Limiter
	gone       goneUIDs
	auth       *reporterAuth // nil: every batch is taken
	certs      *servingCerts // nil: plain gRPC
	now        func() time.Time
	log        logr.Logger
	serverOpts []grpc.ServerOption

	mu      sync.Mutex
	pending *round
}

// AggregatorOption changes an Aggregator's defaults.
type AggregatorOption func(*Aggregator)

// WithFlushInterval sets how often queued counts are written (DefaultFlushInterval).
func WithFlushInterval(d time.Duration) AggregatorOption {
	return func(a *Aggregator) {
		if d > 0 {
			a.flushInterval = d
		}
	}
}

// WithAPIReader sets the uncached reader used to re-read a key after a write conflict, or
// when the cache does not have it or has another object of its name (the manager's
// GetAPIReader()). Without it the client must read the API server itself.
func WithAPIReader(r client.Reader) AggregatorOption {
	return func(a *Aggregator) { a.apiReader = r }
}

// WithReporterAuthentication takes batches only from runtimes that send a ServiceAccount
// token for TokenAudience, which a TokenReview created through c vouches for, and only for
// ApiKeys of that ServiceAccount's namespace. With allowUnauthenticated, batches without a
// token are taken too (from runtimes that predate tokens, during an upgrade). Without this
// option every batch is taken.
func WithReporterAuthentication(c client.Client, allowUnauthenticated bool) AggregatorOption {
	return func(a *Aggregator) { a.auth = newReporterAuth(c, allowUnauthenticated) }
}

// WithClock sets the clock that decides quota windows and report times (time.Now).
func WithClock(now func() time.Time) AggregatorOption {
	return func(a *Aggregator) { a.now = now }
}

// WithAggregatorLogger sets the logger (none by default).
func WithAggregatorLogger(l logr.Logger) AggregatorOption {
	return func(a *Aggregator) { a.log = l }
}

// WithServerOptions adds gRPC server options (interceptors, credentials) after the
// aggregator's own message size cap.
func WithServerOptions(opts ...grpc.ServerOption) AggregatorOption {
	return func(a *Aggregator) { a.serverOpts = append(a.serverOpts, opts...) }
}

// NewAggregator returns an aggregator that reads ApiKeys with c (the manager's cached client)
// and writes their status with it, listening on addr (DisabledAddress turns it off).
func NewAggregator(c client.Client, addr string, opts ...AggregatorOption) *Aggregator {
	registerMetrics()
	a := &Aggregator{client: c, addr: addr, confirms: rate.NewLimiter(confirmReadsPerSecond, confirmReadsBurst), flushInterval: DefaultFlushInterval,
		now: time.Now, log: logr.Discard(), pending: newRound()}
	for _, o := range opts {
		o(a)
	}
	if a.auth != nil {
		a.auth.now, a.auth.log = a.now, a.log
	}
	if a.certs != nil {
		a.certs.now, a.certs.log = a.now, a.log
	}
	return a
}

// uncached is the reader of what the API server holds now.
func (a *Aggregator) uncached() client.Reader {
	if a.apiReader != nil {
		return a.apiReader
	}
	return a.client
}

// NeedLeaderElection is false: every replica serves, the per-reporter seqs make concurrent
// writers safe (manager.LeaderElectionRunnable).
func (a *Aggregator) NeedLeaderElection() bool { return false }

// Start listens on the bind address and serves until ctx ends (manager.Runnable). With
// DisabledAddress it returns nil at once, so the manager can add it unconditionally.
func (a *Aggregator) Start(ctx context.Context) error {
	switch a.addr {
	case DisabledAddress:
		return nil
	case "":
		return errors.New("usage aggregator: no bind address (use \"0\" to disable it)")
	}
	ln, err := net.Listen("tcp", a.addr)
	if err != nil {
		return fmt.Errorf("usage aggregator: listening on %s: %w", a.addr, err)
	}
	return a.Serve(ctx, ln)
}

// Serve serves on ln until ctx ends. Then it stops taking batches, lets those in flight be
// stored (up to 10s), and writes what is still queued.
func (a *Aggregator) Serve(ctx context.Context, ln net.Listener) error {
	srv := grpc.NewServer(append([]grpc.ServerOption{grpc.MaxRecvMsgSize(MaxRequestBytes)}, a.serverOpts...)...)
	usagev1.RegisterUsageAggregatorServer(srv, a)
	// The flush loop outlives ctx: in-flight Reports wait for it during the graceful stop.
	flushCtx, stopFlush := context.WithCancel(context.WithoutCancel(ctx))
	flushed := make(chan struct{})
	go func() { defer close(flushed); a.flushLoop(flushCtx) }()
	defer func() { stopFlush(); <-flushed }()

	if a.certs != nil {
		go a.certs.keep(ctx)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	a.log.Info("usage aggregator listening", "address", ln.Addr().String())
	select {
	case err := <-serveErr:
		return fmt.Errorf("usage aggregator: %w", err)
	case <-ctx.Done():
	}
	stopGracefully(srv, shutdownTimeout)
	return nil
}

// resendStatus is the answer to a batch not stored for now: UNAVAILABLE, which the runtime
// resends.
func resendStatus(reason string) error {
	return status.Error(codes.Unavailable, "usage not stored, send the batch again: "+reason)
}

// stopGracefully lets in-flight calls finish within timeout, then cuts them off.
func stopGracefully(srv *grpc.Server, timeout time.Duration) {
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		srv.Stop()
		<-done
	}
}

// Report queues the batch and answers once its counts are stored (usagev1.UsageAggregatorServer).
// The flush loop of Serve stores them: on an Aggregator that is not serving it waits for ctx.
func (a *Aggregator) Report(ctx context.Context, req *usagev1.ReportRequest) (*usagev1.ReportResponse, error) {
	var caller reviewed
	if a.auth != nil {
		var err error
		if caller, err = a.auth.authenticate(ctx); err != nil {
			result := resultUnauthenticated
			if status.Code(err) == codes.Unavailable {
				result = resultError
			}
			reportsTotal.WithLabelValues(result).Inc()
			a.logRefused(ctx, err)
			return nil, err
		}
	}
	b, err := parseBatch(req)
	if err != nil {
		reportsTotal.WithLabelValues(resultInvalid).Inc()
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := authorize(caller, req.GetReporterId(), b); err != nil {
		reportsTotal.WithLabelValues(resultForbidden).Inc()
		a.logRefused(ctx, err)
		return nil, err
	}
	r := a.enqueue(b)
	select {
	case <-r.done:
	case <-ctx.Done():
		reportsTotal.WithLabelValues(resultError).Inc()
		// The counts may still be stored; the resent batch is then a duplicate.
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	if err := r.errFor(b); err != nil {
		reportsTotal.WithLabelValues(resultError).Inc()
		return nil, resendStatus(err.Error())
	}
	reportsTotal.WithLabelValues(resultOK).Inc()
	return &usagev1.ReportResponse{}, nil
}

// logRefused logs a batch refused for who sent it, at verbosity 1 (each resend of it comes
// back; the metric counts them), with the caller's address to find a misconfigured runtime.
// The error never holds the token.
func (a *Aggregator) logRefused(ctx context.Context, err error) {
	from := ""
	if p, ok := peer.FromContext(ctx); ok {
		from = p.Addr.String()
	}
	a.log.V(1).Info("usage batch refused", "from", from, "reason", status.Convert(err).Message())
}

// enqueue adds a batch to the round the next flush writes, and returns that round.
func (a *Aggregator) enqueue(b batch) *round {
	a.mu.Lock()
	defer a.mu.Unlock()
	for key, e := range b {
		a.pending.entries[key.NamespacedName] = append(a.pending.entries[key.NamespacedName], e)
	}
	return a.pending
}

// flushLoop writes the queued counts every flushInterval until ctx ends, then once more.
func (a *Aggregator) flushLoop(ctx context.Context) {
	t := time.NewTicker(a.flushInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			a.flush(ctx)
		case <-ctx.Done():
			final, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
			a.flush(final)
			cancel()
			return
		}
	}
}

// flush writes every key of the pending round, parallelWrites at a time, and then releases
// the Reports waiting for it.
func (a *Aggregator) flush(ctx context.Context) {
	a.mu.Lock()
	r := a.pending
	if len(r.entries) == 0 {
		a.mu.Unlock()
		return
	}
	a.pending = newRound()
	a.mu.Unlock()
	defer close(r.done)

	sem := make(chan struct{}, parallelWrites)
	var wg sync.WaitGroup
	for key, entries := range r.entries {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := a.writeKey(ctx, key, entries); err != nil {
				if errors.Is(err, errConfirmsLimited) {
					a.log.V(1).Info("usage not stored yet: too many reads to confirm unknown keys", "apiKey", key.String())
				} else {
					a.log.Error(err, "storing usage", "apiKey", key.String())
				}
				r.fail(key, err)
			}
		})
	}
	wg.Wait()
}

// round is the counts queued between two flushes, and the signal that they were written.
type round struct {
	entries map[types.NamespacedName][]entry
	done    chan struct{} // closed once every key is written or failed

	mu   sync.Mutex
	errs map[types.NamespacedName]error
}

func newRound() *round {
	return &round{entries: map[types.NamespacedName][]entry{}, done: make(chan struct{})}
}

func (r *round) fail(key types.NamespacedName, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.errs == nil {
		r.errs = map[types.NamespacedName]error{}
	}
	r.errs[key] = err
}

// errFor is the first write error of the batch's keys; call it after done is closed.
func (r *round) errFor(b batch) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for key := range b {
		if err := r.errs[key.NamespacedName]; err != nil {
			return err
		}
	}
	return nil
}
