package usage

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// testServerName is the host the tests' aggregators are certified for; the reporters dial
// 127.0.0.1 and verify that name, as `runtime serve --usage-server-name` does.
const testServerName = "helixflow-usage.test.svc"

// tlsAggregator serves an aggregator with TLS from a CA kept in a Secret of a namespace of
// its own, and returns its address and that namespace.
func tlsAggregator(t *testing.T, allowPlaintext bool, opts ...AggregatorOption) (addr, caNS string) {
	t.Helper()
	e := startEnv(t)
	caNS, addr = newNamespace(t), freeAddr(t)
	opts = append(opts, WithServingTLS(SecretCA{Client: e.Client, Reader: e.Client, Namespace: caNS}, []string{testServerName}, allowPlaintext))
	startAggregator(t, addr, opts...)
	return addr, caNS
}

// caFile writes the certificate of the CA in caNS, as the manager publishes it, to a file.
func caFile(t *testing.T, caNS string) string {
	t.Helper()
	sec := &corev1.Secret{}
	waitFor(t, "the aggregator's CA Secret", func() bool {
		return startEnv(t).Client.Get(t.Context(), client.ObjectKey{Namespace: caNS, Name: CASecretName}, sec) == nil
	})
	pem, _, err := PublishedCA(sec.Data, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, pem)
}

func writeFile(t *testing.T, b []byte) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// The aggregator speaks TLS with a certificate from the CA it keeps in a Secret; a runtime
// that verifies it with the published CA reports, and nothing else gets a batch in: not plain
// gRPC, not a runtime that trusts another CA or expects another name. A runtime whose CA file
// is not there yet keeps its counts until it is.
func TestAggregatorServesTLS(t *testing.T) {
	ns := newNamespace(t)
	key := createKey(t, ns, "k", nil)
	var logs logLines
	addr, caNS := tlsAggregator(t, false, WithAggregatorLogger(logs.logger(0)))

	// Until the CA file is there (the kubelet projects it once the manager has published
	// the CA), the runtime keeps its batch.
	missing := filepath.Join(t.TempDir(), "ca.crt")
	// (gRPC's own reconnection backoff, up to two minutes, is cut short for the test.)
	waiting := startReporter(t, addr, WithServerCA(missing, testServerName), WithBackoff(50*time.Millisecond, 100*time.Millisecond),
		WithDialOptions(grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 50 * time.Millisecond,
			Multiplier: 1.6, MaxDelay: 200 * time.Millisecond}, MinConnectTimeout: time.Second})))
	record(waiting, key, 1, 2)
	if err := flushWithin(waiting, 500*time.Millisecond); err == nil {
		t.Error("flushed before the CA file exists")
	}
	if s := waiting.Stats(); !s.Unacknowledged {
		t.Errorf("reporter without its CA file: %+v, want its batch kept", s)
	}

	// A plain-gRPC runtime is cut off at its first byte.
	refused := testutil.ToFloat64(plaintextRefusedTotal)
	plain := startReporter(t, addr, WithBackoff(2*time.Second, 4*time.Second))
	record(plain, key, 100, 100)
	if err := flushWithin(plain, time.Second); err == nil {
		t.Error("plain gRPC flushed, want refused")
	}
	checkUsage(t, map[types.NamespacedName]counts{key: {0, 0}})
	if !strings.Contains(logs.String(), "refused a plain-gRPC connection") {
		t.Errorf("nothing logged of the plain connection refused; logs:\n%s", &logs)
	}
	if testutil.ToFloat64(plaintextRefusedTotal) <= refused {
		t.Error("helixflow_usage_plaintext_connections_refused_total did not count the plain connection")
	}
	ca := caFile(t, caNS)

	other, err := newCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for name, opt := range map[string]ReporterOption{
		"another CA":   WithServerCA(writeFile(t, other.certPEM), testServerName),
		"another name": WithServerCA(ca, "helixflow-usage.elsewhere.svc"),
		"no PEM":       WithServerCA(writeFile(t, []byte("not a certificate\n")), testServerName),
	} {
		r := startReporter(t, addr, opt, WithBackoff(2*time.Second, 4*time.Second))
		record(r, key, 100, 100)
		if err := flushWithin(r, time.Second); err == nil || !strings.Contains(err.Error(), "handshake failed") {
			t.Errorf("%s: flush %v, want the TLS handshake failed", name, err)
		}
		if s := r.Stats(); !s.Unacknowledged {
			t.Errorf("%s: %+v, want the batch kept", name, s)
		}
	}
	checkUsage(t, map[types.NamespacedName]counts{key: {0, 0}})

	// The kubelet projects the published CA: the waiting runtime's batch goes through.
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(missing, pem, 0o600); err != nil {
		t.Fatal(err)
	}
	flush(t, waiting)
	r := startReporter(t, addr, WithServerCA(ca, testServerName))
	record(r, key, 3, 4)
	flush(t, r)
	checkUsage(t, map[types.NamespacedName]counts{key: {10, 2}})
}

