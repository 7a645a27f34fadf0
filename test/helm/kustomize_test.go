package helm_test

import (
	"context"
	"reflect"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// kustomizeDefault renders config/default with the built kubectl.
func kustomizeDefault(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := env.Kubectl(ctx, kubeconfig(t), "kustomize", env.RepoRoot+"/config/default")
	if err != nil {
		t.Fatalf("kubectl kustomize config/default: %v\n%s", err, out)
	}
	return out
}

// TestKustomizeDefault renders config/default, applies it with a server-side dry run (the
// CRDs, which envtest installed from config/crd/bases, included) and checks it installs the
// same manager as the chart with default values.
func TestKustomizeDefault(t *testing.T) {
	const ns = "helixflow-system"
	// The namespace must exist for the namespaced objects' dry run; the rendered Namespace
	// object is then applied (dry run) over it.
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}
	if err := env.Client.Create(context.Background(), nsObj); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), nsObj) })

	out := kustomizeDefault(t)
	objs := decode(t, out)
	ns0 := find(t, objs, "Namespace", ns)
	if ns0.GetLabels()["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("namespace labels = %v, want the restricted Pod Security Standard enforced", ns0.GetLabels())
	}
	var crds []string
	for _, o := range objs {
		if o.GetKind() == "CustomResourceDefinition" {
			crds = append(crds, o.GetName())
		}
	}
	var want []string
	for _, c := range env.CRDs {
		if c.Spec.Group == "serving.helixflow.io" {
			want = append(want, c.Name)
		}
	}
	slices.Sort(crds)
	slices.Sort(want)
	if !slices.Equal(crds, want) {
		t.Errorf("kustomize installs CRDs %v, want %v", crds, want)
	}

	applyDryRun(t, out)

	// The same manager as the chart renders for release "helixflow" in helixflow-system.
	chart := decode(t, mustHelm(t, "template", "helixflow", chartDir(), "--namespace", ns, "--skip-crds"))
	kDeploy := find(t, objs, "Deployment", "helixflow-manager")
	cDeploy := find(t, chart, "Deployment", "helixflow-manager")
	checkRestricted(t, kDeploy)
	checkProbesAndEnv(t, kDeploy)
	checkServiceTargets(t, objs, kDeploy)
	checkNetworkPolicy(t, objs, kDeploy)
	checkPodAdmitted(t, kDeploy, ns)
	if !slices.Contains(args(t, kDeploy), "--usage-endpoint=helixflow-usage.helixflow-system.svc:9443") {
		t.Errorf("kustomize manager args lack the usage endpoint: %v", args(t, kDeploy))
	}
	kSpec := nested(t, kDeploy.Object, "spec", "template", "spec")
	cSpec := nested(t, cDeploy.Object, "spec", "template", "spec")
	if !reflect.DeepEqual(kSpec, cSpec) {
		t.Errorf("config/manager's pod spec differs from the chart's default:\nkustomize: %v\nchart:     %v", kSpec, cSpec)
	}
	if kr, cr := nested(t, kDeploy.Object, "spec", "replicas"), nested(t, cDeploy.Object, "spec", "replicas"); kr != cr {
		t.Errorf("replicas: kustomize %v, chart %v", kr, cr)
	}
	// Same objects (kind and name), apart from what only one of them has: the Namespace
	// and CRDs (Helm installs CRDs from crds/ and the release namespace itself).
	var kinds, chartKinds []string
	for _, o := range objs {
		if o.GetKind() != "Namespace" && o.GetKind() != "CustomResourceDefinition" {
			kinds = append(kinds, o.GetKind()+"/"+o.GetName())
		}
	}
	for _, o := range chart {
		chartKinds = append(chartKinds, o.GetKind()+"/"+o.GetName())
	}
	slices.Sort(kinds)
	slices.Sort(chartKinds)
	if !slices.Equal(kinds, chartKinds) {
		t.Errorf("kustomize objects %v\nchart objects     %v", kinds, chartKinds)
	}
	// Same RBAC rules.
	for _, kind := range []string{"ClusterRole", "Role"} {
		name := "helixflow-manager"
		if kind == "Role" {
			name = "helixflow-leader-election"
		}
		kr, _, _ := unstructured.NestedSlice(find(t, objs, kind, name).Object, "rules")
		cr, _, _ := unstructured.NestedSlice(find(t, chart, kind, name).Object, "rules")
		if !reflect.DeepEqual(kr, cr) {
			t.Errorf("%s %s rules differ between kustomize and the chart", kind, name)
		}
	}
}
