package usage

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/types"

	"github.com/helixflow/helixflow/internal/usage/usagev1"
)

const (
	// DefaultReportInterval is how often a Reporter sends what it recorded.
	DefaultReportInterval = time.Second
	// DefaultMinBackoff and DefaultMaxBackoff bound the wait between resends of a batch.
	DefaultMinBackoff = 200 * time.Millisecond
	DefaultMaxBackoff = 10 * time.Second
	// DefaultCallTimeout bounds one Report call; the aggregator answers after its next flush.
	DefaultCallTimeout = 30 * time.Second
	// reporterBatchKeys is how many keys a Reporter puts in one batch, well under MaxBatchKeys
	// and MaxRequestBytes.
	reporterBatchKeys = 1024
	// maxNameLength is the longest ApiKey name (a DNS subdomain); longer ones are not keys.
	maxNameLength = 253
	// maxNamespaceLength is the longest namespace name (a DNS label).
	maxNamespaceLength = 63
)

// Reporter sends the usage a runtime records to the manager's aggregator, exactly once:
// batches are numbered, sent one at a time in order, and each is resent unchanged until it is
// acknowledged. It implements the runtime's UsageRecorder (Record) and Flush.
type Reporter struct {
	id     string
	conn   *grpc.ClientConn
	client usagev1.UsageAggregatorClient

	interval, callTimeout  time.Duration
	minBackoff, maxBackoff time.Duration
	log                    logr.Logger
	dialOpts               []grpc.DialOption
	creds                  credentials.TransportCredentials // nil: plain gRPC

	// sendMu is held for each Report call: one batch on the wire at a time keeps them in
	// order, which the aggregator's "seq above the last one" rule relies on.
	sendMu sync.Mutex
	streak int // failed calls since the last success; guarded by sendMu

	mu       sync.Mutex
	pending  map[batchKey]*usagev1.KeyUsage // recorded, not in a batch yet
	inflight *usagev1.ReportRequest         // cut and maybe sent, not acknowledged
	seq      uint64                         // seq of the last batch cut
	failures uint64
	refused  uint64
}

// ReporterOption changes a Reporter's defaults.
type ReporterOption func(*Reporter)

// WithInterval sets how often recorded usage is sent (DefaultReportInterval).
func WithInterval(d time.Duration) ReporterOption {
	return func(r *Reporter) {
		if d > 0 {
			r.interval = d
		}
	}
}

// WithBackoff sets the first and the longest wait between resends of a batch.
func WithBackoff(minWait, maxWait time.Duration) ReporterOption {
	return func(r *Reporter) {
		if minWait > 0 && maxWait >= minWait {
			r.minBackoff, r.maxBackoff = minWait, maxWait
		}
	}
}

// WithCallTimeout bounds one Report call (DefaultCallTimeout).
func WithCallTimeout(d time.Duration) ReporterOption {
	return func(r *Reporter) {
		if d > 0 {
			r.callTimeout = d
		}
	}
}

// WithReporterLogger sets the logger (none by default).
func WithReporterLogger(l logr.Logger) ReporterOption {
	return func(r *Reporter) { r.log = l }
}

// WithDialOptions adds gRPC dial options after the transport credentials (WithServerCA, else
// plain gRPC).
func WithDialOptions(opts ...grpc.DialOption) ReporterOption {
	return func(r *Reporter) { r.dialOpts = append(r.dialOpts, opts...) }
}

// WithTokenFile sends the ServiceAccount token in path with every batch (the aggregator's
// WithReporterAuthentication), read again for each call: the kubelet replaces a projected
// token before it expires.
func WithTokenFile(path string) ReporterOption {
	return WithDialOptions(grpc.WithPerRPCCredentials(tokenFile(path)))
}

// tokenFile is the per-call credential of WithTokenFile.
type tokenFile string

func (f tokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b, err := os.ReadFile(string(f))
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "reading the usage token: %v", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return nil, status.Errorf(codes.Unauthenticated, "the usage token file %s is empty", string(f))
	}
	return map[string]string{"authorization": "Bearer " + token}, nil
}

// RequireTransportSecurity is false so that a runtime without WithServerCA (tests, a manager
// serving plain gRPC during an upgrade) still authenticates. Model pods connect with TLS: a
// token read off a plain connection would let its reader report as the pod until it expires
// (an hour at most), and nothing else, its audience being the aggregator's only.
func (tokenFile) RequireTransportSecurity() bool { return false }

