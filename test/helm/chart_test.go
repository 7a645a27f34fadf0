package helm_test

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

func customValues() string { return filepath.Join("test", "helm", "testdata", "custom-values.yaml") }

func TestHelmVersionIsPinned(t *testing.T) {
	out := mustHelm(t, "version", "--short")
	if !strings.HasPrefix(out, "v3.22.0") {
		t.Fatalf("helm version %q, want the v3.22.0 pinned in hack/tools/go.mod", out)
	}
}

func TestLint(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"defaults", []string{"lint", chartDir()}},
		{"strict", []string{"lint", "--strict", chartDir()}},
		{"strict custom values", []string{"lint", "--strict", "-f", customValues(), chartDir()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := mustHelm(t, tc.args...)
			if !strings.Contains(out, "0 chart(s) failed") {
				t.Fatalf("helm lint:\n%s", out)
			}
			if strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
				t.Errorf("helm lint reported problems:\n%s", out)
			}
		})
	}
}

// TestTemplateDefaults renders the chart with default values into a namespace other than
// helixflow-system under a release name other than the chart's, applies every object with a
// server-side dry run, and checks what the manager is told.
func TestTemplateDefaults(t *testing.T) {
	const ns, release = "hf-defaults", "hf"
	createNamespace(t, ns)
	out := mustHelm(t, "template", release, chartDir(), "--namespace", ns, "--skip-crds")
	objs := decode(t, out)

	for _, kn := range [][2]string{
		{"ServiceAccount", "hf-helixflow-manager"},
		{"ClusterRole", "hf-helixflow-manager"},
		{"ClusterRoleBinding", "hf-helixflow-manager"},
		{"Role", "hf-helixflow-leader-election"},
		{"RoleBinding", "hf-helixflow-leader-election"},
		{"Service", "hf-helixflow-metrics"},
		{"Service", "hf-helixflow-token"},
		{"Service", "hf-helixflow-usage"},
		{"Deployment", "hf-helixflow-manager"},
		{"NetworkPolicy", "hf-helixflow-manager"},
	} {
		find(t, objs, kn[0], kn[1])
	}
	for _, o := range objs {
		if o.GetKind() == "CustomResourceDefinition" || o.GetKind() == "ServiceMonitor" {
			t.Errorf("unexpected %s/%s (CRDs skipped; no monitoring.coreos.com/v1 served)", o.GetKind(), o.GetName())
		}
		if o.GetKind() != "ClusterRole" && o.GetKind() != "ClusterRoleBinding" && o.GetNamespace() != ns {
			t.Errorf("%s/%s in namespace %q, want %q", o.GetKind(), o.GetName(), o.GetNamespace(), ns)
		}
	}

	deploy := find(t, objs, "Deployment", "hf-helixflow-manager")
	if r := nested(t, deploy.Object, "spec", "replicas"); r != int64(2) {
		t.Errorf("replicas = %v, want 2", r)
	}
	a := args(t, deploy)
	for _, want := range []string{
		"--leader-elect",
		"--usage-endpoint=hf-helixflow-usage." + ns + ".svc:9443",
		"--usage-bind-address=:9443",
		"--token-service-bind-address=:8082",
		"--metrics-bind-address=:8080",
		"--health-probe-bind-address=:8081",
		"--runtime-image=ghcr.io/helixflow/runtime:0.1.0",
		"--ingress-dialect=ingress-nginx",
		"--jwt-algorithm=RS256",
		"--zap-log-level=info",
	} {
		if !slices.Contains(a, want) {
			t.Errorf("manager args lack %q: %v", want, a)
		}
	}
	c := managerContainer(t, deploy)
	if img := c["image"]; img != "ghcr.io/helixflow/manager:0.1.0" {
		t.Errorf("image = %v, want ghcr.io/helixflow/manager:<appVersion>", img)
	}
	checkRestricted(t, deploy)
	checkProbesAndEnv(t, deploy)
	checkServiceTargets(t, objs, deploy)
	checkNetworkPolicy(t, objs, deploy)

	applyDryRun(t, out)
	checkPodAdmitted(t, deploy, ns)
}

