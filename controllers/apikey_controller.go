package controllers

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
)

// +kubebuilder:rbac:groups=serving.helixflow.io,resources=apikeys,verbs=get;list;watch
// +kubebuilder:rbac:groups=serving.helixflow.io,resources=apikeys/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;patch;delete

const (
	// APIKeySecretDataKey is the Secret data key a generated API key is written under.
	APIKeySecretDataKey = "api-key"
	// annotationKeyHash on a generated Secret is the hash of the key the manager wrote into it.
	// It tells a Secret the manager wrote (whose key may be newer than the status after a crash
	// between the two writes) from one someone edited (whose key must not be trusted).
	annotationKeyHash = "serving.helixflow.io/key-hash"
	// byoResync is how often a brought-your-own Secret is re-read. Those Secrets are the user's
	// and carry no HelixFlow label, so they are not in the manager's (label-filtered) cache.
	byoResync = 5 * time.Minute
	// DefaultKeyRotationGrace is how long a rotated-out key stays valid.
	DefaultKeyRotationGrace = 24 * time.Hour
)

// ApiKeyReconciler generates API keys into Secrets, reads brought-your-own keys, rotates on
// request, and keeps the ApiKey's status (key ID and hash, previous keys, conditions) current.
// The plaintext key is only ever in the Secret.
type ApiKeyReconciler struct {
	Client client.Client
	// APIReader reads without the cache: brought-your-own Secrets, and a Secret that the
	// cache has not seen yet after the manager created it.
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder
	// RotationGrace is how long the previous key stays valid after a rotation.
	RotationGrace time.Duration
	// Now is the clock; tests may replace it.
	Now func() time.Time
}

// keyChange is what happened to the key material in this reconcile.
type keyChange int

const (
	keyUnchanged keyChange = iota
	keyCreated             // first key of a new ApiKey
	keyRotated             // rotation requested: the old key stays valid for the grace period
	keyReplaced            // Secret deleted, or a brought-your-own key changed: the old key stops now
)

// keyState is the key the ApiKey stands for after this reconcile, or the problem that
// prevents having one.
type keyState struct {
	keyID, keyHash string
	change         keyChange
	// reason and message are set when there is no usable key (Secret missing, conflict...).
	reason, message string
}

func (r *ApiKeyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ak := &servingv1alpha1.ApiKey{}
	if err := r.Client.Get(ctx, req.NamespacedName, ak); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !ak.DeletionTimestamp.IsZero() {
		// The generated Secret has a controller reference; the garbage collector removes it,
		// and runtimes stop accepting the key as soon as their informer sees the deletion.
		return ctrl.Result{}, nil
	}
	now := r.Now()
	var ks keyState
	var err error
	if ak.Spec.ExistingSecretRef != nil {
		ks, err = r.readBroughtKey(ctx, ak)
	} else {
		ks, err = r.ensureGeneratedKey(ctx, ak)
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	st := computeApiKeyStatus(ak, ks, now, r.RotationGrace)
	if err := r.writeStatus(ctx, ak, st, ks); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: apiKeyRequeue(ak, st, now)}, nil
}

// readBroughtKey hashes the key in the user's Secret. Nothing is written.
func (r *ApiKeyReconciler) readBroughtKey(ctx context.Context, ak *servingv1alpha1.ApiKey) (keyState, error) {
	ref := ak.Spec.ExistingSecretRef
	sec := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: ak.Namespace, Name: ref.Name}, sec); err != nil {
		if apierrors.IsNotFound(err) {
			return keyState{reason: servingv1alpha1.ApiKeyReasonSecretNotFound,
				message: fmt.Sprintf("Secret %s named in spec.existingSecretRef not found", ref.Name)}, nil
		}
		return keyState{}, fmt.Errorf("getting Secret %s: %w", ref.Name, err)
	}
	key := broughtKey(sec.Data[ref.Key])
	if key == "" {
		return keyState{reason: servingv1alpha1.ApiKeyReasonSecretKeyMissing,
			message: fmt.Sprintf("Secret %s has no non-empty data key %q (spec.existingSecretRef.key)", ref.Name, ref.Key)}, nil
	}
	if len(key) > auth.MaxKeyLength {
		// Runtimes do not hash longer credentials; such a key could never authenticate.
		return keyState{reason: servingv1alpha1.ApiKeyReasonKeyTooLong,
			message: fmt.Sprintf("the key in Secret %s is %d bytes; keys may be at most %d", ref.Name, len(key), auth.MaxKeyLength)}, nil
	}
	ks := keyState{keyID: auth.DisplayKeyID(key), keyHash: auth.HashKey(key).String()}
	switch ak.Status.KeyHash {
	case "":
		ks.change = keyCreated
	case ks.keyHash:
	default:
		// The owner replaced their key; the old one is theirs to retire, and they did.
		ks.change = keyReplaced
	}
	return ks, nil
}

