package usage

import (
	"context"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/test/testenv"
)

// The API server is started on first use (testenv.Lazy): unit tests, benchmarks and fuzz
// workers never pay for it.
var lazyEnv testenv.Lazy

func TestMain(m *testing.M) { os.Exit(lazyEnv.RunTests(m)) }

// startEnv returns the shared API server, starting it on first use.
func startEnv(t *testing.T) *testenv.Env { t.Helper(); return lazyEnv.Get(t) }

// Short intervals keep the tests fast; the logic does not depend on them.
const (
	testFlushInterval  = 50 * time.Millisecond
	testReportInterval = 20 * time.Millisecond
)

// newNamespace creates a namespace of its own for a test.
func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "usage-"}}
	if err := startEnv(t).Client.Create(t.Context(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// keyUIDs holds the uid of every ApiKey createKey made, as a runtime's cache would: usage is
// recorded for the object.
var keyUIDs sync.Map // types.NamespacedName -> types.UID

// createKey creates an ApiKey; envtest runs no controller, and the aggregator needs none.
func createKey(t *testing.T, ns, name string, quota *servingv1alpha1.TokenQuota) types.NamespacedName {
	t.Helper()
	ak := &servingv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: servingv1alpha1.ApiKeySpec{Quota: quota}}
	if err := startEnv(t).Client.Create(t.Context(), ak); err != nil {
		t.Fatal(err)
	}
	key := types.NamespacedName{Namespace: ns, Name: name}
	keyUIDs.Store(key, ak.UID)
	return key
}

// record records one request for key, charged to the object createKey made.
func record(r *Reporter, key types.NamespacedName, prompt, completion int64) {
	uid, _ := keyUIDs.Load(key)
	r.Record(key.Namespace, key.Name, uid.(types.UID), prompt, completion)
}

func getKey(t *testing.T, key types.NamespacedName) *servingv1alpha1.ApiKey {
	t.Helper()
	ak := &servingv1alpha1.ApiKey{}
	if err := startEnv(t).Client.Get(t.Context(), key, ak); err != nil {
		t.Fatal(err)
	}
	return ak
}

// counts are what a key should hold.
type counts struct{ tokens, requests int64 }

// checkUsage fails unless each key's status.usage holds exactly want.
func checkUsage(t *testing.T, want map[types.NamespacedName]counts) {
	t.Helper()
	for key, w := range want {
		u := getKey(t, key).Status.Usage
		var got counts
		if u != nil {
			got = counts{u.Tokens, u.Requests}
		}
		if got != w {
			t.Errorf("%s: usage %+v, want %+v", key, got, w)
		}
	}
}

// startAggregator serves a new Aggregator on addr until the returned stop (also a cleanup).
func startAggregator(t *testing.T, addr string, opts ...AggregatorOption) (a *Aggregator, stop func()) {
	t.Helper()
	opts = append([]AggregatorOption{WithFlushInterval(testFlushInterval)}, opts...)
	a = NewAggregator(startEnv(t).Client, addr, opts...)
	return a, serve(t, a, addr)
}

// serve runs a on addr until the returned stop (also a cleanup).
func serve(t *testing.T, a *Aggregator, addr string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Start(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("aggregator: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	waitListening(t, addr)
	return stop
}

// waitListening waits until something accepts connections on addr.
func waitListening(t *testing.T, addr string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false, nil //nolint:nilerr // not listening yet: poll again
		}
		_ = c.Close()
		return true, nil
	})
	if err != nil {
		t.Fatalf("nothing listens on %s: %v", addr, err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := testenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// startReporter runs a Reporter for addr with short intervals until the test ends.
func startReporter(t *testing.T, addr string, opts ...ReporterOption) *Reporter {
	t.Helper()
	opts = append([]ReporterOption{WithInterval(testReportInterval), WithBackoff(10*time.Millisecond, 100*time.Millisecond),
		WithCallTimeout(5 * time.Second)}, opts...)
	r, err := NewReporter(addr, NewReporterID(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = r.Close()
	})
	return r
}

// flush flushes r within 30s.
func flush(t *testing.T, r *Reporter) {
	t.Helper()
	if err := flushWithin(r, 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

// flushWithin flushes r and returns the error of its call (or the deadline's) within d.
func flushWithin(r *Reporter, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return r.Flush(ctx)
}

// recordMany records n requests spread over keys with known, varied token counts and adds
// them to want.
func recordMany(r *Reporter, keys []types.NamespacedName, n int, want map[types.NamespacedName]counts) {
	for i := range n {
		key := keys[i%len(keys)]
		prompt, completion := int64(i%17+1), int64(i%5)
		record(r, key, prompt, completion)
		c := want[key]
		want[key] = counts{c.tokens + prompt + completion, c.requests + 1}
	}
}

// logLines collects what a logger writes, a line per call, for a test to read.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

// logger writes to l, up to verbosity.
func (l *logLines) logger(verbosity int) logr.Logger {
	return funcr.New(func(prefix, args string) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.lines = append(l.lines, prefix+args)
	}, funcr.Options{Verbosity: verbosity})
}

// get returns the lines written so far.
func (l *logLines) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lines)
}

func (l *logLines) String() string { return strings.Join(l.get(), "\n") }