// TestTemplateCustomValues renders with a values file that changes replicas, leader
// election, the ServiceMonitor, the ingress dialect, JWT and images, and applies it too.
func TestTemplateCustomValues(t *testing.T) {
	const ns, release = "hf-custom", "helixflow"
	createNamespace(t, ns)
	out := mustHelm(t, "template", release, chartDir(), "--namespace", ns, "--skip-crds",
		"-f", customValues(), "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
	objs := decode(t, out)

	deploy := find(t, objs, "Deployment", "helixflow-manager")
	if r := nested(t, deploy.Object, "spec", "replicas"); r != int64(1) {
		t.Errorf("replicas = %v, want 1", r)
	}
	a := args(t, deploy)
	if slices.Contains(a, "--leader-elect") {
		t.Errorf("--leader-elect with leaderElection: false: %v", a)
	}
	for _, want := range []string{
		"--usage-endpoint=helixflow-usage." + ns + ".svc:9500",
		"--usage-bind-address=:9500",
		"--ingress-dialect=nginx-inc",
		"--default-ingress-class=nginx",
		"--default-issuer=ClusterIssuer/letsencrypt",
		"--stream-timeout=30m",
		"--jwt-algorithm=ES256",
		"--jwt-issuer=https://helixflow.example.com",
		"--jwt-rotation-period=168h",
		"--engine-image=SGLang=registry.example.com/lmsysorg/sglang:v0.5.3",
		"--engine-image=VLLM=registry.example.com/vllm/vllm-openai:v0.11.0",
		"--runtime-image=registry.example.com/helixflow/runtime:0.1.0-rc.1",
		"--probe-runtime-class=nvidia",
		"--zap-log-level=debug",
	} {
		if !slices.Contains(a, want) {
			t.Errorf("manager args lack %q: %v", want, a)
		}
	}
	if img := managerContainer(t, deploy)["image"]; img != "ghcr.io/helixflow/manager:0.1.0-rc.1" {
		t.Errorf("image = %v", img)
	}
	for _, o := range objs {
		switch o.GetKind() {
		case "ServiceMonitor":
			t.Errorf("ServiceMonitor rendered with serviceMonitor.enabled: false")
		case "Role", "RoleBinding":
			t.Errorf("%s/%s rendered without leader election", o.GetKind(), o.GetName())
		case "NetworkPolicy":
			t.Errorf("NetworkPolicy rendered with networkPolicy.enabled: false")
		}
	}
	usage := find(t, objs, "Service", "helixflow-usage")
	if p := nested(t, usage.Object, "spec", "ports").([]any)[0].(map[string]any)["port"]; p != int64(9500) {
		t.Errorf("usage Service port = %v, want 9500", p)
	}
	checkRestricted(t, deploy)
	checkServiceTargets(t, objs, deploy)

	applyDryRun(t, out)
	checkPodAdmitted(t, deploy, ns)
}

// TestServiceMonitor: on by default, rendered only where monitoring.coreos.com/v1 is served,
// and selecting the metrics Service alone.
func TestServiceMonitor(t *testing.T) {
	without := decode(t, mustHelm(t, "template", "helixflow", chartDir(), "-n", "x", "--skip-crds"))
	for _, o := range without {
		if o.GetKind() == "ServiceMonitor" {
			t.Fatal("ServiceMonitor rendered although monitoring.coreos.com/v1 is not served")
		}
	}
	objs := decode(t, mustHelm(t, "template", "helixflow", chartDir(), "-n", "x", "--skip-crds",
		"--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"))
	sm := find(t, objs, "ServiceMonitor", "helixflow")
	sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
	var matched []string
	for _, o := range objs {
		if o.GetKind() != "Service" {
			continue
		}
		labels := o.GetLabels()
		all := true
		for k, v := range sel {
			all = all && labels[k] == v
		}
		if all {
			matched = append(matched, o.GetName())
		}
	}
	if !slices.Equal(matched, []string{"helixflow-metrics"}) {
		t.Errorf("ServiceMonitor selects Services %v, want [helixflow-metrics]", matched)
	}
	endpoints := nested(t, sm.Object, "spec", "endpoints").([]any)
	if ep := endpoints[0].(map[string]any); ep["port"] != "metrics" || ep["path"] != "/metrics" {
		t.Errorf("ServiceMonitor endpoint = %v", ep)
	}
}

// TestSchemaRejectsBadValues: values.schema.json refuses what the manager would refuse at
// start-up, before anything reaches the cluster.
func TestSchemaRejectsBadValues(t *testing.T) {
	for _, tc := range []struct {
		set, want string
	}{
		{"exposure.ingressDialect=traefik", "ingressDialect"},
		{"jwt.algorithm=HS256", "algorithm"},
		{"image.repository=", "repository"},
		{"runtimeImage=", "runtimeImage"},
		{"replicas=two", "replicas"},
		{"logLevel=verbose", "logLevel"},
		{"engineImages.Custom=foo", "engineImages"},
		{"jwt.tokenTTL=forever", "tokenTTL"},
		{"unknownKey=1", "unknownKey"},
	} {
		t.Run(tc.set, func(t *testing.T) {
			out, err := helm(t, "template", "helixflow", chartDir(), "--set", tc.set)
			if err == nil {
				t.Fatalf("--set %s rendered without error", tc.set)
			}
			if !strings.Contains(out, "schema") || !strings.Contains(out, tc.want) {
				t.Errorf("--set %s: error does not name the schema and %q:\n%s", tc.set, tc.want, out)
			}
		})
	}
}

// TestReplicasNeedLeaderElection: several replicas without leader election would all
// reconcile; the chart refuses to render that.
func TestReplicasNeedLeaderElection(t *testing.T) {
	out, err := helm(t, "template", "helixflow", chartDir(), "--set", "leaderElection=false")
	if err == nil || !strings.Contains(out, "needs leaderElection: true") {
		t.Fatalf("2 replicas without leader election rendered (err %v):\n%s", err, out)
	}
	mustHelm(t, "template", "helixflow", chartDir(), "--set", "leaderElection=false", "--set", "replicas=1")
}

// TestNotes: helm install --dry-run against the test API server prints the next step.
func TestNotes(t *testing.T) {
	const ns = "hf-notes"
	createNamespace(t, ns)
	out := mustHelm(t, "install", "helixflow", chartDir(), "--namespace", ns, "--kubeconfig", kubeconfig(t),
		"--dry-run=server", "--skip-crds")
	_, notes, ok := strings.Cut(out, "NOTES:")
	if !ok {
		t.Fatalf("helm install --dry-run printed no NOTES:\n%s", out)
	}
	for _, want := range []string{
		"kubectl get gpool,im,ak",
		"serving_v1alpha1_gpupool.yaml",
		"serving_v1alpha1_inferencemodel.yaml",
		"rollout status deployment/helixflow-manager",
		"helixflow-usage." + ns + ".svc:9443",
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("NOTES lack %q:\n%s", want, notes)
		}
	}
}

