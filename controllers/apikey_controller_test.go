package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
)

// apiKeyTestConfig has a short rotation grace so a test can watch a previous key expire.
func apiKeyTestConfig(grace time.Duration) Config {
	c := testConfig
	c.KeyRotationGrace = grace
	return c
}

func createApiKey(t *testing.T, ns, name string, mutate func(*servingv1alpha1.ApiKey)) {
	t.Helper()
	ak := &servingv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if mutate != nil {
		mutate(ak)
	}
	if err := env.Client.Create(context.Background(), ak); err != nil {
		t.Fatal(err)
	}
}

// waitApiKey polls the ApiKey until check passes and returns it.
func waitApiKey(t *testing.T, ns, name string, check func(*servingv1alpha1.ApiKey) error) *servingv1alpha1.ApiKey {
	t.Helper()
	ak := &servingv1alpha1.ApiKey{}
	eventually(t, "ApiKey "+name, func() error {
		if err := get(ak, ns, name); err != nil {
			return err
		}
		return check(ak)
	})
	return ak
}

func readyIs(status metav1.ConditionStatus, reason string) func(*servingv1alpha1.ApiKey) error {
	return func(ak *servingv1alpha1.ApiKey) error {
		c := meta.FindStatusCondition(ak.Status.Conditions, servingv1alpha1.ConditionReady)
		if c == nil || c.Status != status || c.Reason != reason || c.ObservedGeneration != ak.Generation {
			return fmt.Errorf("Ready = %+v, want %s/%s", c, status, reason)
		}
		return nil
	}
}

// secretKey returns the key in the ApiKey's generated Secret.
func secretKey(t *testing.T, ns, name string) string {
	t.Helper()
	sec := &corev1.Secret{}
	if err := get(sec, ns, name); err != nil {
		t.Fatal(err)
	}
	return string(sec.Data[APIKeySecretDataKey])
}

func patchApiKey(t *testing.T, ns, name string, mutate func(*servingv1alpha1.ApiKey)) {
	t.Helper()
	patchObject(t, &servingv1alpha1.ApiKey{}, ns, name, mutate)
}

// eventReasons lists the reasons of the Events recorded about an object.
func eventReasons(ns, name string) ([]string, error) {
	var list eventsv1.EventList
	if err := env.Client.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	var reasons []string
	for _, e := range list.Items {
		if e.Regarding.Name == name {
			reasons = append(reasons, e.Reason)
		}
	}
	return reasons, nil
}

func hasEvent(ns, name, reason string) error {
	reasons, err := eventReasons(ns, name)
	if err != nil {
		return err
	}
	for _, r := range reasons {
		if r == reason {
			return nil
		}
	}
	return fmt.Errorf("no %s Event on %s, have %v", reason, name, reasons)
}

func TestApiKeyGeneratedKey(t *testing.T) {
	startManager(t)
	ns := newNamespace(t, nil)
	createApiKey(t, ns, "chat", nil)
	ak := waitApiKey(t, ns, "chat", readyIs(metav1.ConditionTrue, servingv1alpha1.ApiKeyReasonKeyActive))

	key := secretKey(t, ns, "chat-apikey")
	keyID, err := auth.KeyIDOf(key)
	if err != nil {
		t.Fatalf("generated key is not hfk_<id>_<secret>: %v", err)
	}
	secret := key[len(auth.KeyPrefix)+len(keyID)+1:]
	if len(secret) < 52 { // 256 bits in base32
		t.Errorf("secret part has %d characters, want >= 52 (256 bits)", len(secret))
	}
	if ak.Status.KeyID != keyID || ak.Status.KeyHash != auth.HashKey(key).String() {
		t.Errorf("status keyID/keyHash = %s/%s, want %s/%s", ak.Status.KeyID, ak.Status.KeyHash, keyID, auth.HashKey(key))
	}
	if ak.Status.CreatedAt == nil {
		t.Error("status.createdAt not set")
	}
	sec := &corev1.Secret{}
	if err := get(sec, ns, "chat-apikey"); err != nil {
		t.Fatal(err)
	}
	if !metav1.IsControlledBy(sec, ak) {
		t.Errorf("Secret owner references %v, want controller %s", sec.OwnerReferences, ak.UID)
	}
	if sec.Labels[servingv1alpha1.LabelManagedBy] != servingv1alpha1.ManagedByValue || sec.Labels[servingv1alpha1.LabelApiKey] != "chat" {
		t.Errorf("Secret labels %v", sec.Labels)
	}
	eventually(t, "KeyGenerated event", func() error { return hasEvent(ns, "chat", "KeyGenerated") })

	// spec.secretName is honoured, and two keys never share a value.
	createApiKey(t, ns, "other", func(ak *servingv1alpha1.ApiKey) { ak.Spec.SecretName = "custom-secret" })
	waitApiKey(t, ns, "other", readyIs(metav1.ConditionTrue, servingv1alpha1.ApiKeyReasonKeyActive))
	if other := secretKey(t, ns, "custom-secret"); other == key || !strings.HasPrefix(other, auth.KeyPrefix) {
		t.Errorf("second key %q not a fresh key", auth.DisplayKeyID(other))
	}
}

