package usage

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

const (
	// TokenAudience is the audience of the ServiceAccount tokens runtimes report with. The
	// reconciler projects a token for it into each model pod, and the aggregator's TokenReview
	// asks for it: the API server does not take such a token, and the aggregator takes no
	// token meant for anything else.
	TokenAudience = "usage.serving.helixflow.io"

	// reviewCacheTTL is how long a reviewed token is taken without asking again (never past
	// its expiry): runtimes report every second, each with the token of its pod.
	reviewCacheTTL = time.Minute
	// reviewCacheSize bounds the tokens remembered: one per model pod reporting.
	reviewCacheSize = 4096
	// reviewsPerSecond and reviewsBurst bound the TokenReviews for tokens not in the cache:
	// anyone who reaches the port can send made-up tokens, and each would cost one. A
	// manager restart meets every pod's token at once; those over the burst are answered
	// UNAVAILABLE and resent.
	reviewsPerSecond = 50
	reviewsBurst     = 200
	// maxTokenBytes bounds the token taken from metadata (projected tokens are about 1 KB).
	maxTokenBytes = 16 << 10
	// serviceAccountPrefix starts the user name of a ServiceAccount token.
	serviceAccountPrefix = "system:serviceaccount:"
)

// reporterAuth authenticates the runtimes that report: each sends a ServiceAccount token for
// TokenAudience, the API server vouches for it (TokenReview), and the ServiceAccount's
// namespace is the only one whose ApiKeys the batch may charge. The namespace is the
// boundary: whoever may create pods in a namespace may run them as its model's ServiceAccount.
// Any ServiceAccount of the namespace is taken, not only a model's: the pods of a deleted
// InferenceModel flush their last usage after it is gone, and that usage must still count.
type reporterAuth struct {
	client client.Client // creates the TokenReviews
	// allowUnauthenticated takes batches without a token (runtimes from before tokens, during
	// an upgrade); a token that is sent is checked all the same.
	allowUnauthenticated bool
	reviews              *rate.Limiter
	now                  func() time.Time

	mu    sync.Mutex
	cache map[[sha256.Size]byte]reviewed
}

// reviewed is a token the API server vouched for.
type reviewed struct {
	namespace, serviceAccount string
	until                     time.Time
}

// errReviewsLimited means the TokenReviews of the moment are used up: the runtime resends.
var errReviewsLimited = errors.New("too many new tokens to review at once")

func newReporterAuth(c client.Client, allowUnauthenticated bool, now func() time.Time) *reporterAuth {
	return &reporterAuth{client: c, allowUnauthenticated: allowUnauthenticated, now: now,
		reviews: rate.NewLimiter(reviewsPerSecond, reviewsBurst), cache: map[[sha256.Size]byte]reviewed{}}
}

// authenticate returns the ServiceAccount of the caller of ctx, or the zero reviewed when it
// sent no token and that is allowed. Its errors are gRPC statuses.
func (ra *reporterAuth) authenticate(ctx context.Context) (reviewed, error) {
	token, err := bearerToken(ctx)
	if err != nil {
		return reviewed{}, status.Error(codes.Unauthenticated, err.Error())
	}
	if token == "" {
		if ra.allowUnauthenticated {
			return reviewed{}, nil
		}
		return reviewed{}, status.Error(codes.Unauthenticated, "no ServiceAccount token: runtimes report with a token for audience "+
			TokenAudience+" (runtime serve --usage-token-file)")
	}
	id, err := ra.review(ctx, token)
	if errors.Is(err, errReviewsLimited) {
		reviewsLimitedTotal.Inc()
		return reviewed{}, status.Errorf(codes.Unavailable, "usage not stored, send the batch again: %v", err)
	}
	return id, err
}

