package serve

import (
	"sync"
	"time"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
)

// window is the period of the per-key rates (requests and tokens per minute), in the
// one-second buckets the limiter counts in.
const windowSeconds = 60

// slidingWindow counts what happened in the last minute, in one-second buckets: a ring of
// 61 (the current second and the 60 before it, so the window is never shorter than a
// minute and the limit is never exceeded in any minute). Unlike a token bucket, which lets a
// full minute's burst through on top of the steady rate, it holds the accepted amount in
// any minute to the limit; unlike a log of every request, its memory is constant per key.
type slidingWindow struct {
	buckets [windowSeconds + 1]int64
	head    int64 // unix second of the newest bucket
	sum     int64
}

func (w *slidingWindow) slot(sec int64) *int64 { return &w.buckets[sec%int64(len(w.buckets))] }

// advance moves the ring to now, dropping seconds that left the window.
func (w *slidingWindow) advance(now time.Time) {
	sec := now.Unix()
	gap := sec - w.head
	switch {
	case gap <= 0:
		return
	case gap >= int64(len(w.buckets)):
		w.buckets, w.sum = [windowSeconds + 1]int64{}, 0
	default:
		for s := w.head + 1; s <= sec; s++ {
			w.sum -= *w.slot(s)
			*w.slot(s) = 0
		}
	}
	w.head = sec
}

// count is the amount in the window ending now.
func (w *slidingWindow) count(now time.Time) int64 {
	w.advance(now)
	return w.sum
}

// add counts n at now.
func (w *slidingWindow) add(now time.Time, n int64) {
	w.advance(now)
	*w.slot(w.head) += n
	w.sum += n
}

// retryAfter is how long until the count falls below limit, if nothing new arrives.
func (w *slidingWindow) retryAfter(now time.Time, limit int64) time.Duration {
	w.advance(now)
	left := w.sum
	oldest := w.head - windowSeconds
	for s := oldest; s <= w.head; s++ {
		left -= *w.slot(s)
		if left < limit {
			// The second s leaves the window when the clock reaches s+61.
			return time.Unix(s+windowSeconds+1, 0).Sub(now)
		}
	}
	return time.Minute
}

// keyLimits is one key's state on this replica.
type keyLimits struct {
	mu       sync.Mutex
	requests slidingWindow
	tokens   slidingWindow
	inFlight int32
}

// Limiter enforces each key's rate limit on this replica. The ApiKey's limits apply to the
// key across the model's replicas; each replica enforces its share, the limit divided by the
// number of ready replicas (rounded up), so clients spread by the Service see the key's limit
// as a whole. Concurrency is divided the same way.
type Limiter struct {
	now      func() time.Time
	replicas func() int32
	mu       sync.Mutex
	keys     map[keyRef]*keyLimits
}

// keyRef names an ApiKey; a struct key, so a lookup allocates nothing.
type keyRef struct{ namespace, name string }

// NewLimiter returns a limiter; replicas reports the model's ready replicas.
func NewLimiter(now func() time.Time, replicas func() int32) *Limiter {
	return &Limiter{now: now, replicas: replicas, keys: map[keyRef]*keyLimits{}}
}

// share is this replica's part of a key-wide limit.
func (l *Limiter) share(limit int64) int64 {
	n := int64(max(l.replicas(), 1))
	return (limit + n - 1) / n
}

func (l *Limiter) state(p *auth.Principal) *keyLimits {
	id := keyRef{p.Namespace, p.Name}
	l.mu.Lock()
	defer l.mu.Unlock()
	k, ok := l.keys[id]
	if !ok {
		k = &keyLimits{}
		l.keys[id] = k
	}
	return k
}

// forget drops the state of the ApiKey namespace/name, which was deleted. Requests admitted
// before finish against the dropped state; an ApiKey created again under the name starts
// with empty windows, as a new key should.
func (l *Limiter) forget(namespace, name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.keys, keyRef{namespace, name})
}

// Admission is an admitted request; Done must be called once with the tokens it used.
type Admission struct {
	k    *keyLimits
	l    *Limiter
	rate *servingv1alpha1.KeyRateLimit
}

// Admit checks and counts one request of p against its key's limits.
func (l *Limiter) Admit(p *auth.Principal) (*Admission, *Failure) {
	rl := p.RateLimit
	if rl == nil || (rl.RequestsPerMinute == 0 && rl.TokensPerMinute == 0 && rl.MaxConcurrent == 0) {
		return &Admission{}, nil
	}
	k := l.state(p)
	now := l.now()
	k.mu.Lock()
	defer k.mu.Unlock()
	if rl.MaxConcurrent > 0 && int64(k.inFlight) >= l.share(int64(rl.MaxConcurrent)) {
		return nil, rateLimited("too many concurrent requests", time.Second)
	}
	if rl.RequestsPerMinute > 0 {
		limit := l.share(int64(rl.RequestsPerMinute))
		if k.requests.count(now) >= limit {
			return nil, rateLimited("requests per minute", k.requests.retryAfter(now, limit))
		}
	}
	if rl.TokensPerMinute > 0 {
		limit := l.share(rl.TokensPerMinute)
		if k.tokens.count(now) >= limit {
			return nil, rateLimited("tokens per minute", k.tokens.retryAfter(now, limit))
		}
	}
	k.requests.add(now, 1)
	k.inFlight++
	return &Admission{k: k, l: l, rate: rl}, nil
}

// Done releases the request's concurrency slot and charges the tokens it used (prompt plus
// completion) once they are known: a request is admitted while the key is under its token
// rate, and what it used counts against the requests after it.
func (a *Admission) Done(tokens int64) {
	if a.k == nil {
		return
	}
	now := a.l.now()
	a.k.mu.Lock()
	defer a.k.mu.Unlock()
	a.k.inFlight--
	if tokens > 0 {
		a.k.tokens.add(now, tokens)
	}
}
