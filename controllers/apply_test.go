package controllers

import (
	"context"
	"maps"
	"reflect"
	"slices"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// writeCounter counts the writes a client sends, by kind of request.
type writeCounter struct {
	mu      sync.Mutex
	counts  map[string]int
	lagging map[string]bool
}

func (w *writeCounter) lags(name string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lagging[name]
}

func (w *writeCounter) add(op string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.counts[op]++
}

func (w *writeCounter) take() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	got := w.counts
	w.counts = map[string]int{}
	return got
}

// countingWriter writes through env's API server with its writes counted. Its client's
// reads strip managed fields, as the manager's cache does, and do not see the objects
// named in the counter's lagging set, as a cache that has not caught up; its reader reads
// directly.
func countingWriter(t *testing.T) (ownedWriter, *writeCounter) {
	t.Helper()
	w := &writeCounter{counts: map[string]int{}, lagging: map[string]bool{}}
	direct, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	c := interceptor.NewClient(direct, interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			if w.lags(key.Name) {
				return apierrors.NewNotFound(schema.GroupResource{}, key.Name)
			}
			if err := c.Get(ctx, key, obj, opts...); err != nil {
				return err
			}
			obj.SetManagedFields(nil)
			return nil
		},
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			w.add("create")
			return c.Create(ctx, obj, opts...)
		},
		Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
			w.add("update")
			return c.Update(ctx, obj, opts...)
		},
		Patch: func(ctx context.Context, c client.WithWatch, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
			w.add("patch")
			return c.Patch(ctx, obj, patch, opts...)
		},
		Apply: func(ctx context.Context, c client.WithWatch, obj runtime.ApplyConfiguration, opts ...client.ApplyOption) error {
			w.add("apply")
			return c.Apply(ctx, obj, opts...)
		},
	})
	return newOwnedWriter(c, direct, env.Scheme), w
}

// everyChild is every kind of object the reconcilers own, as the builders make them: a
// model's children (two replicas, so a PodDisruptionBudget too), its Ingress and
// Certificate, and a pool's probe DaemonSet.
func everyChild(t *testing.T, ns string) []client.Object {
	t.Helper()
	m := exposureTestModel(func(m *servingv1alpha1.InferenceModel) {
		m.Namespace = ns
		m.Spec.GPU = servingv1alpha1.GPURequirements{Pool: "h100", Count: 1}
		m.Spec.Auth.Mode = servingv1alpha1.AuthModeAPIKeyOrJWT
		m.Spec.Replicas = ptr.To[int32](2)
	})
	pool := makePool("h100").NodeLabel("pool", "h100").Obj()
	cfg := builderTestConfig
	cfg.Namespace = ns
	objs, err := DesiredObjects(m, pool, 2, cfg)
	if err != nil {
		t.Fatal(err)
	}
	exposed, err := ExposureObjects(m, exposureTestConfig())
	if err != nil {
		t.Fatal(err)
	}
	objs = append(append(objs, exposed...), probeDaemonSet(pool, cfg))

	// Another engine, a DRA pool (a ResourceClaimTemplate) and a Gateway (routes).
	tiny := exposureTestModel(func(m *servingv1alpha1.InferenceModel) {
		m.Name, m.Namespace = "tiny", ns
		m.Spec.Model.URI = "hf://org/tiny-GGUF"
		m.Spec.Engine = servingv1alpha1.EngineSpec{Type: servingv1alpha1.EngineLlamaCpp, Port: 8000}
		m.Spec.GPU = servingv1alpha1.GPURequirements{Pool: "dra", Count: 2}
		m.Spec.Endpoint = &servingv1alpha1.EndpointSpec{Host: "tiny.example.com", GatewayRef: &servingv1alpha1.GatewayReference{Name: "edge"}}
	})
	draPool := makePool("dra").DeviceClass("gpu.nvidia.com").Obj()
	tinyObjs, err := DesiredObjects(tiny, draPool, 1, cfg)
	if err != nil {
		t.Fatal(err)
	}
	routed, err := ExposureObjects(tiny, exposureTestConfig())
	if err != nil {
		t.Fatal(err)
	}
	return append(append(objs, tinyObjs...), routed...)
}