// checkRestricted checks the Pod Security Standard "restricted" fields of the manager pod.
func checkRestricted(t *testing.T, deploy *unstructured.Unstructured) {
	t.Helper()
	pod := nested(t, deploy.Object, "spec", "template", "spec").(map[string]any)
	if v := nested(t, pod, "securityContext", "runAsNonRoot"); v != true {
		t.Errorf("pod runAsNonRoot = %v", v)
	}
	if v := nested(t, pod, "securityContext", "seccompProfile", "type"); v != "RuntimeDefault" {
		t.Errorf("pod seccompProfile = %v", v)
	}
	c := managerContainer(t, deploy)
	if v := nested(t, c, "securityContext", "allowPrivilegeEscalation"); v != false {
		t.Errorf("allowPrivilegeEscalation = %v", v)
	}
	if v := nested(t, c, "securityContext", "readOnlyRootFilesystem"); v != true {
		t.Errorf("readOnlyRootFilesystem = %v", v)
	}
	if v := nested(t, c, "securityContext", "capabilities", "drop"); !slices.Equal(v.([]any), []any{"ALL"}) {
		t.Errorf("capabilities.drop = %v", v)
	}
	for _, f := range []string{"requests", "limits"} {
		r := nested(t, c, "resources", f).(map[string]any)
		if r["cpu"] == nil || r["memory"] == nil {
			t.Errorf("resources.%s = %v, want cpu and memory", f, r)
		}
	}
}

