package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Scope is something an API key may be used for.
// +kubebuilder:validation:Enum=Inference;ListModels;IssueTokens
type Scope string

const (
	// ScopeInference allows completions, chat completions and embeddings.
	ScopeInference Scope = "Inference"
	// ScopeListModels allows GET /v1/models.
	ScopeListModels Scope = "ListModels"
	// ScopeIssueTokens allows exchanging the key for a short-lived JWT.
	ScopeIssueTokens Scope = "IssueTokens"
)

// QuotaWindow is the period a token quota resets after.
// +kubebuilder:validation:Enum=Day;Week;Month
type QuotaWindow string

const (
	QuotaWindowDay   QuotaWindow = "Day"
	QuotaWindowWeek  QuotaWindow = "Week"
	QuotaWindowMonth QuotaWindow = "Month"
)

// ApiKey condition types and reasons.
const (
	// ApiKeyConditionExpired is True once spec.expiresAt has passed.
	ApiKeyConditionExpired = "Expired"
	// ApiKeyConditionSuspended is True while spec.suspend is true.
	ApiKeyConditionSuspended = "Suspended"
	// ApiKeyConditionQuotaExhausted is True while the token quota of the window is used up.
	ApiKeyConditionQuotaExhausted = "QuotaExhausted"

	ApiKeyReasonKeyActive        = "KeyActive"
	ApiKeyReasonKeyExpired       = "KeyExpired"
	ApiKeyReasonKeySuspended     = "KeySuspended"
	ApiKeyReasonQuotaExhausted   = "QuotaExhausted"
	ApiKeyReasonWithinQuota      = "WithinQuota"
	ApiKeyReasonSecretNotFound   = "SecretNotFound"
	ApiKeyReasonSecretKeyMissing = "SecretKeyMissing"
	ApiKeyReasonNotExpired       = "NotExpired"
	ApiKeyReasonNotSuspended     = "NotSuspended"
	// ApiKeyReasonSecretConflict: the Secret to generate into exists and belongs to someone else.
	ApiKeyReasonSecretConflict = "SecretConflict"
	// ApiKeyReasonSecretModified: the generated Secret was edited before any key was recorded.
	ApiKeyReasonSecretModified = "SecretModified"
	// ApiKeyReasonKeyTooLong: a brought-your-own key is longer than runtimes accept (128 bytes).
	ApiKeyReasonKeyTooLong = "KeyTooLong"
)

// ApiKeySpec is a client credential and the policy attached to it.
// +kubebuilder:validation:XValidation:rule="!(has(self.secretName) && has(self.existingSecretRef))",message="secretName and existingSecretRef are mutually exclusive: the key is either generated into secretName or brought in existingSecretRef",fieldPath=".existingSecretRef"
// +kubebuilder:validation:XValidation:rule="has(self.secretName) == has(oldSelf.secretName)",message="secretName cannot be added or removed after creation",fieldPath=".secretName"
type ApiKeySpec struct {
	// description says who or what the key is for.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	Description string `json:"description,omitempty"`

	// models lists the served model names (InferenceModel status.modelName) the key may use.
	// Empty means every model in the namespace.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=128
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z0-9][-A-Za-z0-9_.:/]*$`
	Models []string `json:"models,omitempty"`

	// scopes are what the key may be used for: Inference, ListModels, IssueTokens.
	// +optional
	// +listType=set
	// +kubebuilder:default={Inference,ListModels}
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=3
	Scopes []Scope `json:"scopes,omitempty"`

	// rateLimit limits the key's request and token rates. Absent means unlimited.
	// +optional
	RateLimit *KeyRateLimit `json:"rateLimit,omitempty"`

	// quota caps the tokens the key may use per window. Absent means no quota.
	// +optional
	Quota *TokenQuota `json:"quota,omitempty"`

	// expiresAt is when the key stops being accepted. Absent means never.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`

	// suspend stops the key being accepted while true, without deleting it.
	// +optional
	Suspend *bool `json:"suspend,omitempty"`

	// secretName is the Secret the generated key is written to; defaults to <name>-apikey.
	// Immutable.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="secretName is immutable"
	SecretName string `json:"secretName,omitempty"`

	// existingSecretRef brings your own key: only its SHA-256 hash is read into the status;
	// nothing is generated or written.
	// +optional
	ExistingSecretRef *SecretKeyReference `json:"existingSecretRef,omitempty"`
}

// KeyRateLimit limits one key across all replicas of a model.
type KeyRateLimit struct {
	// requestsPerMinute allowed for the key.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	RequestsPerMinute int32 `json:"requestsPerMinute,omitempty"`

	// tokensPerMinute (prompt plus completion) allowed for the key.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000000
	TokensPerMinute int64 `json:"tokensPerMinute,omitempty"`

	// maxConcurrent is the number of requests the key may have in flight at once.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	MaxConcurrent int32 `json:"maxConcurrent,omitempty"`
}

// TokenQuota caps the tokens a key may use in a calendar window (UTC).
type TokenQuota struct {
	// tokens (prompt plus completion) allowed per window.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000000000
	Tokens int64 `json:"tokens"`

	// window is Day, Week or Month (default).
	// +optional
	// +kubebuilder:default=Month
	Window QuotaWindow `json:"window,omitempty"`
}

