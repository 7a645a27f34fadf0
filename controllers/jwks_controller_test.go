package controllers

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/internal/signing"
	"github.com/helixflow/helixflow/internal/usage"
	"github.com/helixflow/helixflow/test/testenv"
)

// publishedKids returns the key IDs in a namespace's JWKS ConfigMap, sorted.
func publishedKids(ns string) ([]string, error) {
	cm := &corev1.ConfigMap{}
	if err := get(cm, ns, auth.JWKSConfigMapName); err != nil {
		return nil, err
	}
	if cm.Data[auth.IssuerDataKey] != auth.DefaultIssuer {
		return nil, fmt.Errorf("issuer %q published, want %q", cm.Data[auth.IssuerDataKey], auth.DefaultIssuer)
	}
	keys, err := signing.ParseJWKS([]byte(cm.Data[auth.JWKSDataKey]))
	if err != nil {
		return nil, err
	}
	kids := make([]string, 0, len(keys))
	for kid := range keys {
		kids = append(kids, kid)
	}
	sort.Strings(kids)
	return kids, nil
}

// signingKids reads the key IDs, active first, from the manager's signing-key Secret.
func signingKids(t *testing.T) []string {
	t.Helper()
	sec := &corev1.Secret{}
	if err := get(sec, testConfig.Namespace, SigningKeySecretName); err != nil {
		t.Fatal(err)
	}
	ks, err := signing.DecodeSecretData(sec.Data)
	if err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range ks.Keys {
		kids = append(kids, k.ID)
	}
	return kids
}

func simpleModel(ns, name string) *servingv1alpha1.InferenceModel {
	return &servingv1alpha1.InferenceModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: servingv1alpha1.InferenceModelSpec{
			Model:    servingv1alpha1.ModelSource{URI: "hf://org/model"},
			Engine:   servingv1alpha1.EngineSpec{Type: servingv1alpha1.EngineVLLM},
			Replicas: ptr.To[int32](0),
		},
	}
}

func TestJWKSPublishedWhereModelsAreAndFollowsRotation(t *testing.T) {
	managerNamespace(t)
	ctx := context.Background()
	// Start from no keys, whatever an earlier test left.
	_ = env.Client.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: testConfig.Namespace, Name: SigningKeySecretName}})
	cfg := testConfig
	cfg.JWTRotationPeriod = 4 * time.Second
	startManagerWith(t, cfg, nil)

	withModel, without := newNamespace(t, nil), newNamespace(t, nil)
	model := simpleModel(withModel, "m")
	if err := env.Client.Create(ctx, model); err != nil {
		t.Fatal(err)
	}
	var first []string
	eventually(t, "JWKS in the model's namespace", func() error {
		kids, err := publishedKids(withModel)
		if err != nil {
			return err
		}
		if len(kids) != 1 {
			return fmt.Errorf("published %v, want one key", kids)
		}
		first = kids
		return nil
	})
	if got := signingKids(t); got[0] != first[0] {
		t.Errorf("published kid %v is not the active signing key %v", first, got)
	}
	if err := get(&corev1.ConfigMap{}, without, auth.JWKSConfigMapName); !apierrors.IsNotFound(err) {
		t.Errorf("JWKS ConfigMap in a namespace without models: %v", err)
	}
	// The private key never leaves the manager's namespace.
	if err := get(&corev1.Secret{}, withModel, SigningKeySecretName); !apierrors.IsNotFound(err) {
		t.Errorf("signing-key Secret found in a model namespace: %v", err)
	}

	// After the rotation period a new key is active and both are published: tokens signed by
	// the old key keep verifying until they expire.
	eventually(t, "rotated JWKS", func() error {
		kids, err := publishedKids(withModel)
		if err != nil {
			return err
		}
		if len(kids) < 2 || !slices.Contains(kids, first[0]) {
			return fmt.Errorf("published %v, want the new key beside %s", kids, first[0])
		}
		return nil
	})
	if active := signingKids(t)[0]; active == first[0] {
		t.Errorf("active key still %s after the rotation period", active)
	}

	// Someone deleting the ConfigMap gets it back; the last model going takes it away.
	if err := env.Client.Delete(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: withModel, Name: auth.JWKSConfigMapName}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "JWKS restored", func() error { _, err := publishedKids(withModel); return err })
	if err := env.Client.Delete(ctx, model); err != nil {
		t.Fatal(err)
	}
	eventually(t, "JWKS removed with the last model", func() error {
		if err := get(&corev1.ConfigMap{}, withModel, auth.JWKSConfigMapName); !apierrors.IsNotFound(err) {
			return fmt.Errorf("ConfigMap still there: %w", err)
		}
		return nil
	})
}