// NewReporter returns a Reporter for the aggregator at endpoint (host:port, or any gRPC
// target) that reports as reporterID (NewReporterID). It connects lazily; run it with Run and
// end it with Flush, then Close.
func NewReporter(endpoint, reporterID string, opts ...ReporterOption) (*Reporter, error) {
	if reporterID == "" || len(reporterID) > MaxReporterIDLength {
		return nil, fmt.Errorf("usage reporter: the reporter ID must be 1 to %d characters", MaxReporterIDLength)
	}
	r := &Reporter{id: reporterID, interval: DefaultReportInterval, callTimeout: DefaultCallTimeout,
		minBackoff: DefaultMinBackoff, maxBackoff: DefaultMaxBackoff, log: logr.Discard(),
		pending: map[batchKey]*usagev1.KeyUsage{}}
	for _, o := range opts {
		o(r)
	}
	creds := r.creds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	dial := append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, r.dialOpts...)
	conn, err := grpc.NewClient(endpoint, dial...)
	if err != nil {
		return nil, fmt.Errorf("usage reporter: %w", err)
	}
	r.conn, r.client = conn, usagev1.NewUsageAggregatorClient(conn)
	return r, nil
}

// NewReporterID is a reporter ID unique to this process: the pod name (POD_NAME, else the
// host name) and a random nonce, so a restarted runtime starts a fresh sequence.
func NewReporterID() string {
	host := os.Getenv("POD_NAME")
	if host == "" {
		host, _ = os.Hostname() // an empty name still leaves the nonce unique
	}
	nonce := make([]byte, reporterNonceBytes)
	_, _ = crand.Read(nonce) // never fails (crypto/rand)
	return reporterIDPrefix(host) + hex.EncodeToString(nonce)
}

// reporterNonceBytes is the random part of a reporter ID, in bytes (twice as many hex digits).
const reporterNonceBytes = 8

// reporterIDPrefix is how the reporter IDs of the runtime in pod start: its name (cut to leave
// room for the nonce; the aggregator takes none cut) and "-".
func reporterIDPrefix(pod string) string {
	return pod[:min(len(pod), maxReportingPodName)] + "-"
}

// ID is the reporter's ID.
func (r *Reporter) ID() string { return r.id }

// Record adds one request's tokens to the next batch, for the ApiKey namespace/apiKey whose
// metadata.uid is uid (the aggregator charges that object only; "" charges any of the name).
// It only takes a mutex; negative counts are taken as zero, names that cannot be an ApiKey
// are ignored.
func (r *Reporter) Record(namespace, apiKey string, uid types.UID, promptTokens, completionTokens int64) {
	if namespace == "" || apiKey == "" || len(namespace) > maxNamespaceLength || len(apiKey) > maxNameLength || len(uid) > maxUIDLength {
		return
	}
	key := batchKey{types.NamespacedName{Namespace: namespace, Name: apiKey}, uid}
	r.mu.Lock()
	defer r.mu.Unlock()
	u := r.pending[key]
	if u == nil {
		u = &usagev1.KeyUsage{Namespace: namespace, ApiKey: apiKey, ApiKeyUid: string(uid)}
		r.pending[key] = u
	}
	u.PromptTokens = addCapped(u.PromptTokens, max(promptTokens, 0))
	u.CompletionTokens = addCapped(u.CompletionTokens, max(completionTokens, 0))
	u.Requests = addCapped(u.Requests, 1)
}

// Run sends what was recorded every interval until ctx ends; a batch that fails is resent with
// backoff without waiting for the next tick. It returns nil when ctx ends: call Flush then.
func (r *Reporter) Run(ctx context.Context) error {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := r.send(ctx, false); err != nil && ctx.Err() == nil {
				r.log.Error(err, "reporting usage")
			}
		}
	}
}

// Flush sends everything recorded so far and waits until it is acknowledged, resending with
// backoff, or until ctx ends.
func (r *Reporter) Flush(ctx context.Context) error {
	if err := r.send(ctx, true); err != nil {
		return fmt.Errorf("usage reporter: flushing: %w", err)
	}
	return nil
}