// TestApplyOwnedWritesOnlyWhatChanged: children are created with a plain create, not
// written at all while they hold what the manager wants, put back when someone edits them,
// and lose what the manager stops wanting even though a create (not an apply) made them.
func TestApplyOwnedWritesOnlyWhatChanged(t *testing.T) {
	ctx := context.Background()
	ns, owner := ownerNamespace(t)
	c, writes := countingWriter(t)

	children := everyChild(t, ns)
	for _, obj := range children {
		if err := c.applyOwned(ctx, owner, obj); err != nil {
			t.Fatalf("first write of %T: %v", obj, err)
		}
		if obj.GetResourceVersion() == "" {
			t.Errorf("%T %s: the server's answer was not returned", obj, obj.GetName())
		}
	}
	if got := writes.take(); got["create"] != len(children) || len(got) != 1 {
		t.Errorf("first reconcile sent %v, want %d creates and nothing else", got, len(children))
	}

	// Rebuilt from scratch, as every reconcile does: the server's defaults and the fields
	// it fills in must not look like differences.
	for _, obj := range everyChild(t, ns) {
		if err := c.applyOwned(ctx, owner, obj); err != nil {
			t.Fatalf("second write of %T: %v", obj, err)
		}
		if obj.GetResourceVersion() == "" {
			t.Errorf("%T %s: the live object was not returned", obj, obj.GetName())
		}
		if got := writes.take(); len(got) != 0 {
			t.Errorf("reconciling an unchanged %T sent %v, want no writes", obj, got)
		}
	}

	// Someone edits a value the manager sets: it is put back.
	deploy := &appsv1.Deployment{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "llama"}, deploy); err != nil {
		t.Fatal(err)
	}
	want := deploy.Spec.Template.Spec.Containers[0].Image
	deploy.Spec.Template.Spec.Containers[0].Image = "attacker.test/engine:latest"
	if err := env.Client.Update(ctx, deploy, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatal(err)
	}
	for _, obj := range everyChild(t, ns) {
		if err := c.applyOwned(ctx, owner, obj); err != nil {
			t.Fatalf("write after the edit of %T: %v", obj, err)
		}
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(deploy), deploy); err != nil {
		t.Fatal(err)
	}
	if got := deploy.Spec.Template.Spec.Containers[0].Image; got != want {
		t.Errorf("edited image %q stayed, want %q back", got, want)
	}
	if got := writes.take(); got["patch"] != 1 || got["apply"] != 1 || len(got) != 2 {
		t.Errorf("repairing one edited Deployment sent %v, want 1 ownership patch and 1 apply", got)
	}

	// The manager stops wanting a field it set when it created the object: the field goes,
	// although the create recorded its ownership as an update, which apply alone does not
	// take as its own.
	sa := serviceAccountFor(everyChild(t, ns))
	sa.Name = "created-with-an-annotation"
	for _, step := range []struct {
		annotations map[string]string
		wantWrites  map[string]int
	}{
		{map[string]string{"example.test/owner": "team-a"}, map[string]int{"create": 1}},
		// The first apply after a create hands the create's field ownership over first.
		{nil, map[string]int{"patch": 1, "apply": 1}},
		{nil, map[string]int{}},
		{map[string]string{"example.test/owner": "team-b"}, map[string]int{"apply": 1}},
		{nil, map[string]int{"apply": 1}},
	} {
		desired := sa.DeepCopy()
		desired.Annotations = step.annotations
		if err := c.applyOwned(ctx, owner, desired); err != nil {
			t.Fatal(err)
		}
		live := &corev1.ServiceAccount{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(sa), live); err != nil {
			t.Fatal(err)
		}
		if got, want := live.Annotations["example.test/owner"], step.annotations["example.test/owner"]; got != want {
			t.Errorf("desired annotations %v: live has %v", step.annotations, live.Annotations)
		}
		if got := writes.take(); !reflect.DeepEqual(got, step.wantWrites) {
			t.Errorf("desired annotations %v: sent %v, want %v", step.annotations, got, step.wantWrites)
		}
	}
}

