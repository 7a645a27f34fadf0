package controllers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// managerNamespace creates the manager's namespace, which probe DaemonSets live in, unless
// an earlier test did. It stays: envtest has no namespace controller to empty it.
func managerNamespace(t *testing.T) string {
	t.Helper()
	ns := testConfig.Namespace
	if err := env.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	return ns
}

func TestProbeDaemonSetLifecycle(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	ns := managerNamespace(t)
	gpuPool(t, "probe-ds", func(p *servingv1alpha1.GPUPool) {
		p.Spec.Probe.Interval = &metav1.Duration{Duration: 30 * time.Second}
	})
	pool := &servingv1alpha1.GPUPool{}
	if err := get(pool, "", "probe-ds"); err != nil {
		t.Fatal(err)
	}

	ds := &appsv1.DaemonSet{}
	eventually(t, "probe DaemonSet", func() error { return get(ds, ns, "helixflow-probe-probe-ds") })
	// The cluster-scoped pool controls the namespaced DaemonSet, so deleting the pool
	// deletes it (the garbage collector is not part of envtest; the reference is what it reads).
	wantOwner := metav1.OwnerReference{
		APIVersion: "serving.helixflow.io/v1alpha1", Kind: "GPUPool", Name: "probe-ds", UID: pool.UID,
		Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true),
	}
	if diff := cmp.Diff([]metav1.OwnerReference{wantOwner}, ds.OwnerReferences); diff != "" {
		t.Errorf("owner references (-want +got):\n%s", diff)
	}
	wantLabels := map[string]string{
		"app.kubernetes.io/managed-by": "helixflow", "serving.helixflow.io/gpu-pool": "probe-ds", "app.kubernetes.io/name": "helixflow-probe",
	}
	if diff := cmp.Diff(wantLabels, ds.Spec.Template.Labels); diff != "" {
		t.Errorf("pod labels (-want +got):\n%s", diff)
	}
	spec := ds.Spec.Template.Spec
	if spec.ServiceAccountName != "helixflow-probe" {
		t.Errorf("serviceAccountName %q", spec.ServiceAccountName)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Key != "nvidia.com/gpu" {
		t.Errorf("tolerations %+v, want the pool's", spec.Tolerations)
	}
	if a := spec.Affinity; a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil ||
		!cmp.Equal(a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms[0].MatchExpressions,
			[]corev1.NodeSelectorRequirement{{Key: "pool", Operator: corev1.NodeSelectorOpIn, Values: []string{"probe-ds"}}}) {
		t.Errorf("affinity %+v, want required pool=probe-ds", a)
	}
	c := spec.Containers[0]
	if c.Image != testConfig.RuntimeImage || !slices.Equal(c.Args, []string{"probe", "--node-name=$(NODE_NAME)", "--interval=30s", "--metrics-address=:9400"}) {
		t.Errorf("container %s %q", c.Image, c.Args)
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != "metrics" || c.Ports[0].ContainerPort != 9400 {
		t.Errorf("ports %+v", c.Ports)
	}

	// The shared objects the probe runs under exist beside it.
	for _, obj := range []client.Object{
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "helixflow-probe"}},
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "helixflow-probe"}},
		&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "helixflow-probe"}},
		&admissionregistrationv1.ValidatingAdmissionPolicy{ObjectMeta: metav1.ObjectMeta{Name: ProbePolicyName}},
		&admissionregistrationv1.ValidatingAdmissionPolicyBinding{ObjectMeta: metav1.ObjectMeta{Name: ProbePolicyName}},
	} {
		if err := get(obj, obj.GetNamespace(), obj.GetName()); err != nil {
			t.Errorf("%T: %v", obj, err)
		}
	}

	// Re-applying an unchanged DaemonSet writes nothing: a node joining the pool makes the
	// pool reconcile (its status changes), and the DaemonSet keeps its resourceVersion.
	before := reconciles(t, "gpupool")
	gpuNode(t, "probe-ds-a", 8, 81920, map[string]string{"pool": "probe-ds"})
	eventually(t, "pool reconciled with its node", func() error {
		if err := get(pool, "", "probe-ds"); err != nil {
			return err
		}
		if pool.Status.Nodes != 1 || reconciles(t, "gpupool") <= before {
			return fmt.Errorf("%d nodes in status", pool.Status.Nodes)
		}
		return nil
	})
	again := &appsv1.DaemonSet{}
	if err := get(again, ns, ds.Name); err != nil {
		t.Fatal(err)
	}
	if again.ResourceVersion != ds.ResourceVersion || again.Generation != ds.Generation {
		t.Errorf("DaemonSet rewritten by an unchanged apply: resourceVersion %s -> %s", ds.ResourceVersion, again.ResourceVersion)
	}

	// Someone editing a field the manager owns gets it set back.
	eventually(t, "hand edit of the probe args", func() error {
		edited := &appsv1.DaemonSet{}
		if err := get(edited, ns, ds.Name); err != nil {
			return err
		}
		edited.Spec.Template.Spec.Containers[0].Args = []string{"probe", "--interval=1h"}
		return env.Client.Update(ctx, edited)
	})
	eventually(t, "probe args restored", func() error {
		fresh := &appsv1.DaemonSet{}
		if err := get(fresh, ns, ds.Name); err != nil {
			return err
		}
		if args := fresh.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--node-name=$(NODE_NAME)") {
			return fmt.Errorf("args still %q", args)
		}
		return nil
	})
	if err := get(ds, ns, ds.Name); err != nil {
		t.Fatal(err)
	}

	// Someone deleting the DaemonSet gets it back.
	if err := env.Client.Delete(ctx, ds); err != nil {
		t.Fatal(err)
	}
	eventually(t, "probe DaemonSet re-created", func() error {
		fresh := &appsv1.DaemonSet{}
		if err := get(fresh, ns, ds.Name); err != nil {
			return err
		}
		if fresh.UID == ds.UID {
			return errors.New("still the deleted DaemonSet")
		}
		return nil
	})

	// probe.enabled=false removes it; true brings it back.
	setProbe := func(enabled bool) {
		t.Helper()
		p := &servingv1alpha1.GPUPool{}
		if err := get(p, "", "probe-ds"); err != nil {
			t.Fatal(err)
		}
		p.Spec.Probe.Enabled = ptr.To(enabled)
		if err := env.Client.Update(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	setProbe(false)
	eventually(t, "probe DaemonSet removed", func() error {
		if err := get(&appsv1.DaemonSet{}, ns, ds.Name); !apierrors.IsNotFound(err) {
			return fmt.Errorf("DaemonSet still there (err %w)", err)
		}
		return nil
	})
	setProbe(true)
	eventually(t, "probe DaemonSet back", func() error { return get(&appsv1.DaemonSet{}, ns, ds.Name) })
}

// impersonate returns a client that acts as user, as a pod's bound token would present it.
func impersonate(t *testing.T, user string, groups []string, extra map[string][]string) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups, Extra: extra}
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// applyGPUNode writes a GPUNode as the probe does: server-side apply of the object, then of
// its status.
func applyGPUNode(ctx context.Context, c client.Client, name string, gpus int64) error {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(servingv1alpha1.GroupVersion.String())
	u.SetKind("GPUNode")
	u.SetName(name)
	if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner("helixflow-probe")); err != nil {
		return err
	}
	st := &unstructured.Unstructured{Object: map[string]any{"status": map[string]any{
		"gpuCount": gpus, "lastProbeTime": time.Now().UTC().Format(time.RFC3339),
	}}}
	st.SetAPIVersion(servingv1alpha1.GroupVersion.String())
	st.SetKind("GPUNode")
	st.SetName(name)
	return c.SubResource("status").Apply(ctx, client.ApplyConfigurationFromUnstructured(st), client.FieldOwner("helixflow-probe"), client.ForceOwnership)
}