// bearerToken is the token of the call's "authorization: Bearer" metadata, "" without one.
func bearerToken(ctx context.Context) (string, error) {
	values := metadata.ValueFromIncomingContext(ctx, "authorization")
	switch {
	case len(values) == 0:
		return "", nil
	case len(values) > 1:
		return "", errors.New("more than one authorization value")
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	switch {
	case !ok || !strings.EqualFold(scheme, "Bearer") || token == "":
		return "", errors.New(`authorization must be "Bearer <ServiceAccount token>"`)
	case len(token) > maxTokenBytes:
		return "", fmt.Errorf("the token is over %d bytes", maxTokenBytes)
	}
	return token, nil
}

// review asks the API server who token belongs to, unless it asked within reviewCacheTTL.
// Refused tokens are not remembered: the limiter bounds what they cost.
func (ra *reporterAuth) review(ctx context.Context, token string) (reviewed, error) {
	sum := sha256.Sum256([]byte(token))
	now := ra.now()
	ra.mu.Lock()
	id, ok := ra.cache[sum]
	ra.mu.Unlock()
	if ok && now.Before(id.until) {
		return id, nil
	}
	if !ra.reviews.Allow() {
		return reviewed{}, errReviewsLimited
	}
	tr := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{TokenAudience}}}
	if err := ra.client.Create(ctx, tr); err != nil {
		return reviewed{}, status.Errorf(codes.Unavailable, "usage not stored, send the batch again: reviewing the token: %v", err)
	}
	id, err := reviewedIdentity(tr.Status)
	if err != nil {
		return reviewed{}, status.Error(codes.Unauthenticated, err.Error())
	}
	id.until = now.Add(reviewCacheTTL)
	if exp, ok := tokenExpiry(token); ok && exp.Before(id.until) {
		id.until = exp
	}
	ra.remember(sum, id, now)
	return id, nil
}

// reviewedIdentity is the ServiceAccount a TokenReview vouched for, for TokenAudience.
func reviewedIdentity(s authenticationv1.TokenReviewStatus) (reviewed, error) {
	if !s.Authenticated {
		// The API server's reason names what failed (expired, wrong audience, signature), never the token.
		reason := s.Error
		if reason == "" {
			reason = "not authenticated"
		}
		return reviewed{}, fmt.Errorf("the token is not valid for audience %s: %s", TokenAudience, reason)
	}
	// A reviewer that does not know audiences would vouch for a token of any.
	if !slices.Contains(s.Audiences, TokenAudience) {
		return reviewed{}, fmt.Errorf("the token was not confirmed for audience %s", TokenAudience)
	}
	ns, sa, ok := strings.Cut(strings.TrimPrefix(s.User.Username, serviceAccountPrefix), ":")
	if !strings.HasPrefix(s.User.Username, serviceAccountPrefix) || !ok || ns == "" || sa == "" {
		return reviewed{}, fmt.Errorf("%q is not a ServiceAccount: usage is reported with a model pod's ServiceAccount token", s.User.Username)
	}
	return reviewed{namespace: ns, serviceAccount: sa}, nil
}

// tokenExpiry reads the exp claim of a JWT the API server has just verified.
func tokenExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == 0 {
		return time.Time{}, false
	}
	return time.Unix(claims.Exp, 0), true
}

// remember caches id, first making room by dropping expired entries, then any one.
func (ra *reporterAuth) remember(sum [sha256.Size]byte, id reviewed, now time.Time) {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if len(ra.cache) >= reviewCacheSize {
		for k, v := range ra.cache {
			if !now.Before(v.until) {
				delete(ra.cache, k)
			}
		}
	}
	for k := range ra.cache {
		if len(ra.cache) < reviewCacheSize {
			break
		}
		delete(ra.cache, k)
	}
	ra.cache[sum] = id
}

// authorize refuses a batch with an entry outside the namespace of id (the zero id, a caller
// without a token where that is allowed, may report for any).
func authorize(id reviewed, b batch) error {
	if id.namespace == "" {
		return nil
	}
	for key := range b {
		if key.Namespace != id.namespace {
			return status.Errorf(codes.PermissionDenied, "ServiceAccount %s/%s may only report usage of ApiKeys in namespace %s, not of %s",
				id.namespace, id.serviceAccount, id.namespace, key.NamespacedName)
		}
	}
	return nil
}
