package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
)

// applyOwned server-side applies obj (built with its TypeMeta set) as FieldOwner, with a
// controller reference to owner, and decodes the server's answer back into obj. Applying
// the same desired object twice is a no-op on the server: no new resourceVersion, no event.
func applyOwned(ctx context.Context, c client.Client, scheme *runtime.Scheme, owner client.Object, obj client.Object) error {
	if err := controllerutil.SetControllerReference(owner, obj, scheme); err != nil {
		return fmt.Errorf("setting owner of %T: %w", obj, err)
	}
	return applyShared(ctx, c, obj)
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