func TestApiKeyBroughtOwnKey(t *testing.T) {
	startManager(t)
	ns := newNamespace(t, nil)
	ctx := context.Background()
	byo := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "mine"}, Data: map[string][]byte{"token": []byte("sk-my-own-key-0123456789\n")}}
	if err := env.Client.Create(ctx, byo); err != nil {
		t.Fatal(err)
	}
	createApiKey(t, ns, "byo", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.ExistingSecretRef = &servingv1alpha1.SecretKeyReference{Name: "mine", Key: "token"}
	})
	ak := waitApiKey(t, ns, "byo", readyIs(metav1.ConditionTrue, servingv1alpha1.ApiKeyReasonKeyActive))
	if want := auth.HashKey("sk-my-own-key-0123456789").String(); ak.Status.KeyHash != want {
		t.Errorf("keyHash %s, want the hash of the key without its trailing newline %s", ak.Status.KeyHash, want)
	}
	if !strings.HasPrefix(ak.Status.KeyID, "byo-") {
		t.Errorf("keyID %q of a key of foreign shape should be derived from its hash", ak.Status.KeyID)
	}
	// Nothing is written: the user's Secret is untouched and no Secret is generated.
	if err := get(byo, ns, "mine"); err != nil {
		t.Fatal(err)
	}
	if len(byo.OwnerReferences) != 0 || len(byo.Labels) != 0 || string(byo.Data["token"]) != "sk-my-own-key-0123456789\n" {
		t.Errorf("the brought Secret was modified: %+v", byo.ObjectMeta)
	}
	if err := get(&corev1.Secret{}, ns, "byo-apikey"); err == nil {
		t.Error("a Secret was generated for a brought-your-own key")
	}

	// A reference to a missing key or Secret is a clear condition, not a crash loop.
	createApiKey(t, ns, "missing", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.ExistingSecretRef = &servingv1alpha1.SecretKeyReference{Name: "nope", Key: "token"}
	})
	waitApiKey(t, ns, "missing", readyIs(metav1.ConditionFalse, servingv1alpha1.ApiKeyReasonSecretNotFound))
	createApiKey(t, ns, "wrongkey", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.ExistingSecretRef = &servingv1alpha1.SecretKeyReference{Name: "mine", Key: "other"}
	})
	waitApiKey(t, ns, "wrongkey", readyIs(metav1.ConditionFalse, servingv1alpha1.ApiKeyReasonSecretKeyMissing))
	long := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "long"}, Data: map[string][]byte{"token": []byte(strings.Repeat("k", auth.MaxKeyLength+1))}}
	if err := env.Client.Create(ctx, long); err != nil {
		t.Fatal(err)
	}
	createApiKey(t, ns, "long", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.ExistingSecretRef = &servingv1alpha1.SecretKeyReference{Name: "long", Key: "token"}
	})
	waitApiKey(t, ns, "long", readyIs(metav1.ConditionFalse, servingv1alpha1.ApiKeyReasonKeyTooLong))
}

func TestApiKeySuspendAndExpiry(t *testing.T) {
	startManager(t)
	ns := newNamespace(t, nil)
	createApiKey(t, ns, "s", nil)
	waitApiKey(t, ns, "s", readyIs(metav1.ConditionTrue, servingv1alpha1.ApiKeyReasonKeyActive))
	patchApiKey(t, ns, "s", func(ak *servingv1alpha1.ApiKey) { ak.Spec.Suspend = ptr.To(true) })
	ak := waitApiKey(t, ns, "s", readyIs(metav1.ConditionFalse, servingv1alpha1.ApiKeyReasonKeySuspended))
	if !meta.IsStatusConditionTrue(ak.Status.Conditions, servingv1alpha1.ApiKeyConditionSuspended) {
		t.Error("Suspended condition not True")
	}
	patchApiKey(t, ns, "s", func(ak *servingv1alpha1.ApiKey) { ak.Spec.Suspend = ptr.To(false) })
	waitApiKey(t, ns, "s", readyIs(metav1.ConditionTrue, servingv1alpha1.ApiKeyReasonKeyActive))

	// Expiry a few seconds ahead (the API keeps whole seconds): Ready until then, and the
	// requeue at that instant, not a periodic resync, turns it False.
	expires := time.Now().Truncate(time.Second).Add(3 * time.Second)
	createApiKey(t, ns, "e", func(ak *servingv1alpha1.ApiKey) { ak.Spec.ExpiresAt = &metav1.Time{Time: expires} })
	ak = waitApiKey(t, ns, "e", readyIs(metav1.ConditionTrue, servingv1alpha1.ApiKeyReasonKeyActive))
	if ak.Status.ExpiresAt == nil || !ak.Status.ExpiresAt.Equal(&metav1.Time{Time: expires}) {
		t.Errorf("status.expiresAt = %v, want %v", ak.Status.ExpiresAt, expires)
	}
	ak = waitApiKey(t, ns, "e", readyIs(metav1.ConditionFalse, servingv1alpha1.ApiKeyReasonKeyExpired))
	c := meta.FindStatusCondition(ak.Status.Conditions, servingv1alpha1.ApiKeyConditionExpired)
	if c == nil || c.Status != metav1.ConditionTrue {
		t.Fatalf("Expired condition %+v", c)
	}
	if late := c.LastTransitionTime.Sub(expires); late < 0 || late > 2*time.Second {
		t.Errorf("Expired at %v, %v after the expiry time", c.LastTransitionTime, late)
	}
	eventually(t, "KeyExpired warning", func() error { return hasEvent(ns, "e", servingv1alpha1.ApiKeyReasonKeyExpired) })
}

