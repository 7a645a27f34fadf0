package controllers

import (
	"context"
	"fmt"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/internal/signing"
	"github.com/helixflow/helixflow/internal/usage"
)

// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update;patch;delete

// JWKSReconciler publishes the public signing keys as the ConfigMap helixflow-jwks in every
// namespace that has an InferenceModel, so runtimes read public keys in their own namespace
// and nothing of the manager's. The same ConfigMap carries the certificate of the usage
// aggregator's CA (usage.CAConfigMapKey), which the model pods mount to verify the
// aggregator with. Requests are namespaces (Name is the namespace).
type JWKSReconciler struct {
	Client client.Client
	// Namespace is the manager's namespace, where the signing-key Secret lives.
	Namespace string
	// Issuer is the iss the token service signs, published for the runtimes to require.
	Issuer string
}

func (r *JWKSReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ns := req.Name
	var models servingv1alpha1.InferenceModelList
	if err := r.Client.List(ctx, &models, client.InNamespace(ns), client.Limit(1), client.UnsafeDisableDeepCopy); err != nil {
		return ctrl.Result{}, fmt.Errorf("listing InferenceModels in %s: %w", ns, err)
	}
	if len(models.Items) == 0 {
		return ctrl.Result{}, r.unpublish(ctx, ns)
	}
	jwks, err := r.publicKeys(ctx)
	if err != nil || jwks == nil {
		// No keys yet: the signing-key Secret's creation brings every namespace back.
		return ctrl.Result{}, err
	}
	cm := &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: auth.JWKSConfigMapName, Labels: managedLabels()},
		Data:       map[string]string{auth.JWKSDataKey: string(jwks), auth.IssuerDataKey: r.Issuer},
	}
	live := &corev1.ConfigMap{}
	liveErr := r.Client.Get(ctx, client.ObjectKeyFromObject(cm), live)
	if client.IgnoreNotFound(liveErr) != nil {
		return ctrl.Result{}, fmt.Errorf("getting ConfigMap %s/%s: %w", ns, cm.Name, liveErr)
	}
	// (live is empty when there is no ConfigMap yet: nothing published.)
	bundle, next, err := r.usageCA(ctx, []byte(live.Data[usage.CAConfigMapKey]))
	if err != nil {
		return ctrl.Result{}, err
	}
	if len(bundle) > 0 {
		cm.Data[usage.CAConfigMapKey] = string(bundle)
	}
	var res ctrl.Result
	if !next.IsZero() {
		// The previous CA leaves the bundle then.
		res.RequeueAfter = max(time.Until(next), 0) + time.Second
	}
	// Every model created in the namespace brings it back: a thousand models, a thousand
	// applies that change nothing, unless the published ConfigMap is seen to be current.
	if liveErr == nil && maps.Equal(live.Data, cm.Data) && len(live.BinaryData) == 0 && equality.Semantic.DeepDerivative(cm.Labels, live.Labels) {
		return res, nil
	}
	if err := applyShared(ctx, r.Client, cm); err != nil {
		return ctrl.Result{}, err
	}
	return res, nil
}

// publicKeys renders the JWKS from the signing-key Secret; nil when there are no keys yet.
func (r *JWKSReconciler) publicKeys(ctx context.Context) ([]byte, error) {
	sec := &corev1.Secret{}
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: r.Namespace, Name: SigningKeySecretName}, sec); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	ks, err := signing.DecodeSecretData(sec.Data)
	if err != nil {
		log.FromContext(ctx).Error(err, "signing-key Secret unreadable; JWKS left as it is until the leader replaces it")
		return nil, nil
	}
	return ks.JWKS()
}

// usageCA is the usage aggregator's CA bundle to publish, given the one published: the
// current CA's certificate, with the previous CA's for usage.CAOverlap after a rotation
// (next is when that ends). While there is no CA Secret (none made yet, or deleted, until an
// aggregator has made the next) the published bundle stays, so the model pods keep the file
// they verify the aggregator with; the Secret's creation brings every namespace back. A
// Secret that cannot be decoded is logged and leaves the published bundle too (the
// aggregators replace it), and does not hold up the JWKS. The Secret is read from the
// cache, which holds it because it carries the managed-by label.
func (r *JWKSReconciler) usageCA(ctx context.Context, published []byte) (bundle []byte, next time.Time, err error) {
	sec := &corev1.Secret{}
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: r.Namespace, Name: usage.CASecretName}, sec); err != nil {
		if apierrors.IsNotFound(err) {
			return published, time.Time{}, nil
		}
		return nil, time.Time{}, fmt.Errorf("reading the usage CA Secret: %w", err)
	}
	bundle, next, err = usage.PublishedCA(sec.Data, time.Now())
	if err != nil {
		log.FromContext(ctx).Error(err, "usage CA Secret unreadable; the published CA stays until an aggregator replaces it")
		return published, time.Time{}, nil
	}
	return bundle, next, nil
}

// unpublish removes the JWKS from a namespace with no models left.
func (r *JWKSReconciler) unpublish(ctx context.Context, ns string) error {
	cm := &corev1.ConfigMap{}
	err := r.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: auth.JWKSConfigMapName}, cm)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("getting ConfigMap %s: %w", auth.JWKSConfigMapName, err)
	}
	if err := r.Client.Delete(ctx, cm); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("deleting ConfigMap %s: %w", auth.JWKSConfigMapName, err)
	}
	return nil
}

// modelNamespaces is one request per namespace that has an InferenceModel.
func modelNamespaces(ctx context.Context, c client.Reader) []ctrl.Request {
	var models servingv1alpha1.InferenceModelList
	if err := c.List(ctx, &models, client.UnsafeDisableDeepCopy); err != nil {
		log.FromContext(ctx).Error(err, "listing InferenceModels")
		return nil
	}
	seen := map[string]bool{}
	var reqs []ctrl.Request
	for i := range models.Items {
		if ns := models.Items[i].Namespace; !seen[ns] {
			seen[ns] = true
			reqs = append(reqs, ctrl.Request{NamespacedName: types.NamespacedName{Name: ns}})
		}
	}
	return reqs
}

// SetupWithManager watches InferenceModels (a namespace gains or loses its first model), the
// published ConfigMaps (edited or deleted by someone), the signing-key Secret (rotation:
// every namespace with a model gets the new set) and the usage CA Secret.
func (r *JWKSReconciler) SetupWithManager(mgr ctrl.Manager) error {
	c := mgr.GetClient()
	toNamespace := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []ctrl.Request {
		return []ctrl.Request{{NamespacedName: types.NamespacedName{Name: o.GetNamespace()}}}
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("jwks").
		Watches(&servingv1alpha1.InferenceModel{}, toNamespace, builder.WithPredicates(predicate.Funcs{
			// Only a model appearing or going changes whether its namespace needs the JWKS.
			UpdateFunc: func(event.UpdateEvent) bool { return false },
		})).
		Watches(&corev1.ConfigMap{}, toNamespace, builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
			return o.GetName() == auth.JWKSConfigMapName
		}))).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, _ client.Object) []ctrl.Request {
			return modelNamespaces(ctx, c)
		}), builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
			return o.GetNamespace() == r.Namespace && (o.GetName() == SigningKeySecretName || o.GetName() == usage.CASecretName)
		}))).
		Complete(r)
}