// deniedByPolicy checks err is the probe admission policy's denial, with want in its message.
func deniedByPolicy(err error, want string) error {
	if err == nil {
		return errors.New("allowed")
	}
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "ValidatingAdmissionPolicy '"+ProbePolicyName+"'") {
		return fmt.Errorf("not denied by the probe policy: %w", err)
	}
	if !strings.Contains(err.Error(), want) {
		return fmt.Errorf("denial %q does not say %q", err.Error(), want)
	}
	return nil
}

// The probe's identity may write the GPUNode of its own node and no other. The policy,
// its binding and the RBAC are created by the reconciler; the requests impersonate the
// probe's ServiceAccount with the node-name extra a pod-bound token carries.
func TestProbeIdentityWritesOnlyItsOwnGPUNode(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	ns := managerNamespace(t)
	gpuPool(t, "probe-authz", nil)
	for _, name := range []string{"node-a", "node-b", "node-c"} {
		t.Cleanup(func() {
			_ = env.Client.Delete(context.Background(), &servingv1alpha1.GPUNode{ObjectMeta: metav1.ObjectMeta{Name: name}})
		})
	}

	user := "system:serviceaccount:" + ns + ":helixflow-probe"
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}
	probeA := impersonate(t, user, groups, map[string][]string{NodeNameExtra: {"node-a"}})
	noNode := impersonate(t, user, groups, nil)

	// RBAC and admission policies take effect asynchronously in the API server: wait until
	// the probe gets past RBAC and is stopped by the policy. A write let through before the
	// policy is in force is undone, so what follows starts clean.
	eventually(t, "probe policy in force", func() error {
		err := applyGPUNode(ctx, probeA, "node-b", 1)
		if err == nil {
			_ = env.Client.Delete(ctx, &servingv1alpha1.GPUNode{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}})
		}
		return deniedByPolicy(err, "may write only GPUNode node-a, not node-b")
	})

	// Its own node: create and status updates, by apply and by update.
	if err := applyGPUNode(ctx, probeA, "node-a", 8); err != nil {
		t.Fatalf("probe on node-a writing GPUNode node-a: %v", err)
	}
	own := &servingv1alpha1.GPUNode{}
	if err := probeA.Get(ctx, client.ObjectKey{Name: "node-a"}, own); err != nil {
		t.Fatal(err)
	}
	if own.Status.GPUCount != 8 {
		t.Errorf("GPUNode node-a status %+v, want gpuCount 8", own.Status)
	}
	own.Status.GPUCount = 4
	if err := probeA.Status().Update(ctx, own); err != nil {
		t.Errorf("probe on node-a updating GPUNode node-a status: %v", err)
	}

	// Anyone else's node: creating, updating it or its status is denied by the policy.
	denial := applyGPUNode(ctx, probeA, "node-b", 1)
	if err := deniedByPolicy(denial, "not node-b"); err != nil {
		t.Errorf("probe on node-a creating GPUNode node-b: %v", err)
	}
	t.Logf("denial: %v", denial)
	// The policy matches the probe only: an administrator still writes any GPUNode.
	other := &servingv1alpha1.GPUNode{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}}
	if err := env.Client.Create(ctx, other); err != nil {
		t.Fatalf("admin creating GPUNode node-b: %v", err)
	}
	other.Labels = map[string]string{"forged": "true"}
	if err := deniedByPolicy(probeA.Update(ctx, other), "not node-b"); err != nil {
		t.Errorf("probe on node-a updating GPUNode node-b: %v", err)
	}
	other.Labels = nil
	other.Status.GPUCount = 1
	if err := deniedByPolicy(probeA.Status().Update(ctx, other), "not node-b"); err != nil {
		t.Errorf("probe on node-a updating GPUNode node-b status: %v", err)
	}
	if err := deniedByPolicy(applyGPUNode(ctx, probeA, "node-b", 1), "not node-b"); err != nil {
		t.Errorf("probe on node-a applying GPUNode node-b status: %v", err)
	}

	// A token that names no node (not bound to a pod on a node) writes nothing.
	const noNodeMsg = "names no node"
	if err := deniedByPolicy(applyGPUNode(ctx, noNode, "node-c", 1), noNodeMsg); err != nil {
		t.Errorf("probe identity without node name creating GPUNode node-c: %v", err)
	}
	if err := deniedByPolicy(applyGPUNode(ctx, noNode, "node-a", 1), noNodeMsg); err != nil {
		t.Errorf("probe identity without node name writing GPUNode node-a: %v", err)
	}

	// Nothing above changed node-b: the denials were real.
	if err := get(other, "", "node-b"); err != nil {
		t.Fatal(err)
	}
	if len(other.Labels) != 0 || other.Status.GPUCount != 0 {
		t.Errorf("GPUNode node-b was written: labels %v, status %+v", other.Labels, other.Status)
	}
	if err := get(&servingv1alpha1.GPUNode{}, "", "node-c"); !apierrors.IsNotFound(err) {
		t.Errorf("GPUNode node-c exists (err %v)", err)
	}
}

