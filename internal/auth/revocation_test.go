package auth

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/test/testenv"
)

const (
	revocationTrials = 10 // per kind: delete and suspend
	revocationBudget = time.Second
)

// TestRevocationLatency deletes or suspends an ApiKey while a goroutine authenticates with
// it in a loop, against an index fed by a real informer, and measures how long the key
// stays accepted after the API call is sent.
func TestRevocationLatency(t *testing.T) {
	e := startEnv(t)
	ns := newNamespace(t, e, "revocation")
	a, err := NewAuthenticator(ns, servingv1alpha1.AuthModeAPIKeyOrJWT)
	if err != nil {
		t.Fatal(err)
	}
	startSources(t, e, a)

	revocations := []struct {
		kind   string
		want   *Error
		revoke func(ak *servingv1alpha1.ApiKey) error
	}{
		{kind: "delete", want: ErrInvalidAPIKey, revoke: func(ak *servingv1alpha1.ApiKey) error {
			return e.Client.Delete(t.Context(), ak)
		}},
		{kind: "suspend", want: ErrKeySuspended, revoke: func(ak *servingv1alpha1.ApiKey) error {
			patch := client.MergeFrom(ak.DeepCopy())
			ak.Spec.Suspend = ptr.To(true)
			return e.Client.Patch(t.Context(), ak, patch)
		}},
	}
	var all []time.Duration
	for _, r := range revocations {
		var lat []time.Duration
		for i := range revocationTrials {
			ak, key := createKey(t, e, ns, fmt.Sprintf("%s-%d", r.kind, i))
			d := measureRevocation(t, a, "Bearer "+key, r.want, func() error { return r.revoke(ak) })
			if d >= revocationBudget {
				t.Errorf("%s trial %d: key accepted for %s after the revocation, want < %s", r.kind, i, d, revocationBudget)
			}
			lat = append(lat, d)
		}
		t.Logf("revocation latency, %s (%d trials): p50 %s, p99 %s", r.kind, len(lat), percentile(lat, 50), percentile(lat, 99))
		all = append(all, lat...)
	}
	t.Logf("revocation latency, all (%d trials): p50 %s, p99 %s, max %s",
		len(all), percentile(all, 50), percentile(all, 99), percentile(all, 100))
}

// measureRevocation waits until header is accepted, then runs revoke while a goroutine keeps
// authenticating, and returns the time from just before revoke to the first refusal.
func measureRevocation(t *testing.T, a *Authenticator, header string, want *Error, revoke func() error) time.Duration {
	t.Helper()
	eventually(t, func() error { _, err := a.Authenticate(header); return err })
	refused := make(chan error, 1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			if _, err := a.Authenticate(header); err != nil {
				refused <- err
				return
			}
			select {
			case <-stop:
				return
			default:
				// Leave the CPU to the API server and the informer on small machines.
				time.Sleep(100 * time.Microsecond)
			}
		}
	}()
	start := time.Now()
	if err := revoke(); err != nil {
		t.Fatalf("revoking: %v", err)
	}
	select {
	case err := <-refused:
		d := time.Since(start)
		if !errors.Is(err, want) {
			t.Errorf("refused with %v, want %v", err, want)
		}
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("key still accepted 10s after the revocation")
		return 0
	}
}

// percentile is the nearest-rank percentile p (0 < p <= 100) of ds.
func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := (p*len(s) + 99) / 100 // ceil(p/100 * n)
	return s[max(rank, 1)-1]
}

// TestSourcesFeedTokens checks the JWKS ConfigMap and ApiKeys reach the authenticator through
// the informers: a token verifies, stops with its ApiKey, and follows the published keys.
func TestSourcesFeedTokens(t *testing.T) {
	e := startEnv(t)
	ns := newNamespace(t, e, "tokens")
	a, err := NewAuthenticator(ns, servingv1alpha1.AuthModeJWT)
	if err != nil {
		t.Fatal(err)
	}
	startSources(t, e, a)
	signer := newECSigner(t, "ec-1")
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: JWKSConfigMapName},
		Data:       map[string]string{JWKSDataKey: string(jwksOf(t, signer)), IssuerDataKey: "https://issuer.test"},
	}
	mustCreate(t, e, cm)
	ak, _ := createKey(t, e, ns, "chat")

	claims := tokenClaims("chat", ak.Status.KeyID, time.Now())
	claims.Subject, claims.Audience, claims.Issuer = ns+"/chat", []string{Audience(ns)}, "https://issuer.test"
	header := "Bearer " + signer.sign(t, claims)
	eventually(t, func() error { _, err := a.Authenticate(header); return err })

	cm.Data[JWKSDataKey] = string(jwksOf(t, newECSigner(t, "ec-2")))
	if err := e.Client.Update(t.Context(), cm); err != nil {
		t.Fatal(err)
	}
	eventuallyRefused(t, a, header, ErrTokenUnknownKey)

	cm.Data[JWKSDataKey] = string(jwksOf(t, signer))
	if err := e.Client.Update(t.Context(), cm); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() error { _, err := a.Authenticate(header); return err })

	if err := e.Client.Delete(t.Context(), ak); err != nil {
		t.Fatal(err)
	}
	eventuallyRefused(t, a, header, ErrTokenKeyRevoked)
	if err := e.Client.Delete(t.Context(), cm); err != nil {
		t.Fatal(err)
	}
	eventuallyRefused(t, a, header, ErrTokenNotVerified)
}

func mustCreate(t *testing.T, e *testenv.Env, obj client.Object) {
	t.Helper()
	if err := e.Client.Create(t.Context(), obj); err != nil {
		t.Fatal(err)
	}
}

func eventuallyRefused(t *testing.T, a *Authenticator, header string, want *Error) {
	t.Helper()
	eventually(t, func() error {
		if _, err := a.Authenticate(header); !errors.Is(err, want) {
			return fmt.Errorf("got %w, want %s", err, want.Message)
		}
		return nil
	})
}
