package apivalidation

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
)

// mutation edits an object in its unstructured (JSON) form, so a test can write values the
// Go types cannot express (unknown enum strings, wrong types, malformed durations).
type mutation func(obj map[string]any)

// parent walks obj down the dotted path to the map holding its last key, creating
// missing maps when create is set; nil when a map is missing and create is not.
func parent(obj map[string]any, path string, create bool) (map[string]any, string) {
	keys := strings.Split(path, ".")
	m := obj
	for _, k := range keys[:len(keys)-1] {
		next, ok := m[k].(map[string]any)
		if !ok {
			if !create {
				return nil, ""
			}
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	return m, keys[len(keys)-1]
}

// set returns a mutation that sets the dotted path to v, creating maps on the way.
func set(path string, v any) mutation {
	return func(obj map[string]any) {
		m, key := parent(obj, path, true)
		m[key] = v
	}
}

// unset returns a mutation that removes the dotted path.
func unset(path string) mutation {
	return func(obj map[string]any) {
		if m, key := parent(obj, path, false); m != nil {
			delete(m, key)
		}
	}
}

// all combines mutations.
func all(ms ...mutation) mutation {
	return func(obj map[string]any) {
		for _, m := range ms {
			m(obj)
		}
	}
}

// repeat returns n copies of item, to overflow MaxItems bounds.
func repeat(n int, item func(i int) any) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = item(i)
	}
	return out
}

// validationCase is one object a user might apply. With onUpdate set, the base object is
// created first and onUpdate is applied as an update (immutability, transition rules).
type validationCase struct {
	name     string
	mutate   mutation
	onUpdate mutation
	status   bool     // apply onUpdate through the status subresource
	wantErrs []string // substrings the API server's error must contain; empty = accepted
}

func toUnstructured(t *testing.T, obj runtime.Object) *unstructured.Unstructured {
	t.Helper()
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatalf("converting %T: %v", obj, err)
	}
	u := &unstructured.Unstructured{Object: m}
	gvk, err := apiutil.GVKForObject(obj, env.Scheme)
	if err != nil {
		t.Fatal(err)
	}
	u.SetGroupVersionKind(gvk)
	return u
}

// runCases creates base (mutated) for each case and checks the API server's verdict.
// Each case gets its own name; namespaced objects go to a fresh namespace per test.
func runCases(t *testing.T, base func() client.Object, cases []validationCase) {
	t.Helper()
	ctx := context.Background()
	ns := ""
	if namespaced(t, base()) {
		ns = newNamespace(t)
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			obj := toUnstructured(t, base())
			obj.SetNamespace(ns)
			obj.SetName(fmt.Sprintf("%s-%d", obj.GetName(), i))
			if tc.mutate != nil {
				tc.mutate(obj.Object)
			}
			err := env.Client.Create(ctx, obj)
			if tc.onUpdate != nil {
				if err != nil {
					t.Fatalf("creating the base object for an update case: %v", err)
				}
				t.Cleanup(func() { _ = env.Client.Delete(ctx, obj) })
				if tc.status {
					// Status is not written on create; the first status write is the update.
					tc.onUpdate(obj.Object)
					err = env.Client.Status().Update(ctx, obj)
				} else {
					tc.onUpdate(obj.Object)
					err = env.Client.Update(ctx, obj)
				}
			} else if err == nil {
				t.Cleanup(func() { _ = env.Client.Delete(ctx, obj) })
			}
			checkVerdict(t, err, tc.wantErrs)
		})
	}
}

func checkVerdict(t *testing.T, err error, wantErrs []string) {
	t.Helper()
	if len(wantErrs) == 0 {
		if err != nil {
			t.Fatalf("want the object accepted, got: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("want the object rejected with %q, but it was accepted", wantErrs)
	}
	if !apierrors.IsInvalid(err) {
		t.Fatalf("want an Invalid error, got %v", err)
	}
	for _, want := range wantErrs {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

func namespaced(t *testing.T, obj client.Object) bool {
	t.Helper()
	ok, err := env.Client.IsObjectNamespaced(obj)
	if err != nil {
		t.Fatalf("looking up scope of %T: %v", obj, err)
	}
	return ok
}

func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "apivalidation-"}}
	if err := env.Client.Create(context.Background(), ns); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	return ns.Name
}