// The manager's own ClusterRole, as generated into config/rbac/role.yaml, is enough to
// create and update every probe object, including a ClusterRole that grants GPUNode writes
// (RBAC's escalation check). No manager runs here: the reconciler's probe step is driven
// directly with a client that impersonates a user bound to that role.
func TestManagerRoleSufficesForProbe(t *testing.T) {
	ctx := context.Background()
	ns := managerNamespace(t)
	raw, err := os.ReadFile(filepath.Join(env.RepoRoot, "config", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.ClusterRole{}
	if err := yaml.Unmarshal(raw, role); err != nil {
		t.Fatal(err)
	}
	const user = "helixflow-manager-rbac-test"
	role.ObjectMeta = metav1.ObjectMeta{Name: user}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	for _, obj := range []client.Object{role, binding} {
		if err := env.Client.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = env.Client.Delete(context.Background(), obj) })
	}
	// Earlier tests' managers created the shared objects: remove them so the create path,
	// where RBAC checks escalation, is the one exercised.
	for _, obj := range probeSharedObjects(ns) {
		if err := env.Client.Delete(ctx, obj); client.IgnoreNotFound(err) != nil {
			t.Fatal(err)
		}
	}
	gpuPool(t, "probe-rbac", nil)
	pool := &servingv1alpha1.GPUPool{}
	if err := get(pool, "", "probe-rbac"); err != nil {
		t.Fatal(err)
	}

	r := &GPUPoolReconciler{Client: impersonate(t, user, []string{"system:authenticated"}, nil), Scheme: env.Scheme, Config: testConfig}
	// The role binding takes effect asynchronously.
	eventually(t, "manager role creates the probe objects", func() error { return r.reconcileProbe(ctx, pool) })
	for _, obj := range append(probeSharedObjects(ns), probeDaemonSet(pool, testConfig)) {
		if err := get(obj, obj.GetNamespace(), obj.GetName()); err != nil {
			t.Errorf("%T %s: %v", obj, obj.GetName(), err)
		}
	}
	// Again, now as updates of existing objects.
	if err := r.reconcileProbe(ctx, pool); err != nil {
		t.Errorf("manager role re-applying the probe objects: %v", err)
	}
	pool.Spec.Probe.Enabled = ptr.To(false)
	if err := r.reconcileProbe(ctx, pool); err != nil {
		t.Errorf("manager role deleting the probe DaemonSet: %v", err)
	}
	if err := get(&appsv1.DaemonSet{}, ns, ProbeDaemonSetName(pool)); !apierrors.IsNotFound(err) {
		t.Errorf("probe DaemonSet still there (err %v)", err)
	}
}