// checkProbesAndEnv checks the probes and the downward-API namespace.
func checkProbesAndEnv(t *testing.T, deploy *unstructured.Unstructured) {
	t.Helper()
	c := managerContainer(t, deploy)
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		if v := nested(t, c, probe, "httpGet", "path"); v != path {
			t.Errorf("%s path = %v, want %s", probe, v, path)
		}
		if v := nested(t, c, probe, "httpGet", "port"); v != "health" {
			t.Errorf("%s port = %v, want the health port", probe, v)
		}
	}
	ports := map[string]int64{}
	for _, p := range c["ports"].([]any) {
		m := p.(map[string]any)
		ports[m["name"].(string)] = m["containerPort"].(int64)
	}
	want := map[string]int64{"metrics": 8080, "health": 8081, "token": 8082, "usage": 9443}
	for n, p := range want {
		if ports[n] != p {
			t.Errorf("container port %s = %d, want %d", n, ports[n], p)
		}
	}
	var found bool
	for _, e := range c["env"].([]any) {
		m := e.(map[string]any)
		if m["name"] == "POD_NAMESPACE" {
			found = nested(t, m, "valueFrom", "fieldRef", "fieldPath") == "metadata.namespace"
		}
	}
	if !found {
		t.Error("POD_NAMESPACE is not set from metadata.namespace")
	}
}

// checkServiceTargets checks that each Service selects the manager pods and targets a
// named port the manager container has.
func checkServiceTargets(t *testing.T, objs []*unstructured.Unstructured, deploy *unstructured.Unstructured) {
	t.Helper()
	podLabels, _, _ := unstructured.NestedStringMap(deploy.Object, "spec", "template", "metadata", "labels")
	portNames := map[string]bool{}
	for _, p := range managerContainer(t, deploy)["ports"].([]any) {
		portNames[p.(map[string]any)["name"].(string)] = true
	}
	for _, o := range objs {
		if o.GetKind() != "Service" {
			continue
		}
		sel, _, _ := unstructured.NestedStringMap(o.Object, "spec", "selector")
		if len(sel) == 0 {
			t.Errorf("Service %s has no selector", o.GetName())
		}
		for k, v := range sel {
			if podLabels[k] != v {
				t.Errorf("Service %s selects %s=%s, the manager pods have %q", o.GetName(), k, v, podLabels[k])
			}
		}
		for _, p := range nested(t, o.Object, "spec", "ports").([]any) {
			if tp := p.(map[string]any)["targetPort"]; !portNames[tp.(string)] {
				t.Errorf("Service %s targets port %v the manager does not name", o.GetName(), tp)
			}
		}
	}
}