// TestApiKeyReadyFollowsTheAggregatorsQuotaCondition: the usage aggregator sets only
// QuotaExhausted (a status write); Ready follows it, so kubectl wait and kubectl get say what
// the runtimes enforce.
func TestApiKeyReadyFollowsTheAggregatorsQuotaCondition(t *testing.T) {
	startManager(t)
	ns := newNamespace(t, nil)
	createApiKey(t, ns, "q", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.Quota = &servingv1alpha1.TokenQuota{Tokens: 100, Window: servingv1alpha1.QuotaWindowDay}
	})
	waitApiKey(t, ns, "q", readyIs(metav1.ConditionTrue, servingv1alpha1.ApiKeyReasonKeyActive))
	// What the aggregator writes when it counts the last allowed token.
	eventually(t, "the aggregator's status write", func() error {
		ak := &servingv1alpha1.ApiKey{}
		if err := get(ak, ns, "q"); err != nil {
			return err
		}
		now := time.Now()
		start := metav1.NewTime(auth.QuotaWindowStart(servingv1alpha1.QuotaWindowDay, now))
		ak.Status.Usage = &servingv1alpha1.KeyUsage{WindowStart: &start, Tokens: 100, Requests: 4}
		auth.SetQuotaCondition(&ak.Status, ak, now)
		return env.Client.Status().Update(context.Background(), ak)
	})
	waitApiKey(t, ns, "q", readyIs(metav1.ConditionFalse, servingv1alpha1.ApiKeyReasonQuotaExhausted))
}

func TestApiKeyRotationWithGrace(t *testing.T) {
	grace := 4 * time.Second
	startManagerWith(t, apiKeyTestConfig(grace), nil)
	ns := newNamespace(t, nil)
	createApiKey(t, ns, "r", nil)
	first := waitApiKey(t, ns, "r", readyIs(metav1.ConditionTrue, servingv1alpha1.ApiKeyReasonKeyActive))
	oldKey := secretKey(t, ns, "r-apikey")

	rotatedAt := time.Now()
	patchApiKey(t, ns, "r", func(ak *servingv1alpha1.ApiKey) {
		ak.Annotations = map[string]string{servingv1alpha1.AnnotationRotate: "2026-11-25"}
	})
	ak := waitApiKey(t, ns, "r", func(ak *servingv1alpha1.ApiKey) error {
		if ak.Status.KeyHash == first.Status.KeyHash || len(ak.Status.PreviousKeys) != 1 {
			return fmt.Errorf("not rotated yet: keyID %s, previous %v", ak.Status.KeyID, ak.Status.PreviousKeys)
		}
		return nil
	})
	newKey := secretKey(t, ns, "r-apikey")
	if newKey == oldKey || ak.Status.KeyHash != auth.HashKey(newKey).String() {
		t.Fatalf("status does not describe the new key in the Secret")
	}
	prev := ak.Status.PreviousKeys[0]
	if prev.KeyHash != first.Status.KeyHash || prev.KeyID != first.Status.KeyID {
		t.Errorf("previous key %+v, want the first key %s", prev, first.Status.KeyID)
	}
	if d := prev.ValidUntil.Sub(rotatedAt); d < grace-time.Second || d > grace+2*time.Second {
		t.Errorf("previous key valid until %v, %v after the rotation; want about %v", prev.ValidUntil, d, grace)
	}
	if ak.Status.LastRotationTime == nil {
		t.Error("lastRotationTime not set")
	}
	eventually(t, "KeyRotated event", func() error { return hasEvent(ns, "r", "KeyRotated") })

	// The same annotation value again is not a new request.
	patchApiKey(t, ns, "r", func(ak *servingv1alpha1.ApiKey) { ak.Spec.Description = "touched" })
	waitApiKey(t, ns, "r", func(ak *servingv1alpha1.ApiKey) error {
		if ak.Status.ObservedGeneration != ak.Generation {
			return errors.New("not observed yet")
		}
		return nil
	})
	if secretKey(t, ns, "r-apikey") != newKey {
		t.Fatal("an unchanged rotate annotation rotated again")
	}
	// After the grace period the previous key is dropped by the requeue at validUntil.
	waitApiKey(t, ns, "r", func(ak *servingv1alpha1.ApiKey) error {
		if len(ak.Status.PreviousKeys) != 0 {
			return fmt.Errorf("previous keys still listed: %v", ak.Status.PreviousKeys)
		}
		return nil
	})
}