// During an upgrade (allowPlaintext: --usage-allow-plaintext) runtimes from before
// TLS report over plain gRPC beside those that verify the aggregator.
func TestPlaintextAllowedDuringUpgrade(t *testing.T) {
	ns := newNamespace(t)
	key := createKey(t, ns, "k", nil)
	addr, caNS := tlsAggregator(t, true)
	plain := startReporter(t, addr)
	record(plain, key, 1, 1)
	flush(t, plain)
	verified := startReporter(t, addr, WithServerCA(caFile(t, caNS), testServerName))
	record(verified, key, 2, 2)
	flush(t, verified)
	checkUsage(t, map[types.NamespacedName]counts{key: {6, 2}})
}

// Replicas starting together make one CA between them: each that finds no Secret creates
// one, the losers read the winner's.
func TestReplicasShareTheCA(t *testing.T) {
	e := startEnv(t)
	caNS := newNamespace(t)
	src := SecretCA{Client: e.Client, Reader: e.Client, Namespace: caNS}
	const replicas = 4
	var wg sync.WaitGroup
	got := make([][32]byte, replicas)
	for i := range replicas {
		wg.Go(func() {
			ca, err := src.load(t.Context(), time.Now())
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = sha256.Sum256(ca.current.cert.Raw)
		})
	}
	wg.Wait()
	for i := range got {
		if got[i] != got[0] {
			t.Fatalf("replica %d has another CA than replica 0", i)
		}
	}
	sec := &corev1.Secret{}
	if err := e.Client.Get(t.Context(), client.ObjectKey{Namespace: caNS, Name: CASecretName}, sec); err != nil {
		t.Fatal(err)
	}
	if sec.Type != corev1.SecretTypeTLS || sec.Labels[servingv1alpha1.LabelManagedBy] != servingv1alpha1.ManagedByValue {
		t.Errorf("CA Secret type %q labels %v, want kubernetes.io/tls with the managed-by label (the manager caches only those)", sec.Type, sec.Labels)
	}
}

