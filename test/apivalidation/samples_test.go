package apivalidation

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// Every sample in config/samples is accepted as written, and defaults fill in what it omits.
func TestSamplesAccepted(t *testing.T) {
	ctx := context.Background()
	files, err := filepath.Glob(filepath.Join(env.RepoRoot, "config", "samples", "serving_*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			obj := &unstructured.Unstructured{}
			if err := yaml.Unmarshal(data, &obj.Object); err != nil {
				t.Fatalf("parsing: %v", err)
			}
			kinds[obj.GetKind()] = true
			status, hasStatus := obj.Object["status"]
			if namespaced(t, obj) {
				obj.SetNamespace(newNamespace(t))
			}
			if err := env.Client.Create(ctx, obj); err != nil {
				t.Fatalf("sample rejected: %v", err)
			}
			t.Cleanup(func() { _ = env.Client.Delete(ctx, obj) })
			if hasStatus {
				// Status is a subresource: only a status write stores it (as the probe does).
				obj.Object["status"] = status
				if err := env.Client.Status().Update(ctx, obj); err != nil {
					t.Fatalf("sample status rejected: %v", err)
				}
			}
		})
	}
	for _, k := range []string{"GPUPool", "GPUNode", "InferenceModel", "ApiKey"} {
		if !kinds[k] {
			t.Errorf("config/samples has no %s sample", k)
		}
	}
}

// Defaults are part of the API: a minimal object comes back with them filled in.
func TestDefaults(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	im := &servingv1alpha1.InferenceModel{
		ObjectMeta: metav1.ObjectMeta{Name: "defaults", Namespace: ns},
		Spec: servingv1alpha1.InferenceModelSpec{
			Model: servingv1alpha1.ModelSource{URI: "hf://org/repo"},
			GPU:   servingv1alpha1.GPURequirements{Pool: "p", Count: 1},
		},
	}
	if err := env.Client.Create(ctx, im); err != nil {
		t.Fatal(err)
	}
	if im.Spec.Engine.Type != servingv1alpha1.EngineVLLM || im.Spec.Engine.Port != 8000 ||
		im.Spec.Auth.Mode != servingv1alpha1.AuthModeAPIKeyOrJWT || im.Spec.Replicas == nil || *im.Spec.Replicas != 1 {
		t.Errorf("InferenceModel defaults: engine=%+v auth=%+v replicas=%v", im.Spec.Engine, im.Spec.Auth, im.Spec.Replicas)
	}
	pool := &servingv1alpha1.GPUPool{ObjectMeta: metav1.ObjectMeta{Name: "defaults"}}
	if err := env.Client.Create(ctx, pool); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(ctx, pool) })
	if pool.Spec.ResourceName != servingv1alpha1.DefaultGPUResourceName || pool.Spec.Sharing != servingv1alpha1.GPUSharingExclusive ||
		!pool.Spec.Probe.ProbeEnabled() || pool.Spec.Probe.Interval == nil || pool.Spec.Probe.Interval.Duration != time.Minute {
		t.Errorf("GPUPool defaults: %+v", pool.Spec)
	}
	key := &servingv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Name: "defaults", Namespace: ns}}
	if err := env.Client.Create(ctx, key); err != nil {
		t.Fatal(err)
	}
	if got := key.Spec.Scopes; len(got) != 2 || got[0] != servingv1alpha1.ScopeInference || got[1] != servingv1alpha1.ScopeListModels {
		t.Errorf("ApiKey default scopes = %v", got)
	}
}

// The scale subresource works as kubectl scale and an HPA use it.
func TestInferenceModelScaleSubresource(t *testing.T) {
	ctx := context.Background()
	im := validInferenceModel().(*servingv1alpha1.InferenceModel)
	im.Namespace = newNamespace(t)
	if err := env.Client.Create(ctx, im); err != nil {
		t.Fatal(err)
	}
	scale := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"replicas": int64(3)}}}
	scale.SetAPIVersion("autoscaling/v1")
	scale.SetKind("Scale")
	if err := env.Client.SubResource("scale").Update(ctx, im, client.WithSubResourceBody(scale)); err != nil {
		t.Fatalf("updating scale: %v", err)
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(im), im); err != nil {
		t.Fatal(err)
	}
	if *im.Spec.Replicas != 3 {
		t.Errorf("spec.replicas after scale = %d, want 3", *im.Spec.Replicas)
	}
}

// kubectl explain shows the API's doc comments, and kubectl get shows the printer columns.
func TestKubectlExplainAndColumns(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kubeconfig, err := env.Kubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	out, err := env.Kubectl(ctx, kubeconfig, "explain", "inferencemodel.spec.gpu")
	if err != nil {
		t.Fatalf("kubectl explain: %v\n%s", err, out)
	}
	for _, want := range []string{"KIND:", "InferenceModel", "serving.helixflow.io", "count", "number of GPUs per replica", "minMemory", "pool"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl explain output lacks %q:\n%s", want, out)
		}
	}
	for resource, cols := range map[string][]string{
		"im":    {"READY", "MODEL", "ENGINE", "GPUS", "REPLICAS", "URL", "AGE"},
		"gpool": {"READY", "NODES", "GPUS", "ALLOCATED", "AGE"},
		"ak":    {"READY", "KEY-ID", "EXPIRES", "AGE"},
		"gnode": {"READY", "GPUS", "PRODUCT", "AGE"},
	} {
		out, err := env.Kubectl(ctx, kubeconfig, "get", resource, "--all-namespaces")
		if err != nil {
			t.Fatalf("kubectl get %s: %v\n%s", resource, err, out)
		}
		for _, c := range cols {
			if !strings.Contains(out, c) && !strings.Contains(out, "No resources found") {
				t.Errorf("kubectl get %s lacks column %s:\n%s", resource, c, out)
			}
		}
	}
}

// cert-manager's and Gateway API's CRDs from their modules are served, and validate.
func TestExternalCRDsInstalled(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	cert := &certmanagerv1.Certificate{
		ObjectMeta: metav1.ObjectMeta{Name: "llama", Namespace: ns},
		Spec: certmanagerv1.CertificateSpec{
			SecretName: "llama-tls", DNSNames: []string{"llama.example.com"},
			IssuerRef: cmmeta.IssuerReference{Name: "letsencrypt", Kind: "ClusterIssuer"},
		},
	}
	if err := env.Client.Create(ctx, cert); err != nil {
		t.Fatalf("creating a cert-manager Certificate: %v", err)
	}
	route := &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Name: "llama", Namespace: ns},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{Name: "edge"}}},
			Hostnames:       []gatewayv1.Hostname{"llama.example.com"},
		},
	}
	if err := env.Client.Create(ctx, route); err != nil {
		t.Fatalf("creating a Gateway API HTTPRoute: %v", err)
	}
	bad := route.DeepCopy()
	bad.Name, bad.ResourceVersion = "bad", ""
	bad.Spec.Hostnames = []gatewayv1.Hostname{"Not A Host"}
	if err := env.Client.Create(ctx, bad); err == nil {
		t.Error("the Gateway API CRD accepted an invalid hostname: its validation is not installed")
	}
}