// checkNetworkPolicy: the manager's NetworkPolicy selects the manager pods, lets only model
// pods (the labels the InferenceModel reconciler gives them) reach the usage port, and leaves
// every other port of the manager open, so that a port added later is not cut off unnoticed.
// A rule without ports opens every port; one without peers (or an empty list) admits every
// source; ports may be named or numbered.
func checkNetworkPolicy(t *testing.T, objs []*unstructured.Unstructured, deploy *unstructured.Unstructured) {
	t.Helper()
	var policies []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "NetworkPolicy" {
			policies = append(policies, o)
		}
	}
	if len(policies) != 1 {
		t.Fatalf("%d NetworkPolicies rendered, want 1", len(policies))
	}
	np := policies[0]
	podLabels, _, _ := unstructured.NestedStringMap(deploy.Object, "spec", "template", "metadata", "labels")
	sel, _, _ := unstructured.NestedStringMap(np.Object, "spec", "podSelector", "matchLabels")
	for k, v := range sel {
		if podLabels[k] != v {
			t.Errorf("NetworkPolicy selects %s=%s, the manager pods have %q", k, v, podLabels[k])
		}
	}
	if len(sel) == 0 {
		t.Error("NetworkPolicy selects every pod of the namespace")
	}
	// The manager's ports, by name and by number.
	portName := map[string]string{}
	var all []string
	for _, p := range managerContainer(t, deploy)["ports"].([]any) {
		port := p.(map[string]any)
		name := port["name"].(string)
		portName[name], portName[fmt.Sprint(port["containerPort"])] = name, name
		all = append(all, name)
	}
	runtime := map[string]string{servingv1alpha1.LabelManagedBy: servingv1alpha1.ManagedByValue, servingv1alpha1.LabelAppName: servingv1alpha1.RuntimeAppName}
	open := map[string]bool{}
	usageFromRuntimes := false
	rules, _, _ := unstructured.NestedSlice(np.Object, "spec", "ingress")
	for _, r := range rules {
		rule, _ := r.(map[string]any)
		var ports []string
		rawPorts, _ := rule["ports"].([]any)
		for _, p := range rawPorts {
			port, _ := p.(map[string]any)
			if _, ranged := port["endPort"]; ranged || port["port"] == nil {
				ports = append(ports, all...) // a range, or every port: taken as all of them
				continue
			}
			ports = append(ports, portName[fmt.Sprint(port["port"])])
		}
		if len(rawPorts) == 0 {
			ports = all
		}
		from, _ := rule["from"].([]any)
		if len(from) == 0 {
			for _, p := range ports {
				open[p] = true
			}
			continue
		}
		peer, _ := from[0].(map[string]any)
		got, _, _ := unstructured.NestedStringMap(peer, "podSelector", "matchLabels")
		ns, hasNS, _ := unstructured.NestedMap(peer, "namespaceSelector")
		if len(from) != 1 || !reflect.DeepEqual(got, runtime) || !hasNS || len(ns) != 0 || !slices.Equal(ports, []string{"usage"}) {
			t.Errorf("limited rule %v, want port usage from pods labelled %v in any namespace", rule, runtime)
		}
		usageFromRuntimes = true
	}
	if !usageFromRuntimes || open["usage"] {
		t.Errorf("the usage port is open to all: %v", rules)
	}
	for _, name := range all {
		if name != "usage" && !open[name] {
			t.Errorf("NetworkPolicy closes the manager's port %s", name)
		}
	}
}

// checkPodAdmitted creates (dry run) a Pod from the Deployment's template in a namespace that
// enforces the "restricted" Pod Security Standard: the API server's PodSecurity admission
// refuses it if any field falls short.
func checkPodAdmitted(t *testing.T, deploy *unstructured.Unstructured, ns string) {
	t.Helper()
	tmpl := nested(t, deploy.Object, "spec", "template").(map[string]any)
	var pod corev1.Pod
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(tmpl, &pod); err != nil {
		t.Fatalf("converting the pod template: %v", err)
	}
	pod.ObjectMeta = metav1.ObjectMeta{Name: "restricted-check", Namespace: ns, Labels: pod.Labels}
	if err := env.Client.Create(context.Background(), &pod, client.DryRunAll); err != nil {
		t.Fatalf("the manager pod is refused in a restricted namespace: %v", err)
	}
}
