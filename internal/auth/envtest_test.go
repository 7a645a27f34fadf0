package auth

import (
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/test/testenv"
)

// The API server is started on first use (testenv.Lazy): unit tests, benchmarks and fuzz
// workers never pay for it.
var lazyEnv testenv.Lazy

func TestMain(m *testing.M) { os.Exit(lazyEnv.RunTests(m)) }

// startEnv returns the shared API server, starting it on first use.
func startEnv(t *testing.T) *testenv.Env { t.Helper(); return lazyEnv.Get(t) }

// newNamespace creates a namespace of its own for a test.
func newNamespace(t *testing.T, e *testenv.Env, prefix string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	if err := e.Client.Create(t.Context(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// createKey creates an ApiKey with a fresh key and writes its status as the controller would
// (envtest runs no controllers). It returns the object and the plaintext key.
func createKey(t *testing.T, e *testenv.Env, ns, name string) (*servingv1alpha1.ApiKey, string) {
	t.Helper()
	key, keyID := newKey(t)
	ak := &servingv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := e.Client.Create(t.Context(), ak); err != nil {
		t.Fatal(err)
	}
	ak.Status.KeyID, ak.Status.KeyHash = keyID, HashKey(key).String()
	if err := e.Client.Status().Update(t.Context(), ak); err != nil {
		t.Fatalf("writing ApiKey status: %v", err)
	}
	return ak, key
}

// startSources starts the informers for a and waits for them to sync.
func startSources(t *testing.T, e *testenv.Env, a *Authenticator) {
	t.Helper()
	src, err := StartSources(t.Context(), e.Config, a)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.WaitForSync(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// eventuallyTimeout is generous: it bounds waits on a loaded machine, it is not a figure.
const eventuallyTimeout = 10 * time.Second

// eventually polls f every few milliseconds until it returns nil or eventuallyTimeout passes.
func eventually(t *testing.T, f func() error) {
	t.Helper()
	deadline := time.Now().Add(eventuallyTimeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", eventuallyTimeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
