package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/signing"
)

// SigningKeySecretName is the Secret, in the manager's namespace, that holds the JWT signing
// keys (private keys: it is never copied anywhere else).
const SigningKeySecretName = "helixflow-jwt-signing-keys"

// SigningKeyReconciler creates the signing keys, rotates them every RotationPeriod and drops
// a retired key once every token it signed has expired. Only the leader runs it.
type SigningKeyReconciler struct {
	Client client.Client
	// Namespace is the manager's namespace.
	Namespace      string
	Algorithm      signing.Algorithm
	RotationPeriod time.Duration
	// MaxTokenTTL is the longest lifetime of a token, which a retired key is kept for.
	MaxTokenTTL time.Duration
	Now         func() time.Time
}

func (r *SigningKeyReconciler) Reconcile(ctx context.Context, _ ctrl.Request) (ctrl.Result, error) {
	sec := &corev1.Secret{}
	err := r.Client.Get(ctx, client.ObjectKey{Namespace: r.Namespace, Name: SigningKeySecretName}, sec)
	exists := err == nil
	if err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("getting Secret %s: %w", SigningKeySecretName, err)
	}
	var current signing.KeySet
	if exists {
		if current, err = signing.DecodeSecretData(sec.Data); err != nil {
			// Keys that cannot be read cannot verify anything either: start a new set.
			log.FromContext(ctx).Error(err, "signing-key Secret unreadable; replacing it with new keys", "secret", SigningKeySecretName)
			current = signing.KeySet{}
		}
	}
	now := r.Now()
	next, changed, err := signing.Rotate(current, r.Algorithm, now, r.RotationPeriod, r.MaxTokenTTL)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("rotating signing keys: %w", err)
	}
	if changed {
		if err := r.write(ctx, sec, exists, next); err != nil {
			return ctrl.Result{}, err
		}
		active, _ := next.Active()
		log.FromContext(ctx).Info("signing keys updated", "activeKid", active.ID, "keys", len(next.Keys))
	}
	return ctrl.Result{RequeueAfter: max(signing.NextEvent(next, r.RotationPeriod, r.MaxTokenTTL).Sub(now), time.Second)}, nil
}

// write stores the key set. Create and Update (not apply) so that a stale cache makes the
// write fail instead of replacing keys another writer just made.
func (r *SigningKeyReconciler) write(ctx context.Context, sec *corev1.Secret, exists bool, ks signing.KeySet) error {
	data, err := signing.EncodeSecretData(ks)
	if err != nil {
		return err
	}
	sec.Data = data
	if exists {
		if err := r.Client.Update(ctx, sec); err != nil {
			return fmt.Errorf("updating Secret %s: %w", SigningKeySecretName, err)
		}
		return nil
	}
	sec.ObjectMeta = metav1.ObjectMeta{Namespace: r.Namespace, Name: SigningKeySecretName, Labels: managedLabels()}
	sec.Type = corev1.SecretTypeOpaque
	if err := r.Client.Create(ctx, sec); err != nil {
		return fmt.Errorf("creating Secret %s: %w", SigningKeySecretName, err)
	}
	return nil
}

func managedLabels() map[string]string {
	return map[string]string{servingv1alpha1.LabelManagedBy: servingv1alpha1.ManagedByValue}
}

// signingSecretOnly passes events of the signing-key Secret only.
func signingSecretOnly(namespace string) predicate.Predicate {
	return predicate.NewPredicateFuncs(func(o client.Object) bool {
		return o.GetNamespace() == namespace && o.GetName() == SigningKeySecretName
	})
}

// signingKeyRequest is the one request both signing-key controllers work on.
func signingKeyRequest(namespace string) reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: namespace, Name: SigningKeySecretName}}
}

// SetupWithManager runs the rotation on the leader, once at start (the Secret may not exist
// yet, so no watch event would come) and whenever the Secret changes or is deleted.
func (r *SigningKeyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	req := signingKeyRequest(r.Namespace)
	return ctrl.NewControllerManagedBy(mgr).
		Named("signingkeys").
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []ctrl.Request {
			return []ctrl.Request{req}
		}), builder.WithPredicates(signingSecretOnly(r.Namespace))).
		WatchesRawSource(source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
			q.Add(req)
			return nil
		})).
		Complete(r)
}

// SigningKeyLoader keeps Store in step with the signing-key Secret on every replica, leader
// or not: every replica serves the token service.
type SigningKeyLoader struct {
	Client    client.Client
	Namespace string
	Store     *signing.Store
}

func (l *SigningKeyLoader) Reconcile(ctx context.Context, _ ctrl.Request) (ctrl.Result, error) {
	sec := &corev1.Secret{}
	if err := l.Client.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: SigningKeySecretName}, sec); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	ks, err := signing.DecodeSecretData(sec.Data)
	if err != nil {
		// The leader replaces an unreadable Secret; keep serving the last good keys meanwhile.
		log.FromContext(ctx).Error(err, "signing-key Secret unreadable; keeping the keys loaded before")
		return ctrl.Result{}, nil
	}
	l.Store.Set(ks)
	return ctrl.Result{}, nil
}

func (l *SigningKeyLoader) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("signingkeys-loader").
		WithOptions(controller.Options{NeedLeaderElection: ptr.To(false)}).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []ctrl.Request {
			return []ctrl.Request{signingKeyRequest(l.Namespace)}
		}), builder.WithPredicates(signingSecretOnly(l.Namespace))).
		Complete(l)
}
