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

	"github.com/go-logr/logr"
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
	// its expiry): runtimes report every second, each with the token of its pod. Asking
	// again notices a token revoked early (its pod or ServiceAccount deleted).
	reviewCacheTTL = time.Minute
	// reviewCacheSize bounds the tokens remembered: one per model pod reporting, two for a
	// minute after the kubelet replaces it.
	reviewCacheSize = 16384
	// reviewsPerSecond and reviewsBurst bound the TokenReviews: anyone who reaches the port
	// can send made-up tokens, and each would cost one. A manager restart meets every pod's
	// token at once; those over the burst are answered UNAVAILABLE and resent. A token
	// reviewed before is taken without asking again while the reviews are used up (or the
	// API server does not answer), until it expires: made-up tokens delay new tokens only.
	reviewsPerSecond = 50
	reviewsBurst     = 200
	// maxTokenBytes bounds the token taken from metadata (projected tokens are about 1 KB).
	maxTokenBytes = 16 << 10
	// serviceAccountPrefix starts the user name of a ServiceAccount token, and
	// serviceAccountsGroupPrefix the name of the group of its namespace.
	serviceAccountPrefix       = "system:serviceaccount:"
	serviceAccountsGroupPrefix = "system:serviceaccounts:"
	// podNameExtra is the user info the API server adds for a token bound to a pod (as the
	// kubelet's projected tokens are): the pod's name.
	podNameExtra = "authentication.kubernetes.io/pod-name"
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
	log                  logr.Logger
	// failedReviewLog keeps a down API server, or missing RBAC, to a log line a minute.
	failedReviewLog rate.Sometimes
	size            int // of cache: reviewCacheSize

	mu    sync.Mutex
	cache map[[sha256.Size]byte]reviewed
}

// reviewed is a token the API server vouched for: taken without asking again until fresh,
// and never after expires (the token's exp; fresh when unknown).
type reviewed struct {
	namespace, serviceAccount string
	pod                       string // the pod the token is bound to
	fresh, expires            time.Time
}

func newReporterAuth(c client.Client, allowUnauthenticated bool) *reporterAuth {
	return &reporterAuth{client: c, allowUnauthenticated: allowUnauthenticated, now: time.Now, log: logr.Discard(),
		reviews: rate.NewLimiter(reviewsPerSecond, reviewsBurst), failedReviewLog: rate.Sometimes{First: 1, Interval: time.Minute},
		size: reviewCacheSize, cache: map[[sha256.Size]byte]reviewed{}}
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
	return ra.review(ctx, token)
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
// Refused tokens are not remembered: the limiter bounds what they cost. Its errors are gRPC
// statuses.
func (ra *reporterAuth) review(ctx context.Context, token string) (reviewed, error) {
	sum := sha256.Sum256([]byte(token))
	now := ra.now()
	ra.mu.Lock()
	id, cached := ra.cache[sum]
	ra.mu.Unlock()
	if cached && now.Before(id.fresh) {
		return id, nil
	}
	valid := cached && now.Before(id.expires) // vouched for before, and not expired
	if !ra.reviews.Allow() {
		if valid {
			return id, nil
		}
		reviewsLimitedTotal.Inc()
		return reviewed{}, resendStatus("too many new tokens to review at once")
	}
	tr := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{TokenAudience}}}
	if err := ra.client.Create(ctx, tr); err != nil {
		ra.failedReviewLog.Do(func() {
			ra.log.Error(err, "reviewing usage reporters' tokens (TokenReview) failed; tokens not seen before are refused for now")
		})
		if valid {
			return id, nil
		}
		// The caller may have no valid token: the API server's words are for our log.
		return reviewed{}, resendStatus("the token cannot be checked now")
	}
	id, err := reviewedIdentity(tr.Status)
	if err != nil {
		ra.forget(sum)
		return reviewed{}, status.Error(codes.Unauthenticated, err.Error())
	}
	id.fresh = now.Add(reviewCacheTTL)
	id.expires = id.fresh
	if exp, ok := tokenExpiry(token); ok {
		id.expires = exp
		if exp.Before(id.fresh) {
			id.fresh = exp
		}
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
	if !strings.HasPrefix(s.User.Username, serviceAccountPrefix) || !ok || ns == "" || sa == "" ||
		!slices.Contains(s.User.Groups, serviceAccountsGroupPrefix+ns) {
		return reviewed{}, fmt.Errorf("%q is not a ServiceAccount: usage is reported with a model pod's ServiceAccount token", s.User.Username)
	}
	// Bound to a pod, the token also names the runtime's reporter IDs (authorize).
	pods := s.User.Extra[podNameExtra]
	if len(pods) != 1 || pods[0] == "" {
		return reviewed{}, errors.New("the token is not bound to a pod: usage is reported with the token the kubelet projects into a model pod")
	}
	return reviewed{namespace: ns, serviceAccount: sa, pod: pods[0]}, nil
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

// remember caches id, first making room by dropping expired entries, then any.
func (ra *reporterAuth) remember(sum [sha256.Size]byte, id reviewed, now time.Time) {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if _, ok := ra.cache[sum]; !ok && len(ra.cache) >= ra.size {
		for k, v := range ra.cache {
			if !now.Before(v.expires) {
				delete(ra.cache, k)
			}
		}
		for k := range ra.cache {
			if len(ra.cache) < ra.size {
				break
			}
			delete(ra.cache, k)
		}
	}
	ra.cache[sum] = id
}

// maxReportingPodName is the longest pod name a reporter ID holds whole: model pods' names
// (a Deployment's generated ones) are far shorter.
const maxReportingPodName = MaxReporterIDLength - 1 - 2*reporterNonceBytes

// isNonce says s is a reporter ID's nonce: 2*reporterNonceBytes lowercase hex digits.
func isNonce(s string) bool {
	return len(s) == 2*reporterNonceBytes && strings.Trim(s, "0123456789abcdef") == ""
}

// forget drops a token the API server no longer vouches for.
func (ra *reporterAuth) forget(sum [sha256.Size]byte) {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	delete(ra.cache, sum)
}

// authorize refuses a batch with an entry outside the namespace of id, or with a reporter ID
// that is not its pod's (NewReporterID's: the pod name, "-" and the nonce): pods of the
// namespace could otherwise send a runtime's ID with a higher seq, and its next batches would
// be skipped as duplicates. The nonce must be all that follows the pod name, or a pod named
// "chat-7d9f" could take the IDs of pod "chat-7d9f-x2abc". The zero id, a caller without a
// token where that is allowed, may report anything.
func authorize(id reviewed, reporterID string, b batch) error {
	if id.namespace == "" {
		return nil
	}
	// A name cut to fit (reporterIDPrefix) would give pods sharing its start one ID space.
	if len(id.pod) > maxReportingPodName {
		return status.Errorf(codes.PermissionDenied, "pod %s/%s: names over %d characters cannot report usage", id.namespace, id.pod, maxReportingPodName)
	}
	if nonce, ok := strings.CutPrefix(reporterID, id.pod+"-"); !ok || !isNonce(nonce) {
		return status.Errorf(codes.PermissionDenied, "the runtime of pod %s/%s reports as %q, not as its pod (its POD_NAME must be the pod's name)",
			id.namespace, id.pod, reporterID)
	}
	for key := range b {
		if key.Namespace != id.namespace {
			return status.Errorf(codes.PermissionDenied, "ServiceAccount %s/%s may only report usage of ApiKeys in namespace %s, not of %s",
				id.namespace, id.serviceAccount, id.namespace, key.NamespacedName)
		}
	}
	return nil
}