// ApiKeyStatus is the observed state of a key. It never holds the key itself.
type ApiKeyStatus struct {
	// conditions: Ready (the key is accepted), Expired, Suspended and QuotaExhausted.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// observedGeneration is the spec generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// keyID is the public part of the key (hfk_<keyID>_...), safe to log and show.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	KeyID string `json:"keyID,omitempty"`

	// keyHash is sha256:<hex> of the whole key. Runtimes match presented keys against it;
	// a hash is never accepted as a credential.
	// +optional
	// +kubebuilder:validation:MaxLength=71
	// +kubebuilder:validation:Pattern=`^sha256:[0-9a-f]{64}$`
	KeyHash string `json:"keyHash,omitempty"`

	// previousKeys are rotated-out keys still accepted until validUntil.
	// +optional
	// +listType=map
	// +listMapKey=keyID
	// +kubebuilder:validation:MaxItems=8
	PreviousKeys []PreviousKey `json:"previousKeys,omitempty"`

	// createdAt is when the current key was created or first read.
	// +optional
	CreatedAt *metav1.Time `json:"createdAt,omitempty"`

	// expiresAt is when the key stops being accepted, copied from spec.expiresAt.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`

	// lastRotationTime is when the key was last rotated.
	// +optional
	LastRotationTime *metav1.Time `json:"lastRotationTime,omitempty"`

	// usage is the key's consumption in the current quota window.
	// +optional
	Usage *KeyUsage `json:"usage,omitempty"`
}

// PreviousKey is a rotated-out key in its grace period.
type PreviousKey struct {
	// keyID of the previous key.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	KeyID string `json:"keyID"`

	// keyHash of the previous key, sha256:<hex>.
	// +required
	// +kubebuilder:validation:MaxLength=71
	// +kubebuilder:validation:Pattern=`^sha256:[0-9a-f]{64}$`
	KeyHash string `json:"keyHash"`

	// validUntil is when the previous key stops being accepted.
	// +required
	ValidUntil metav1.Time `json:"validUntil"`
}

// KeyUsage is what the usage aggregator counted for the key.
type KeyUsage struct {
	// windowStart is the start of the current quota window.
	// +optional
	WindowStart *metav1.Time `json:"windowStart,omitempty"`
	// tokens used in the window (prompt plus completion).
	// +optional
	Tokens int64 `json:"tokens,omitempty"`
	// requests made in the window.
	// +optional
	Requests int64 `json:"requests,omitempty"`
	// lastUsedTime is when the key was last used.
	// +optional
	LastUsedTime *metav1.Time `json:"lastUsedTime,omitempty"`
	// reporters is the last batch the usage aggregator applied to this key from each runtime
	// process, written together with the counts so that a batch sent again (its
	// acknowledgement lost, or the manager restarted) is not counted twice. Entries not
	// updated for an hour are dropped, and the oldest beyond 1024 (runtime processes that
	// reported the key within the hour).
	// +optional
	// +listType=map
	// +listMapKey=id
	// +kubebuilder:validation:MaxItems=1024
	Reporters []UsageReporter `json:"reporters,omitempty"`
}

// UsageReporter is the last usage batch applied to a key from one runtime process.
type UsageReporter struct {
	// id names the runtime process: its pod name and a random nonce chosen at start.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	ID string `json:"id"`
	// seq is the sequence number of the last batch applied from this reporter; batches with
	// a seq at or below it are duplicates.
	// +required
	// +kubebuilder:validation:Minimum=1
	Seq int64 `json:"seq"`
	// lastReportTime is when a batch from this reporter was last applied to the key.
	// +required
	LastReportTime metav1.Time `json:"lastReportTime"`
}

// ApiKey is a client credential for HelixFlow models, with scopes, rate limits, a token
// quota and an expiry. The key itself lives only in a Secret.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ak,categories=helixflow
// +kubebuilder:validation:XValidation:rule="has(self.spec.secretName) || has(self.spec.existingSecretRef) || size(self.metadata.name) <= 246",message="metadata.name must be at most 246 characters unless spec.secretName is set: the default Secret name <name>-apikey must fit in 253"
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Key-ID",type=string,JSONPath=`.status.keyID`
// +kubebuilder:printcolumn:name="Expires",type=string,JSONPath=`.spec.expiresAt`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ApiKey struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the key's policy.
	// +optional
	// +kubebuilder:default={}
	Spec ApiKeySpec `json:"spec,omitempty"`

	// status is what the controller observed.
	// +optional
	Status ApiKeyStatus `json:"status,omitempty"`
}

// ApiKeyList is a list of ApiKeys.
// +kubebuilder:object:root=true
type ApiKeyList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ApiKey `json:"items"`
}

// DefaultSecretName is the Secret a generated key is written to when spec.secretName is empty.
func (k *ApiKey) DefaultSecretName() string {
	if k.Spec.SecretName != "" {
		return k.Spec.SecretName
	}
	return k.Name + "-apikey"
}
