package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"reflect"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/util/csaupgrade"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// ownedWriter writes the objects a reconciler owns. client reads from the manager's cache,
// which strips managed fields; reader reads the API server, for the one write that needs
// the live field ownership.
type ownedWriter struct {
	client client.Client
	reader client.Reader
	scheme *runtime.Scheme
}

// newOwnedWriter is an ownedWriter; with no reader, c's reads serve for it.
func newOwnedWriter(c client.Client, reader client.Reader, scheme *runtime.Scheme) ownedWriter {
	if reader == nil {
		reader = c
	}
	return ownedWriter{client: c, reader: reader, scheme: scheme}
}

// applyOwned makes the live object match obj (built with its TypeMeta set), with a
// controller reference to owner, and leaves the server's view of it in obj. It writes
// only what needs writing:
//   - absent from the cache: a plain create (a server-side apply that creates costs the
//     API server noticeably more, and creating is what a new model does five times);
//   - present, last written by us from the same desired object (the hash annotation) and
//     still holding every value we set (nobody edited them): nothing is sent at all;
//   - otherwise: a server-side apply as FieldOwner, which also removes what we set before
//     and no longer want. An object we created is first handed from our create-time
//     ("Update") field ownership to our apply ownership, or the apply could not remove
//     fields the create set.
func (w ownedWriter) applyOwned(ctx context.Context, owner client.Object, obj client.Object) error {
	c := w.client
	if err := controllerutil.SetControllerReference(owner, obj, w.scheme); err != nil {
		return fmt.Errorf("setting owner of %T: %w", obj, err)
	}
	hash, err := desiredHash(obj)
	if err != nil {
		return err
	}
	annotations := obj.GetAnnotations()
	if annotations == nil {
		annotations = map[string]string{}
	}
	annotations[servingv1alpha1.AnnotationDesiredHash] = hash
	obj.SetAnnotations(annotations)

	live := reflect.New(reflect.TypeOf(obj).Elem()).Interface().(client.Object)
	err = c.Get(ctx, client.ObjectKeyFromObject(obj), live)
	switch {
	case apierrors.IsNotFound(err):
		created := obj.DeepCopyObject().(client.Object)
		err := c.Create(ctx, created, client.FieldOwner(FieldOwner))
		if err == nil {
			setFrom(obj, created)
			return nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating %s %s: %w", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName(), err)
		}
		// Our cache has not seen an object created moments ago (perhaps from an older
		// desired state): hand its create-time ownership over and apply.
		if err := w.upgradeOwnership(ctx, obj); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("getting %s %s: %w", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName(), err)
	case live.GetAnnotations()[servingv1alpha1.AnnotationDesiredHash] == hash && holdsDesired(obj, live):
		setFrom(obj, live)
		return nil
	default:
		if err := w.upgradeOwnership(ctx, obj); err != nil {
			return err
		}
	}
	return applyShared(ctx, c, obj)
}

// setFrom makes obj the server's version of it, src, keeping obj's TypeMeta (decoded
// objects come without it, and apply needs it).
func setFrom(obj, src client.Object) {
	gvk := obj.GetObjectKind().GroupVersionKind()
	reflect.ValueOf(obj).Elem().Set(reflect.ValueOf(src).Elem())
	obj.GetObjectKind().SetGroupVersionKind(gvk)
}

// upgradeOwnership turns the field ownership our create recorded (operation Update) into
// apply ownership. It reads the live managed fields from the API server (the cache has
// none) and patches them guarded by that resourceVersion, reading again when another
// writer (a Deployment's status, say) got in between.
func (w ownedWriter) upgradeOwnership(ctx context.Context, obj client.Object) error {
	gvk, err := apiutil.GVKForObject(obj, w.scheme)
	if err != nil {
		return err
	}
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		live := &metav1.PartialObjectMetadata{}
		live.SetGroupVersionKind(gvk)
		if err := w.reader.Get(ctx, client.ObjectKeyFromObject(obj), live); err != nil {
			return err
		}
		patch, err := csaupgrade.UpgradeManagedFieldsPatch(live, sets.New(FieldOwner), FieldOwner)
		if err != nil || patch == nil {
			return err
		}
		return w.client.Patch(ctx, live, client.RawPatch(types.JSONPatchType, patch))
	})
	if err = client.IgnoreNotFound(err); err != nil {
		return fmt.Errorf("handing field ownership of %s %s to server-side apply: %w", gvk.Kind, obj.GetName(), err)
	}
	return nil
}