// broughtKey is the key as clients will send it: Secrets made with --from-file often end in
// a newline, which an Authorization header cannot carry.
func broughtKey(data []byte) string { return strings.TrimSpace(string(data)) }

// ensureGeneratedKey makes sure the ApiKey's Secret holds a key the manager generated, and
// generates a new one only when asked (rotation) or when the Secret is gone.
func (r *ApiKeyReconciler) ensureGeneratedKey(ctx context.Context, ak *servingv1alpha1.ApiKey) (keyState, error) {
	name := ak.DefaultSecretName()
	sec := &corev1.Secret{}
	err := r.Client.Get(ctx, client.ObjectKey{Namespace: ak.Namespace, Name: name}, sec)
	switch {
	case apierrors.IsNotFound(err):
		return r.createKeySecret(ctx, ak, name)
	case err != nil:
		return keyState{}, fmt.Errorf("getting Secret %s: %w", name, err)
	case !metav1.IsControlledBy(sec, ak):
		return conflictState(name), nil
	}
	stored := string(sec.Data[APIKeySecretDataKey])
	storedHash := auth.HashKey(stored).String()
	if stored == "" || sec.Annotations[annotationKeyHash] != storedHash {
		// Someone edited the Secret. The key in it is not one the manager made, so it is not
		// trusted; the key in status stays the accepted one until a rotation is requested.
		r.Recorder.Eventf(ak, nil, corev1.EventTypeWarning, "SecretModified", "VerifyKey",
			"Secret %s was changed outside HelixFlow; its content is ignored and key %s stays in force. Annotate the ApiKey %s=<new value> to get a new key",
			name, ak.Status.KeyID, servingv1alpha1.AnnotationRotate)
		if ak.Status.KeyHash == "" {
			return keyState{reason: servingv1alpha1.ApiKeyReasonSecretModified, message: fmt.Sprintf("Secret %s was changed outside HelixFlow; request a rotation to get a new key", name)}, nil
		}
		return keyState{keyID: ak.Status.KeyID, keyHash: ak.Status.KeyHash}, nil
	}
	if ak.Annotations[servingv1alpha1.AnnotationRotate] != sec.Annotations[servingv1alpha1.AnnotationRotate] {
		return r.rotateKey(ctx, ak, sec)
	}
	keyID, _ := auth.KeyIDOf(stored)
	ks := keyState{keyID: keyID, keyHash: storedHash}
	if ak.Status.KeyHash != "" && ak.Status.KeyHash != storedHash {
		// The Secret holds a newer key than the status: the manager rotated and stopped before
		// it wrote the status. Finish that rotation.
		ks.change = keyRotated
	} else if ak.Status.KeyHash == "" {
		ks.change = keyCreated
	}
	return ks, nil
}

func conflictState(name string) keyState {
	return keyState{reason: servingv1alpha1.ApiKeyReasonSecretConflict, message: fmt.Sprintf("Secret %s exists and is not owned by this ApiKey; set spec.secretName to another name", name)}
}

// createKeySecret generates a key into a new Secret. A Secret that is missing while the
// status names a key was deleted: the new key replaces the old one at once.
func (r *ApiKeyReconciler) createKeySecret(ctx context.Context, ak *servingv1alpha1.ApiKey, name string) (keyState, error) {
	key, keyID, err := auth.GenerateKey()
	if err != nil {
		return keyState{}, err
	}
	sec, err := r.keySecret(ak, name, key)
	if err != nil {
		return keyState{}, err
	}
	if err := r.Client.Create(ctx, sec); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return r.secretExistsState(ctx, ak, name)
		}
		return keyState{}, fmt.Errorf("creating Secret %s: %w", name, err)
	}
	ks := keyState{keyID: keyID, keyHash: auth.HashKey(key).String(), change: keyCreated}
	if ak.Status.KeyHash != "" {
		ks.change = keyReplaced
		r.Recorder.Eventf(ak, nil, corev1.EventTypeWarning, "SecretDeleted", "GenerateKey",
			"Secret %s was deleted; generated key %s into a new Secret, key %s is no longer accepted", name, keyID, ak.Status.KeyID)
	} else {
		r.Recorder.Eventf(ak, nil, corev1.EventTypeNormal, "KeyGenerated", "GenerateKey", "generated key %s into Secret %s", keyID, name)
	}
	return ks, nil
}

// secretExistsState handles a Create that found the Secret already there: either the cache
// has not caught up with a Secret the manager created (try again later), or the name is
// taken by someone else's Secret.
func (r *ApiKeyReconciler) secretExistsState(ctx context.Context, ak *servingv1alpha1.ApiKey, name string) (keyState, error) {
	sec := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: ak.Namespace, Name: name}, sec); err != nil {
		return keyState{}, fmt.Errorf("getting Secret %s: %w", name, err)
	}
	if metav1.IsControlledBy(sec, ak) {
		return keyState{}, fmt.Errorf("secret %s is not in the cache yet", name)
	}
	return conflictState(name), nil
}