// TestApplyOwnedRepairsAdditions: an entry someone adds to a list or map the manager sets
// whole (a Service's selector, a Role's verbs) is a difference, and goes.
func TestApplyOwnedRepairsAdditions(t *testing.T) {
	ctx := context.Background()
	ns, owner := ownerNamespace(t)
	c, writes := countingWriter(t)
	for _, obj := range everyChild(t, ns) {
		if err := c.applyOwned(ctx, owner, obj); err != nil {
			t.Fatal(err)
		}
	}
	svc := &corev1.Service{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "llama"}, svc); err != nil {
		t.Fatal(err)
	}
	wantSelector := maps.Clone(svc.Spec.Selector)
	svc.Spec.Selector["example.test/extra"] = "x"
	if err := env.Client.Update(ctx, svc, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.Role{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "llama-runtime"}, role); err != nil {
		t.Fatal(err)
	}
	wantVerbs := slices.Clone(role.Rules[0].Verbs)
	role.Rules[0].Verbs = append(role.Rules[0].Verbs, "delete")
	if err := env.Client.Update(ctx, role, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatal(err)
	}
	writes.take()
	for _, obj := range everyChild(t, ns) {
		if err := c.applyOwned(ctx, owner, obj); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(svc), svc); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(svc.Spec.Selector, wantSelector) {
		t.Errorf("Service selector %v, want %v back", svc.Spec.Selector, wantSelector)
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(role), role); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(role.Rules[0].Verbs, wantVerbs) {
		t.Errorf("Role verbs %v, want %v back", role.Rules[0].Verbs, wantVerbs)
	}
	if got := writes.take(); got["apply"] != 2 || got["patch"] != 2 || len(got) != 2 {
		t.Errorf("repairing two objects sent %v, want 2 ownership patches and 2 applies", got)
	}
}

// TestApplyOwnedCacheBehind: when the cache has not seen an object we created, the create
// fails as AlreadyExists and the object is applied, its create-time ownership handed over
// first, so what the newer desired state drops still goes.
func TestApplyOwnedCacheBehind(t *testing.T) {
	ctx := context.Background()
	ns, owner := ownerNamespace(t)
	c, writes := countingWriter(t)
	sa := serviceAccountFor(everyChild(t, ns))
	first := sa.DeepCopy()
	first.Annotations = map[string]string{"example.test/owner": "team-a"}
	if err := c.applyOwned(ctx, owner, first); err != nil {
		t.Fatal(err)
	}
	writes.lagging[sa.Name] = true
	writes.take()
	if err := c.applyOwned(ctx, owner, sa.DeepCopy()); err != nil {
		t.Fatal(err)
	}
	live := &corev1.ServiceAccount{}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(sa), live); err != nil {
		t.Fatal(err)
	}
	if _, has := live.Annotations["example.test/owner"]; has {
		t.Errorf("annotation the newer desired state drops is still there: %v", live.Annotations)
	}
	if got := writes.take(); !reflect.DeepEqual(got, map[string]int{"create": 1, "patch": 1, "apply": 1}) {
		t.Errorf("sent %v, want a create (AlreadyExists), an ownership patch and an apply", got)
	}
}

// ownerNamespace is a new namespace, which owns the children these tests write.
func ownerNamespace(t *testing.T) (string, *corev1.Namespace) {
	t.Helper()
	ns := newNamespace(t, nil)
	owner := &corev1.Namespace{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: ns}, owner); err != nil {
		t.Fatal(err)
	}
	return ns, owner
}

func serviceAccountFor(objs []client.Object) *corev1.ServiceAccount {
	for _, o := range objs {
		if sa, ok := o.(*corev1.ServiceAccount); ok {
			return sa.DeepCopy()
		}
	}
	return nil
}