// TestJWKSNotRewrittenByMoreModels: every model created brings its namespace back to the
// JWKS publisher; a ConfigMap that is current is left alone (no write), and one someone
// edited is put back.
func TestJWKSNotRewrittenByMoreModels(t *testing.T) {
	managerNamespace(t)
	ctx := context.Background()
	startManager(t)
	ns := newNamespace(t, nil)
	if err := env.Client.Create(ctx, simpleModel(ns, "m0")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "JWKS in the model's namespace", func() error { _, err := publishedKids(ns); return err })
	cm := &corev1.ConfigMap{}
	if err := get(cm, ns, auth.JWKSConfigMapName); err != nil {
		t.Fatal(err)
	}
	before, patches := reconciles(t, "jwks"), restRequests(t, "PATCH")
	for i := 1; i <= 3; i++ {
		if err := env.Client.Create(ctx, simpleModel(ns, fmt.Sprintf("m%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	reconciledSince(t, before, "the new models' namespace reconciled")
	after := &corev1.ConfigMap{}
	if err := get(after, ns, auth.JWKSConfigMapName); err != nil {
		t.Fatal(err)
	}
	if after.ResourceVersion != cm.ResourceVersion {
		t.Errorf("JWKS ConfigMap rewritten (resourceVersion %s -> %s) though nothing in it changed", cm.ResourceVersion, after.ResourceVersion)
	}
	// Not even an apply that changes nothing (the models' children are created, not patched).
	if n := restRequests(t, "PATCH") - patches; n != 0 {
		t.Errorf("%v PATCH requests while models were added to a namespace whose JWKS is current, want 0", n)
	}

	after.Data[auth.JWKSDataKey] = `{"keys":[]}`
	if err := env.Client.Update(ctx, after); err != nil {
		t.Fatal(err)
	}
	eventually(t, "edited JWKS put back", func() error {
		got := &corev1.ConfigMap{}
		if err := get(got, ns, auth.JWKSConfigMapName); err != nil {
			return err
		}
		if got.Data[auth.JWKSDataKey] != cm.Data[auth.JWKSDataKey] {
			return fmt.Errorf("JWKS is %s", got.Data[auth.JWKSDataKey])
		}
		return nil
	})
}

// restRequests is how many requests of method the manager clients in this process sent.
func restRequests(t *testing.T, method string) float64 {
	t.Helper()
	return counterSum(t, "rest_client_requests_total", "method", method)
}

// The manager's usage aggregator makes its CA (the Secret stays in the manager's namespace)
// and serves TLS with a certificate for the host of --usage-endpoint; the CA's certificate is
// published beside the JWKS, where model pods mount it from. (A deleted CA coming back:
// internal/usage TestDeletedCAComesBack.)
func TestUsageCAPublished(t *testing.T) {
	managerNamespace(t)
	ctx := context.Background()
	_ = env.Client.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: testConfig.Namespace, Name: usage.CASecretName}})
	addr, err := testenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig
	cfg.UsageBindAddress = addr
	startManagerWith(t, cfg, nil)
	ns := newNamespace(t, nil)
	if err := env.Client.Create(ctx, simpleModel(ns, "m")); err != nil {
		t.Fatal(err)
	}
	published := func() ([]byte, error) {
		cm := &corev1.ConfigMap{}
		if err := get(cm, ns, auth.JWKSConfigMapName); err != nil {
			return nil, err
		}
		sec := &corev1.Secret{}
		if err := get(sec, testConfig.Namespace, usage.CASecretName); err != nil {
			return nil, err
		}
		want, _, err := usage.PublishedCA(sec.Data, time.Now())
		if err != nil {
			return nil, err
		}
		if got := cm.Data[usage.CAConfigMapKey]; got != string(want) {
			return nil, fmt.Errorf("published CA %q, want %q, from the CA Secret", got, want)
		}
		return want, nil
	}
	var ca []byte
	eventually(t, "the usage CA published in the model's namespace", func() (err error) { ca, err = published(); return err })
	if err := get(&corev1.Secret{}, ns, usage.CASecretName); !apierrors.IsNotFound(err) {
		t.Errorf("usage CA Secret found in a model namespace: %v", err)
	}
	first := &corev1.Secret{}
	if err := get(first, testConfig.Namespace, usage.CASecretName); err != nil {
		t.Fatal(err)
	}

	handshake := func(ca []byte, name string) error {
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(ca)
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: name, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13})
		if err == nil {
			_ = c.Close()
		}
		return err
	}
	host, _, _ := net.SplitHostPort(cfg.UsageEndpoint)
	if err := handshake(ca, host); err != nil {
		t.Errorf("TLS to the aggregator as %s with the published CA: %v", host, err)
	}
	if err := handshake(ca, "elsewhere.example"); err == nil {
		t.Error("the aggregator's certificate is valid for a host it does not serve")
	}

	// Deleted (to rotate it): until an aggregator has made the next CA, a minute later, the
	// published one stays, so model pods keep a CA file.
	before := reconciles(t, "jwks")
	if err := env.Client.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: testConfig.Namespace, Name: usage.CASecretName}}); err != nil {
		t.Fatal(err)
	}
	reconciledSince(t, before, "the namespace reconciled after the CA Secret went")
	cm := &corev1.ConfigMap{}
	if err := get(cm, ns, auth.JWKSConfigMapName); err != nil {
		t.Fatal(err)
	}
	if cm.Data[usage.CAConfigMapKey] != string(ca) {
		t.Errorf("published CA after its Secret was deleted: %q, want the last one kept", cm.Data[usage.CAConfigMapKey])
	}

	// The next CA, made here as an aggregator would at its next check: a deleted CA (say,
	// compromised) is trusted no more once the next one is published.
	src := usage.SecretCA{Client: env.Client, Reader: env.Client, Namespace: testConfig.Namespace}
	reset, err := src.Ensure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new CA published instead of the deleted one", func() error {
		got, err := published()
		if err == nil && string(got) != string(reset) {
			return fmt.Errorf("published %q, want the new CA alone", got)
		}
		return err
	})

	// A rotation (the annotation on the Secret): the new CA is published beside the previous,
	// which the replicas keep serving certificates from for a few minutes more.
	sec := &corev1.Secret{}
	if err := get(sec, testConfig.Namespace, usage.CASecretName); err != nil {
		t.Fatal(err)
	}
	sec.Annotations = map[string]string{usage.CARotateAnnotation: "now"}
	if err := env.Client.Update(ctx, sec); err != nil {
		t.Fatal(err)
	}
	both, err := src.Ensure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(both), string(reset)) || strings.Count(string(both), "BEGIN CERTIFICATE") != 2 {
		t.Fatalf("bundle after the rotation: %q, want the new CA and %q", both, reset)
	}
	eventually(t, "the new CA published beside the previous", func() error {
		got, err := published()
		if err == nil && string(got) != string(both) {
			return fmt.Errorf("published %q, want both CAs", got)
		}
		return err
	})

	// The first CA restored by hand from a backup, without the managed-by label the manager's
	// cache selects on: an aggregator's next check labels it, and so it is published.
	if err := env.Client.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: testConfig.Namespace, Name: usage.CASecretName}}); err != nil {
		t.Fatal(err)
	}
	restored := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: testConfig.Namespace, Name: usage.CASecretName}, Type: first.Type, Data: first.Data}
	if err := env.Client.Create(ctx, restored); err != nil {
		t.Fatal(err)
	}
	if got, err := src.Ensure(ctx); err != nil || string(got) != string(ca) {
		t.Fatalf("bundle of the restored CA Secret: %q, %v; want the restored CA %q", got, err, ca)
	}
	eventually(t, "the restored CA published", func() error {
		got, err := published()
		if err == nil && string(got) != string(ca) {
			return fmt.Errorf("published %q, want the restored CA", got)
		}
		return err
	})
}

func TestEndpointHost(t *testing.T) {
	for addr, want := range map[string]string{
		"helixflow-usage.helixflow-system.svc:9443":        "helixflow-usage.helixflow-system.svc",
		"dns:///helixflow-usage.helixflow-system.svc:9443": "helixflow-usage.helixflow-system.svc",
		"dns://10.96.0.10/helixflow-usage.svc:9443":        "helixflow-usage.svc",
		"10.0.0.7:9443":   "10.0.0.7",
		"[fd00::7]:9443":  "fd00::7",
		"helixflow-usage": "helixflow-usage",
	} {
		if got := endpointHost(addr); got != want {
			t.Errorf("endpointHost(%q) = %q, want %q", addr, got, want)
		}
	}

}

// reconciledSince waits for a JWKS reconcile after the count before (reconciles).
func reconciledSince(t *testing.T, before float64, what string) {
	t.Helper()
	eventually(t, what, func() error {
		if n := reconciles(t, "jwks"); n <= before {
			return fmt.Errorf("%v JWKS reconciles, want more than %v", n, before)
		}
		return nil
	})
}
