package v1alpha1

// ConditionReady is the summary condition every HelixFlow kind carries, so that
// `kubectl wait --for=condition=Ready` and Argo CD health checks work the same on all of them.
const ConditionReady = "Ready"

// ReasonReconcileError, on an InferenceModel or a GPUNode, means the controller (or the GPU
// probe) failed to act on the object; the message says why.
const ReasonReconcileError = "ReconcileError"

// Labels and annotations HelixFlow puts on the objects it creates or reads.
const (
	// LabelManagedBy marks objects the manager owns, so its caches can watch only those.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedByValue is the value of LabelManagedBy on HelixFlow's objects.
	ManagedByValue = "helixflow"
	// LabelAppName and RuntimeAppName mark the model pods (the runtime and its engine); the
	// chart's NetworkPolicy lets only pods with both this and LabelManagedBy report usage.
	LabelAppName   = "app.kubernetes.io/name"
	RuntimeAppName = "helixflow-runtime"
	// LabelInferenceModel names the InferenceModel a pod or child object belongs to.
	LabelInferenceModel = "serving.helixflow.io/inference-model"
	// LabelGPUPool names the GPUPool a pod or child object belongs to.
	LabelGPUPool = "serving.helixflow.io/gpu-pool"
	// LabelApiKey names the ApiKey a Secret belongs to.
	LabelApiKey = "serving.helixflow.io/api-key"
	// AnnotationRotate requests a new key for an ApiKey when its value changes.
	AnnotationRotate = "serving.helixflow.io/rotate"
	// AnnotationDesiredHash on an object the manager owns fingerprints what the manager last
	// wrote to it, so that an unchanged object is not written again.
	AnnotationDesiredHash = "serving.helixflow.io/desired-hash"
)

// LocalSecretReference names a Secret in the same namespace as the object that refers to it.
type LocalSecretReference struct {
	// name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`
}

// SecretKeyReference names one key of a Secret in the same namespace.
type SecretKeyReference struct {
	// name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// key inside the Secret's data.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key"`
}