// holdsDesired reports whether live still carries every label, annotation and owner
// reference of desired, and the rest of desired as it was written: every value desired
// sets is there, and every list and map desired sets is there whole, with nothing added or
// removed. A list or map someone else extended is a difference (the apply then puts an
// atomic one back, and leaves another manager's entries of a granular one: a request that
// writes nothing). Values desired leaves empty are not compared: the server defaults
// them. Metadata the server fills in, and status, are not compared; neither are the
// labels and annotations others add (a Deployment's revision, a rollout restart's time).
// A mutating webhook that rewrites a value we set makes every reconcile send an apply
// that changes nothing; it does not loop.
func holdsDesired(desired, live client.Object) bool {
	for _, ref := range desired.GetOwnerReferences() {
		if !hasOwnerReference(live.GetOwnerReferences(), ref) {
			return false
		}
	}
	// Field by field, without copies: the object's metadata is compared as any nested
	// object metadata is (labels and annotations); type and status are not compared.
	want, got := reflect.ValueOf(desired).Elem(), reflect.ValueOf(live).Elem()
	for i := range want.NumField() {
		switch f := want.Type().Field(i); {
		case !f.IsExported(), f.Name == "TypeMeta", f.Name == "Status":
		case !holds(want.Field(i), got.Field(i)):
			return false
		}
	}
	return true
}

var (
	quantityType   = reflect.TypeFor[resource.Quantity]()
	objectMetaType = reflect.TypeFor[metav1.ObjectMeta]()
)

// holds is holdsDesired's comparison of one value: want's empty values are not compared;
// its non-empty lists and maps must match whole; nested object metadata (a pod template's)
// is compared as the top-level labels and annotations are.
func holds(want, got reflect.Value) bool {
	switch want.Type() {
	case quantityType:
		if want.IsZero() {
			return true
		}
		w, g := want.Interface().(resource.Quantity), got.Interface().(resource.Quantity)
		return w.Cmp(g) == 0
	case objectMetaType:
		w, g := want.Interface().(metav1.ObjectMeta), got.Interface().(metav1.ObjectMeta)
		return equality.Semantic.DeepDerivative(w.Labels, g.Labels) && equality.Semantic.DeepDerivative(w.Annotations, g.Annotations)
	}
	switch want.Kind() {
	case reflect.Pointer, reflect.Interface:
		if want.IsNil() {
			return true
		}
		return !got.IsNil() && holds(want.Elem(), got.Elem())
	case reflect.Struct:
		for i := range want.NumField() {
			if want.Type().Field(i).IsExported() && !holds(want.Field(i), got.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Slice:
		if want.Len() == 0 {
			return true
		}
		if want.Len() != got.Len() {
			return false
		}
		for i := range want.Len() {
			if !holds(want.Index(i), got.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Map:
		if want.Len() == 0 {
			return true
		}
		if want.Len() != got.Len() {
			return false
		}
		for _, k := range want.MapKeys() {
			g := got.MapIndex(k)
			if !g.IsValid() || !holds(want.MapIndex(k), g) {
				return false
			}
		}
		return true
	case reflect.String:
		return want.Len() == 0 || want.String() == got.String()
	default:
		return want.Equal(got)
	}
}

func hasOwnerReference(refs []metav1.OwnerReference, want metav1.OwnerReference) bool {
	for _, r := range refs {
		if equality.Semantic.DeepEqual(r, want) {
			return true
		}
	}
	return false
}

// applyShared server-side applies obj as FieldOwner without an owner reference, for
// objects several owners share, and decodes the server's answer back into obj.
func applyShared(ctx context.Context, c client.Client, obj client.Object) error {
	u, err := applyConfig(obj)
	if err != nil {
		return err
	}
	if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return fmt.Errorf("applying %s %s: %w", u.GetKind(), u.GetName(), err)
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, obj); err != nil {
		return fmt.Errorf("decoding applied %s: %w", u.GetKind(), err)
	}
	return nil
}

// applyConfig turns a typed object into the apply configuration the manager means.
// Typed structs carry zero values that are not intent: a null creationTimestamp and an
// empty status. Leaving them in would make the manager claim fields it does not set.
func applyConfig(obj client.Object) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, fmt.Errorf("converting %T: %w", obj, err)
	}
	delete(m, "status")
	unstructured.RemoveNestedField(m, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(m, "spec", "template", "metadata", "creationTimestamp")
	return &unstructured.Unstructured{Object: m}, nil
}

// desiredHash fingerprints desired objects, to tell whether they changed since last applied.
func desiredHash(objs ...client.Object) (string, error) {
	h := sha256.New()
	for _, o := range objs {
		data, err := json.Marshal(o)
		if err != nil {
			return "", fmt.Errorf("hashing %T: %w", o, err)
		}
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