// A replica issues itself a serving certificate for its hosts at its first handshake (or
// refresh), keeps it while it is fresh, issues a new one two thirds through its life or when
// the CA Secret was replaced, and keeps serving with the one it has while the Secret cannot be
// read. Handshakes do not read the Secret.
func TestServingCertificates(t *testing.T) {
	e := startEnv(t)
	caNS := newNamespace(t)
	direct, err := client.NewWithWatch(e.Config, client.Options{Scheme: e.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	var failReads atomic.Bool
	var reads atomic.Int32
	reader := interceptor.NewClient(direct, interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			reads.Add(1)
			if failReads.Load() {
				return errors.New("the API server is away")
			}
			return c.Get(ctx, key, obj, opts...)
		},
	})
	clock := newFakeClock(time.Now())
	certs := &servingCerts{ca: SecretCA{Client: e.Client, Reader: reader, Namespace: caNS},
		hosts: []string{"usage.test.svc", "127.0.0.1"}, now: clock.Now, checkEvery: caCheckInterval}
	get := func() *tls.Certificate {
		t.Helper()
		c, err := certs.get(nil)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	refresh := func() *tls.Certificate {
		t.Helper()
		c, err := certs.refresh()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	secret := func() *corev1.Secret {
		t.Helper()
		sec := &corev1.Secret{}
		if err := e.Client.Get(t.Context(), client.ObjectKey{Namespace: caNS, Name: CASecretName}, sec); err != nil {
			t.Fatal(err)
		}
		return sec
	}
	currentCA := func() []byte {
		t.Helper()
		p, err := decodeCAPair(secret().Data)
		if err != nil {
			t.Fatal(err)
		}
		return p.current.certPEM
	}
	verifyWith := func(c *tls.Certificate, roots []byte, name string) error {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(roots)
		_, err := c.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: name, CurrentTime: clock.Now(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		return err
	}
	verify := func(c *tls.Certificate, name string) error { return verifyWith(c, currentCA(), name) }

	first := get()
	for _, name := range []string{"usage.test.svc", "127.0.0.1"} {
		if err := verify(first, name); err != nil {
			t.Errorf("serving certificate for %s: %v", name, err)
		}
	}
	if err := verify(first, "other.test.svc"); err == nil {
		t.Error("serving certificate valid for a host it was not issued for")
	}
	before := reads.Load()
	for range 3 {
		if get() != first {
			t.Error("a handshake got another certificate")
		}
	}
	if n := reads.Load() - before; n != 0 {
		t.Errorf("handshakes read the CA Secret %d times, want none (the refresh loop does)", n)
	}
	clock.add(caCheckInterval)
	if refresh() != first {
		t.Error("a fresh certificate was replaced although the CA is the same")
	}

	clock.add(2*servingValidity/3 + time.Minute)
	renewed := refresh()
	if renewed == first || get() != renewed {
		t.Fatal("the certificate was not renewed two thirds through its life")
	}
	if got, want := testutil.ToFloat64(servingCertExpiry), float64(renewed.Leaf.NotAfter.Unix()); got != want {
		t.Errorf("helixflow_usage_serving_certificate_expiration_timestamp_seconds = %v, want %v (the renewed certificate's)", got, want)
	}

	// A rotation (the annotation): the next check makes a new CA and keeps the old one as
	// the previous, and removes the annotation. Certificates still come from the old CA for
	// CAActivationDelay, also for a replica that starts meanwhile, while the runtimes learn
	// the new CA; then from the new one.
	oldCA := currentCA()
	sec := secret()
	sec.Annotations = map[string]string{CARotateAnnotation: "please"}
	if err := e.Client.Update(t.Context(), sec); err != nil {
		t.Fatal(err)
	}
	clock.add(caCheckInterval)
	if refresh() != renewed {
		t.Error("the certificate changed as soon as a new CA was made, before runtimes could know it")
	}
	newCA := currentCA()
	if string(newCA) == string(oldCA) {
		t.Fatal("the CA was not rotated")
	}
	if _, asked := secret().Annotations[CARotateAnnotation]; asked {
		t.Error("the rotation annotation is still on the Secret")
	}
	started := &servingCerts{ca: certs.ca, hosts: certs.hosts, now: clock.Now, checkEvery: caCheckInterval}
	early, err := started.get(nil)
	if err != nil {
		t.Fatal(err)
	}
	if verifyWith(early, oldCA, "usage.test.svc") != nil || verifyWith(early, newCA, "usage.test.svc") == nil {
		t.Error("a replica started during the activation delay serves a certificate from the new CA")
	}
	clock.add(CAActivationDelay)
	rotated := refresh()
	if rotated == renewed {
		t.Fatal("the certificate was not reissued from the new CA after the activation delay")
	}
	if err := verifyWith(rotated, newCA, "usage.test.svc"); err != nil {
		t.Errorf("certificate after the activation delay: %v", err)
	}

	// Deleted (a compromised CA): a new CA, used at once, with no previous one.
	if err := e.Client.Delete(t.Context(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: caNS, Name: CASecretName}}); err != nil {
		t.Fatal(err)
	}
	clock.add(caCheckInterval)
	reset := refresh()
	if reset == rotated || verify(reset, "usage.test.svc") != nil || verifyWith(reset, newCA, "usage.test.svc") == nil {
		t.Error("after the CA Secret was deleted, the certificate is not from a new CA alone")
	}
	if bundle, _, err := PublishedCA(secret().Data, clock.Now()); err != nil || strings.Count(string(bundle), "BEGIN CERTIFICATE") != 1 {
		t.Errorf("published after the CA Secret was deleted: %q (%v), want the new CA alone", bundle, err)
	}

	// The API server is away: the certificate in hand is kept while it is valid.
	failReads.Store(true)
	clock.add(caCheckInterval)
	if refresh() != reset || get() != reset {
		t.Error("the certificate changed while the CA could not be read")
	}
	clock.add(servingValidity)
	if _, err := certs.get(nil); err == nil {
		t.Error("an expired certificate was served while the CA could not be read")
	}
}

// A deleted CA Secret (how the CA is rotated) comes back as a new CA without any handshake
// to bring it: runtimes whose CA file went with it could not handshake.
func TestDeletedCAComesBack(t *testing.T) {
	e := startEnv(t)
	caNS := newNamespace(t)
	certs := &servingCerts{ca: SecretCA{Client: e.Client, Reader: e.Client, Namespace: caNS},
		hosts: []string{"usage.test.svc"}, now: time.Now, checkEvery: 20 * time.Millisecond}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); certs.keep(ctx) }()
	defer func() { cancel(); <-done }()
	old, err := os.ReadFile(caFile(t, caNS))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Client.Delete(t.Context(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: caNS, Name: CASecretName}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a new CA", func() bool {
		sec := &corev1.Secret{}
		if e.Client.Get(t.Context(), client.ObjectKey{Namespace: caNS, Name: CASecretName}, sec) != nil {
			return false
		}
		pem, _, err := PublishedCA(sec.Data, time.Now())
		return err == nil && string(pem) != string(old)
	})
}