// Close releases the connection. Record and Flush must not be called after it.
func (r *Reporter) Close() error { return r.conn.Close() }

// ReporterStats is a snapshot of a Reporter's backlog, for metrics.
type ReporterStats struct {
	// PendingKeys is the number of keys recorded and not yet in a batch.
	PendingKeys int
	// Unacknowledged is true while a batch waits for its acknowledgement.
	Unacknowledged bool
	// Seq is the seq of the last batch cut.
	Seq uint64
	// Failures counts failed Report calls so far.
	Failures uint64
	// Refused counts batches the aggregator refused as invalid: their counts are lost.
	Refused uint64
}

// Stats returns the current backlog.
func (r *Reporter) Stats() ReporterStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return ReporterStats{PendingKeys: len(r.pending), Unacknowledged: r.inflight != nil, Seq: r.seq, Failures: r.failures, Refused: r.refused}
}

// send sends batches, each resent with capped exponential backoff until acknowledged. With
// all it goes on until nothing is left; otherwise it stops after the first batch it cut
// itself, so the interval paces the batches.
func (r *Reporter) send(ctx context.Context, all bool) error {
	wait := r.minBackoff
	for {
		sent, cut, err := r.sendOne(ctx)
		switch {
		case err == nil && (sent == 0 || (cut && !all)):
			return nil
		case err == nil:
			wait = r.minBackoff
			continue
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		case <-time.After(jitter(wait)):
		}
		wait = min(2*wait, r.maxBackoff)
	}
}

// sendOne sends the unacknowledged batch, or a new one cut from the pending counts when there
// is none. sent is the batch's seq (0 when there was nothing to send); cut says it was new.
func (r *Reporter) sendOne(ctx context.Context) (sent uint64, cut bool, err error) {
	r.sendMu.Lock()
	defer r.sendMu.Unlock()
	b, cut := r.current()
	if b == nil {
		return 0, false, nil
	}
	callCtx, cancel := context.WithTimeout(ctx, r.callTimeout)
	defer cancel()
	_, err = r.client.Report(callCtx, b)
	refused := status.Code(err) == codes.InvalidArgument
	if refused {
		// Resending cannot help and would block every later batch; Record keeps this from
		// happening, so it is a bug worth a loud log rather than a stuck reporter.
		r.log.Error(err, "usage batch refused as invalid; its counts are lost", "seq", b.GetSeq())
		r.mu.Lock()
		r.refused++
		r.mu.Unlock()
		err = nil
	}
	if err != nil {
		r.mu.Lock()
		r.failures++
		r.mu.Unlock()
		err = fmt.Errorf("sending usage batch %d: %w", b.GetSeq(), err)
		r.failed(err)
		return b.GetSeq(), cut, err
	}
	if r.streak > 0 && !refused {
		r.log.Info("usage reports get through again", "failedCalls", r.streak)
		r.streak = 0
	}
	r.acknowledged(b)
	return b.GetSeq(), cut, nil
}

// failed logs a failed call: the first of a streak and then the 2nd, 4th, 8th... so that an
// aggregator out of reach is seen in the log without a line per resend.
func (r *Reporter) failed(err error) {
	r.streak++
	if r.streak&(r.streak-1) == 0 {
		r.log.Error(err, "usage not reported yet; resending with backoff", "failedCalls", r.streak)
	}
}

// current returns the batch to send: the unacknowledged one, exactly as it was first sent, or
// a new one with the next seq holding up to reporterBatchKeys pending keys.
func (r *Reporter) current() (b *usagev1.ReportRequest, cut bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.inflight != nil {
		return r.inflight, false
	}
	if len(r.pending) == 0 {
		return nil, false
	}
	r.seq++
	b = &usagev1.ReportRequest{ReporterId: r.id, Seq: r.seq, Usage: make([]*usagev1.KeyUsage, 0, min(len(r.pending), reporterBatchKeys))}
	for key, u := range r.pending {
		if len(b.Usage) == reporterBatchKeys {
			break
		}
		b.Usage = append(b.Usage, u)
		delete(r.pending, key)
	}
	r.inflight = b
	return b, true
}

func (r *Reporter) acknowledged(b *usagev1.ReportRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.inflight == b {
		r.inflight = nil
	}
}

// jitter spreads resends of many runtimes over [d/2, d).
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}