func TestApiKeyNeverRegeneratedByAccident(t *testing.T) {
	stop := startManager(t)
	ns := newNamespace(t, nil)
	createApiKey(t, ns, "k", nil)
	first := waitApiKey(t, ns, "k", readyIs(metav1.ConditionTrue, servingv1alpha1.ApiKeyReasonKeyActive))
	key := secretKey(t, ns, "k-apikey")

	// A manager restart keeps the key.
	stop()
	startManager(t)
	patchApiKey(t, ns, "k", func(ak *servingv1alpha1.ApiKey) { ak.Spec.Description = "after restart" })
	waitApiKey(t, ns, "k", func(ak *servingv1alpha1.ApiKey) error {
		if ak.Status.ObservedGeneration != ak.Generation {
			return errors.New("not observed yet")
		}
		return nil
	})
	if secretKey(t, ns, "k-apikey") != key {
		t.Fatal("the key changed across a manager restart")
	}

	// Someone edits the Secret: its content is not trusted and the key in status stays.
	ctx := context.Background()
	sec := &corev1.Secret{}
	if err := get(sec, ns, "k-apikey"); err != nil {
		t.Fatal(err)
	}
	sec.Data[APIKeySecretDataKey] = []byte("hfk_chosen_byhand")
	if err := env.Client.Update(ctx, sec); err != nil {
		t.Fatal(err)
	}
	eventually(t, "SecretModified event", func() error { return hasEvent(ns, "k", "SecretModified") })
	ak := &servingv1alpha1.ApiKey{}
	if err := get(ak, ns, "k"); err != nil {
		t.Fatal(err)
	}
	if ak.Status.KeyHash != first.Status.KeyHash {
		t.Fatalf("an edited Secret changed the accepted key")
	}
	if secretKey(t, ns, "k-apikey") != "hfk_chosen_byhand" {
		t.Fatal("the manager overwrote the edited Secret")
	}

	// A deleted Secret gets a new key, the old one stops at once, and a Warning says so.
	if err := env.Client.Delete(ctx, sec); err != nil {
		t.Fatal(err)
	}
	ak = waitApiKey(t, ns, "k", func(ak *servingv1alpha1.ApiKey) error {
		if ak.Status.KeyHash == first.Status.KeyHash {
			return errors.New("still the old key")
		}
		return readyIs(metav1.ConditionTrue, servingv1alpha1.ApiKeyReasonKeyActive)(ak)
	})
	if ak.Status.KeyHash != auth.HashKey(secretKey(t, ns, "k-apikey")).String() {
		t.Error("status does not describe the regenerated key")
	}
	for _, p := range ak.Status.PreviousKeys {
		if p.KeyHash == first.Status.KeyHash {
			t.Error("the key of a deleted Secret is still accepted as a previous key")
		}
	}
	eventually(t, "SecretDeleted warning", func() error { return hasEvent(ns, "k", "SecretDeleted") })
}

func TestApiKeySecretNameTaken(t *testing.T) {
	startManager(t)
	ns := newNamespace(t, nil)
	foreign := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "taken-apikey"}, Data: map[string][]byte{"x": []byte("y")}}
	if err := env.Client.Create(context.Background(), foreign); err != nil {
		t.Fatal(err)
	}
	createApiKey(t, ns, "taken", nil)
	waitApiKey(t, ns, "taken", readyIs(metav1.ConditionFalse, servingv1alpha1.ApiKeyReasonSecretConflict))
	if err := get(foreign, ns, "taken-apikey"); err != nil {
		t.Fatal(err)
	}
	if _, ok := foreign.Data[APIKeySecretDataKey]; ok || len(foreign.OwnerReferences) != 0 {
		t.Error("someone else's Secret was overwritten")
	}
}