// A CA Secret that cannot be decoded, or whose CA has less than a serving certificate's
// lifetime left, is replaced (by an update guarded by its resourceVersion).
func TestUnusableCAReplaced(t *testing.T) {
	e := startEnv(t)
	caNS := newNamespace(t)
	src := SecretCA{Client: e.Client, Reader: e.Client, Namespace: caNS}
	expiring, err := newCA(time.Now().Add(-caValidity + servingValidity/2))
	if err != nil {
		t.Fatal(err)
	}
	expiringData, err := caPair{current: expiring}.secretData()
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		data map[string][]byte
		// previous is the CA kept for the overlap, if any.
		previous *caKeys
	}{
		"undecodable": {data: map[string][]byte{corev1.TLSCertKey: []byte("not PEM"), corev1.TLSPrivateKeyKey: []byte("not PEM")}},
		"expiring":    {data: expiringData, previous: &expiring},
	} {
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: caNS, Name: CASecretName}, Type: corev1.SecretTypeTLS, Data: tc.data}
		_ = e.Client.Delete(t.Context(), sec)
		waitFor(t, "the old Secret gone", func() bool {
			return e.Client.Get(t.Context(), client.ObjectKeyFromObject(sec), &corev1.Secret{}) != nil
		})
		if err := e.Client.Create(t.Context(), sec); err != nil {
			t.Fatal(err)
		}
		p, err := src.load(t.Context(), time.Now())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if p.current.cert.NotAfter.Before(time.Now().Add(caValidity - time.Hour)) {
			t.Errorf("%s: CA valid until %v, want a new ten-year CA", name, p.current.cert.NotAfter)
		}
		got := &corev1.Secret{}
		if err := e.Client.Get(t.Context(), client.ObjectKeyFromObject(sec), got); err != nil {
			t.Fatal(err)
		}
		stored, err := decodeCAPair(got.Data)
		if err != nil || !stored.current.cert.Equal(p.current.cert) {
			t.Fatalf("%s: the Secret holds %v (%v), want the new CA", name, stored.current.cert, err)
		}
		switch {
		case tc.previous == nil && stored.previous != nil:
			t.Errorf("%s: a previous CA was kept", name)
		case tc.previous != nil && (stored.previous == nil || !stored.previous.cert.Equal(tc.previous.cert)):
			t.Errorf("%s: the replaced CA was not kept as the previous one", name)
		}
	}
}

// After a rotation the previous CA is published beside the new one for CAOverlap (and
// serving certificates come from it for CAActivationDelay); then the new one alone. Only
// one previous CA is kept, however quick the rotations.
func TestPublishedCA(t *testing.T) {
	now := time.Now()
	first, err := newCA(now.Add(-48 * time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	second, err := newCA(now)
	if err != nil {
		t.Fatal(err)
	}
	third, err := newCA(now.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	publish := func(p caPair, at time.Time) (bundle string, next time.Time) {
		t.Helper()
		data, err := p.secretData()
		if err != nil {
			t.Fatal(err)
		}
		b, next, err := PublishedCA(data, at)
		if err != nil {
			t.Fatal(err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(b) {
			t.Errorf("bundle %q does not parse as PEM certificates", b)
		}
		return string(b), next
	}
	has := func(bundle string, cas ...caKeys) bool {
		for _, ca := range cas {
			if !strings.Contains(bundle, string(ca.certPEM)) {
				return false
			}
		}
		return strings.Count(bundle, "BEGIN CERTIFICATE") == len(cas)
	}

	if b, next := publish(caPair{current: first}, now); !has(b, first) || !next.IsZero() {
		t.Errorf("a CA with no previous one: published %q, next %v; want it alone, for good", b, next)
	}
	rotated := caPair{current: second, previous: &first}
	b, next := publish(rotated, now.Add(time.Minute))
	if !has(b, second, first) || !next.Equal(second.made().Add(CAOverlap)) {
		t.Errorf("during the overlap: both CAs published: %v; the overlap ends %v, want %v", has(b, second, first), next, second.made().Add(CAOverlap))
	}
	if again, _ := publish(rotated, now.Add(2*time.Minute)); again != b {
		t.Error("the bundle changed during the overlap (every change rewrites the runtimes' files)")
	}
	if b, next := publish(rotated, second.made().Add(CAOverlap)); !has(b, second) || !next.IsZero() {
		t.Errorf("after the overlap: published %q, next %v; want the new CA alone", b, next)
	}
	if got := rotated.issuer(now.Add(time.Minute)); !got.cert.Equal(first.cert) {
		t.Error("serving certificates come from the new CA during the activation delay")
	}
	if got := rotated.issuer(second.made().Add(CAActivationDelay)); !got.cert.Equal(second.cert) {
		t.Error("serving certificates come from the old CA after the activation delay")
	}
	// A second rotation within the overlap: the first CA is trusted no more.
	if b, _ := publish(caPair{current: third, previous: &second}, now.Add(2*time.Minute)); !has(b, third, second) {
		t.Errorf("after two quick rotations: published %q, want the last two CAs only", b)
	}
}