// rotateKey writes a new key into the Secret. The Secret is written before the status, so a
// crash in between leaves the new key in the Secret, which the next reconcile adopts.
func (r *ApiKeyReconciler) rotateKey(ctx context.Context, ak *servingv1alpha1.ApiKey, sec *corev1.Secret) (keyState, error) {
	key, keyID, err := auth.GenerateKey()
	if err != nil {
		return keyState{}, err
	}
	want, err := r.keySecret(ak, sec.Name, key)
	if err != nil {
		return keyState{}, err
	}
	sec.Data, sec.Annotations = want.Data, want.Annotations
	// Update, not apply: the resourceVersion makes a stale cache fail instead of rotating twice.
	if err := r.Client.Update(ctx, sec); err != nil {
		return keyState{}, fmt.Errorf("writing rotated key to Secret %s: %w", sec.Name, err)
	}
	r.Recorder.Eventf(ak, nil, corev1.EventTypeNormal, "KeyRotated", "RotateKey",
		"generated key %s into Secret %s; key %s stays valid for %s", keyID, sec.Name, ak.Status.KeyID, r.RotationGrace)
	return keyState{keyID: keyID, keyHash: auth.HashKey(key).String(), change: keyRotated}, nil
}

// keySecret is the Secret holding a generated key, labelled so the manager's cache sees it.
func (r *ApiKeyReconciler) keySecret(ak *servingv1alpha1.ApiKey, name, key string) (*corev1.Secret, error) {
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ak.Namespace,
			Name:      name,
			Labels: map[string]string{
				servingv1alpha1.LabelManagedBy: servingv1alpha1.ManagedByValue,
				servingv1alpha1.LabelApiKey:    ak.Name,
			},
			Annotations: map[string]string{
				annotationKeyHash:                auth.HashKey(key).String(),
				servingv1alpha1.AnnotationRotate: ak.Annotations[servingv1alpha1.AnnotationRotate],
			},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{APIKeySecretDataKey: []byte(key)},
	}
	if err := controllerutil.SetControllerReference(ak, sec, r.Scheme); err != nil {
		return nil, fmt.Errorf("setting owner of Secret %s: %w", name, err)
	}
	return sec, nil
}

// writeStatus updates the status only when it changed and records Ready transitions.
func (r *ApiKeyReconciler) writeStatus(ctx context.Context, ak *servingv1alpha1.ApiKey, st servingv1alpha1.ApiKeyStatus, ks keyState) error {
	if equality.Semantic.DeepEqual(ak.Status, st) {
		return nil
	}
	before := meta.FindStatusCondition(ak.Status.Conditions, servingv1alpha1.ConditionReady)
	ak.Status = st
	if err := r.Client.Status().Update(ctx, ak); err != nil {
		return fmt.Errorf("updating status: %w", err)
	}
	now := meta.FindStatusCondition(st.Conditions, servingv1alpha1.ConditionReady)
	// A new key becoming Ready is already told by KeyGenerated; every other change of Ready is news.
	newAndReady := before == nil && now.Status == metav1.ConditionTrue && ks.change == keyCreated
	if !newAndReady && (before == nil || before.Status != now.Status || before.Reason != now.Reason) {
		emitConditionEvent(r.Recorder, ak, now)
	}
	return nil
}

// SetupWithManager watches ApiKeys (spec, the rotate annotation, and the QuotaExhausted
// condition the usage aggregator sets) and their Secrets.
func (r *ApiKeyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&servingv1alpha1.ApiKey{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}, quotaConditionChanged))).
		// A generated Secret deleted or edited brings its ApiKey back; its creation is our own.
		Owns(&corev1.Secret{}, builder.WithPredicates(predicate.Funcs{CreateFunc: func(event.CreateEvent) bool { return false }})).
		Named("apikey").
		Complete(r)
}

// quotaConditionChanged passes the status updates that change what Ready says: the usage
// aggregator setting QuotaExhausted when the last allowed token is counted. The aggregator's
// other writes (the counts, every few seconds) do not pass.
var quotaConditionChanged = predicate.Funcs{
	CreateFunc:  func(event.CreateEvent) bool { return false },
	DeleteFunc:  func(event.DeleteEvent) bool { return false },
	GenericFunc: func(event.GenericEvent) bool { return false },
	UpdateFunc: func(e event.UpdateEvent) bool {
		old, okOld := e.ObjectOld.(*servingv1alpha1.ApiKey)
		cur, okNew := e.ObjectNew.(*servingv1alpha1.ApiKey)
		if !okOld || !okNew {
			return false
		}
		return quotaCondition(old) != quotaCondition(cur)
	},
}

func quotaCondition(ak *servingv1alpha1.ApiKey) metav1.ConditionStatus {
	if c := meta.FindStatusCondition(ak.Status.Conditions, servingv1alpha1.ApiKeyConditionQuotaExhausted); c != nil {
		return c.Status
	}
	return metav1.ConditionUnknown
}
