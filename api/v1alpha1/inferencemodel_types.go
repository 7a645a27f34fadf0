package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// EngineType is the inference engine that runs the model.
// +kubebuilder:validation:Enum=VLLM;LlamaCpp;TGI;Ollama;SGLang;Custom
type EngineType string

const (
	EngineVLLM     EngineType = "VLLM"
	EngineLlamaCpp EngineType = "LlamaCpp"
	EngineTGI      EngineType = "TGI"
	EngineOllama   EngineType = "Ollama"
	EngineSGLang   EngineType = "SGLang"
	// EngineCustom runs spec.engine.image with spec.engine.args; HelixFlow adds nothing.
	EngineCustom EngineType = "Custom"
)

// DType is the numeric precision of the weights, used to estimate GPU memory.
// +kubebuilder:validation:Enum=FP32;FP16;BF16;FP8;INT8;INT4
type DType string

const (
	DTypeFP32 DType = "FP32"
	DTypeFP16 DType = "FP16"
	DTypeBF16 DType = "BF16"
	DTypeFP8  DType = "FP8"
	DTypeINT8 DType = "INT8"
	DTypeINT4 DType = "INT4"
)

// AuthMode says which credentials the runtime accepts.
// +kubebuilder:validation:Enum=APIKey;JWT;APIKeyOrJWT;None
type AuthMode string

const (
	AuthModeAPIKey      AuthMode = "APIKey"
	AuthModeJWT         AuthMode = "JWT"
	AuthModeAPIKeyOrJWT AuthMode = "APIKeyOrJWT"
	// AuthModeNone serves without authentication; only for trusted networks.
	AuthModeNone AuthMode = "None"
)

// IssuerKind is the kind of a cert-manager issuer.
// +kubebuilder:validation:Enum=Issuer;ClusterIssuer
type IssuerKind string

const (
	IssuerKindIssuer        IssuerKind = "Issuer"
	IssuerKindClusterIssuer IssuerKind = "ClusterIssuer"
)

// InferenceModel condition types and reasons.
const (
	// InferenceModelConditionScheduled says whether the model fits its pool.
	InferenceModelConditionScheduled = "Scheduled"
	// InferenceModelConditionAvailable says whether at least one replica serves requests.
	InferenceModelConditionAvailable = "Available"
	// InferenceModelConditionWeightsReady says whether the weights were fetched.
	InferenceModelConditionWeightsReady = "WeightsReady"
	// InferenceModelConditionExposed says whether the Ingress or route was accepted.
	InferenceModelConditionExposed = "Exposed"
	// InferenceModelConditionTLSReady mirrors the Certificate's Ready condition.
	InferenceModelConditionTLSReady = "TLSReady"

	// Scheduled reasons.
	InferenceModelReasonPlaced                = "Placed"
	InferenceModelReasonNoGPURequested        = "NoGPURequested"
	InferenceModelReasonPoolNotFound          = "PoolNotFound"
	InferenceModelReasonNamespaceNotAllowed   = "NamespaceNotAllowed"
	InferenceModelReasonNoMatchingNodes       = "NoMatchingNodes"
	InferenceModelReasonInsufficientGPUs      = "InsufficientGPUs"
	InferenceModelReasonInsufficientGPUMemory = "InsufficientGPUMemory"
	InferenceModelReasonPartiallyPlaced       = "PartiallyPlaced"

	// Available and Ready reasons.
	InferenceModelReasonReplicasReady    = "ReplicasReady"
	InferenceModelReasonReplicasNotReady = "ReplicasNotReady"
	InferenceModelReasonScaledToZero     = "ScaledToZero"
	InferenceModelReasonNotScheduled     = "NotScheduled"
	InferenceModelReasonWeightsFetching  = "WeightsFetching"
	InferenceModelReasonWeightsFailed    = "WeightsFailed"

	// WeightsReady reasons (besides WeightsFetching and WeightsFailed).
	InferenceModelReasonWeightsFetched  = "WeightsFetched"
	InferenceModelReasonWeightsPending  = "WeightsPending"
	InferenceModelReasonWeightsOnVolume = "WeightsOnVolume"

	// Exposed reasons.
	InferenceModelReasonIngressAdmitted  = "IngressAdmitted"
	InferenceModelReasonIngressPending   = "IngressPending"
	InferenceModelReasonRouteAccepted    = "RouteAccepted"
	InferenceModelReasonRouteNotAccepted = "RouteNotAccepted"
	InferenceModelReasonRoutePending     = "RoutePending"
	InferenceModelReasonInvalidEndpoint  = "InvalidEndpoint"
	// InferenceModelReasonGatewayAPINotInstalled: spec.endpoint.gatewayRef is set but the
	// cluster has no Gateway API CRDs.
	InferenceModelReasonGatewayAPINotInstalled = "GatewayAPINotInstalled"
	// InferenceModelReasonNotExposed: Ready does not wait for exposure (no spec.endpoint).
	InferenceModelReasonNotExposed = "NotExposed"

	// TLSReady reasons (besides the Certificate's own Ready reason, which is mirrored).
	InferenceModelReasonNoIssuer                = "NoIssuer"
	InferenceModelReasonCertManagerNotInstalled = "CertManagerNotInstalled"
	InferenceModelReasonCertificatePending      = "CertificatePending"
)

// Runtime ports in every model pod; the engine must listen elsewhere.
const (
	RuntimeHTTPPort    int32 = 8080
	RuntimeGRPCPort    int32 = 9090
	RuntimeMetricsPort int32 = 9100
)

// InferenceModelSpec is the desired state of a served model.
type InferenceModelSpec struct {
	// model says which weights to serve and under which name.
	// +required
	Model ModelSource `json:"model"`

	// engine is the inference engine that runs the weights.
	// +optional
	// +kubebuilder:default={type: VLLM, port: 8000}
	Engine EngineSpec `json:"engine,omitempty"`

	// gpu says how many GPUs of which pool each replica needs.
	// +required
	GPU GPURequirements `json:"gpu"`

	// resources are the CPU and memory requests and limits of the engine container.
	// GPUs are requested through spec.gpu, not here.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// replicas is the number of runtime pods. It is the scale subresource's spec path, so
	// `kubectl scale` and a HorizontalPodAutoscaler can set it.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=512
	Replicas *int32 `json:"replicas,omitempty"`

	// endpoint exposes the model outside the cluster. When absent the model is reachable
	// only through its in-cluster Service.
	// +optional
	Endpoint *EndpointSpec `json:"endpoint,omitempty"`

	// auth says which credentials the model's runtime accepts.
	// +optional
	// +kubebuilder:default={}
	Auth AuthSpec `json:"auth,omitempty"`
}

// ModelSource names the weights and the name clients use.
// +kubebuilder:validation:XValidation:rule="has(self.name) == has(oldSelf.name) && (!has(self.name) || self.name == oldSelf.name)",message="name is immutable: clients and ApiKeys refer to it; create a new InferenceModel instead",fieldPath=".name"
// +kubebuilder:validation:XValidation:rule="!self.uri.startsWith('hf://') || self.uri.matches('^hf://[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*$')",message="uri: an hf:// URI must be hf://<org>/<repo>",fieldPath=".uri"
// +kubebuilder:validation:XValidation:rule="!self.uri.startsWith('pvc://') || self.uri.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$')",message="uri: a pvc:// URI must be pvc://<claim>/<path> with a valid claim name",fieldPath=".uri"
// +kubebuilder:validation:XValidation:rule="!self.uri.startsWith('pvc://') || !(self.uri.contains('/../') || self.uri.endsWith('/..'))",message="uri: a pvc:// path must not contain '..': the engine reads only inside the claim",fieldPath=".uri"
// +kubebuilder:validation:XValidation:rule="!(self.uri.startsWith('s3://') || self.uri.startsWith('gs://')) || self.uri.matches('^(s3|gs)://[a-z0-9][-a-z0-9_.]{1,221}[a-z0-9](/.*)?$')",message="uri: s3:// and gs:// URIs must be <scheme>://<bucket>[/<prefix>] with a valid bucket name",fieldPath=".uri"
type ModelSource struct {
	// name is what clients send as "model" in OpenAI requests and what ApiKeys list in
	// spec.models. Defaults to the InferenceModel's name. Immutable once set.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][-A-Za-z0-9_.:/]*$`
	Name string `json:"name,omitempty"`

	// uri locates the weights: hf://<org>/<repo>, s3://<bucket>/<prefix>,
	// gs://<bucket>/<prefix>, pvc://<claim>/<path>, oci://<registry>/<repo>:<tag> or
	// https://<host>/<path>.
	// +required
	// +kubebuilder:validation:MinLength=6
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.matches('^(hf|s3|gs|pvc|oci|https)://[^\\\\s]+$')",message="uri must start with hf://, s3://, gs://, pvc://, oci:// or https:// and contain no spaces"
	URI string `json:"uri"`

	// revision is the branch, tag or commit to fetch (hf://) or the object version.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][-A-Za-z0-9_./]*$`
	Revision string `json:"revision,omitempty"`

	// credentialsSecretRef names a Secret with the credentials the fetcher needs (an HF
	// token, S3 keys, a GCS service account, registry auth). It is mounted into the fetch
	// init container only.
	// +optional
	CredentialsSecretRef *LocalSecretReference `json:"credentialsSecretRef,omitempty"`

	// parameters is the model size in parameters, for example 405M, 1.5B or 70B. With dtype it
	// estimates the GPU memory a replica needs when gpu.minMemory is not set.
	// +optional
	// +kubebuilder:validation:MaxLength=16
	// +kubebuilder:validation:Pattern=`^[0-9]{1,6}(\.[0-9]{1,3})?[KMBT]$`
	Parameters string `json:"parameters,omitempty"`

	// dtype is the precision of the weights: FP32, FP16, BF16, FP8, INT8 or INT4.
	// +optional
	DType DType `json:"dtype,omitempty"`
}

// EngineSpec selects and configures the inference engine container.
// +kubebuilder:validation:XValidation:rule="self.type != 'Custom' || (has(self.image) && size(self.image) > 0)",message="image is required when type is Custom",fieldPath=".image"
// +kubebuilder:validation:XValidation:rule="!(self.port in [8080, 9090, 9100])",message="port must not be 8080, 9090 or 9100: the runtime in the same pod listens there",fieldPath=".port"
type EngineSpec struct {
	// type is the engine: VLLM, LlamaCpp, TGI, Ollama, SGLang, or Custom.
	// +optional
	// +kubebuilder:default=VLLM
	Type EngineType `json:"type,omitempty"`

	// image overrides the manager's default image for the engine type. Required for Custom.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:Pattern=`^[^\s]+$`
	Image string `json:"image,omitempty"`

	// args are appended to the engine's arguments (for Custom, they are all of them).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=4096
	Args []string `json:"args,omitempty"`

	// env is added to the engine container's environment.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=64
	Env []corev1.EnvVar `json:"env,omitempty"`

	// port the engine listens on inside the pod (on 127.0.0.1 where the engine allows it).
	// +optional
	// +kubebuilder:default=8000
	// +kubebuilder:validation:Minimum=1024
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port,omitempty"`
}

// GPURequirements is what each replica needs from its pool.
// +kubebuilder:validation:XValidation:rule="self.count == 0 || has(self.pool)",message="pool is required when count is greater than 0",fieldPath=".pool"
// +kubebuilder:validation:XValidation:rule="self.count > 0 || !has(self.pool)",message="pool must be empty when count is 0: a CPU-only model is not placed in a GPU pool",fieldPath=".pool"
// +kubebuilder:validation:XValidation:rule="self.count > 0 || !has(self.minMemory)",message="minMemory needs count greater than 0",fieldPath=".minMemory"
type GPURequirements struct {
	// pool is the name of the GPUPool to place replicas in. Required when count > 0.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Pool string `json:"pool,omitempty"`

	// count is the number of GPUs per replica, all on one node (0 to 16; 0 runs on CPU).
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=16
	Count int32 `json:"count"`

	// minMemory is the GPU memory each of those GPUs must have, for example 40Gi. When
	// absent it is estimated from model.parameters and model.dtype.
	// +optional
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).compareTo(quantity('1Gi')) >= 0 && quantity(string(self)).compareTo(quantity('1Ti')) <= 0",message="minMemory must be between 1Gi and 1Ti"
	MinMemory *resource.Quantity `json:"minMemory,omitempty"`
}

// EndpointSpec exposes the model at https://<host>/v1.
// +kubebuilder:validation:XValidation:rule="!(has(self.gatewayRef) && has(self.ingressClassName))",message="gatewayRef and ingressClassName are mutually exclusive: the model is exposed through a Gateway or an Ingress, not both",fieldPath=".gatewayRef"
type EndpointSpec struct {
	// host is the DNS name clients use, for example llama.example.com.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$') && self.split('.').all(l, size(l) <= 63)",message="host must be a lowercase DNS name with at least two labels, each at most 63 characters, for example llama.example.com"
	Host string `json:"host"`

	// ingressClassName selects the Ingress controller. Defaults to the manager's
	// --default-ingress-class when neither this nor gatewayRef is set.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	IngressClassName string `json:"ingressClassName,omitempty"`

	// gatewayRef attaches HTTPRoute and GRPCRoute objects to this Gateway instead of
	// creating an Ingress.
	// +optional
	GatewayRef *GatewayReference `json:"gatewayRef,omitempty"`

	// tls configures the certificate for host.
	// +optional
	TLS *EndpointTLS `json:"tls,omitempty"`

	// rateLimit sets limits per client IP at the edge, before requests reach the model.
	// +optional
	RateLimit *EdgeRateLimit `json:"rateLimit,omitempty"`
}

// GatewayReference names a Gateway API Gateway and optionally one of its listeners.
type GatewayReference struct {
	// name of the Gateway.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// namespace of the Gateway; defaults to the InferenceModel's namespace.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespace string `json:"namespace,omitempty"`

	// sectionName is the Gateway listener to attach to; all listeners when absent.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	SectionName string `json:"sectionName,omitempty"`
}

// EndpointTLS configures the certificate cert-manager issues for the endpoint's host.
type EndpointTLS struct {
	// issuerRef is the cert-manager issuer; defaults to the manager's --default-issuer.
	// +optional
	IssuerRef *IssuerReference `json:"issuerRef,omitempty"`

	// secretName is the Secret the certificate is stored in; defaults to <name>-tls.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	SecretName string `json:"secretName,omitempty"`
}

// IssuerReference names a cert-manager Issuer or ClusterIssuer.
type IssuerReference struct {
	// name of the issuer.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// kind is Issuer (same namespace) or ClusterIssuer.
	// +optional
	// +kubebuilder:default=Issuer
	Kind IssuerKind `json:"kind,omitempty"`
}

// EdgeRateLimit limits each client IP at the Ingress or Gateway.
type EdgeRateLimit struct {
	// requestsPerSecond allowed per client IP.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	RequestsPerSecond int32 `json:"requestsPerSecond,omitempty"`

	// connections is the number of concurrent connections allowed per client IP.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	Connections int32 `json:"connections,omitempty"`
}

// AuthSpec says which credentials the runtime accepts.
type AuthSpec struct {
	// mode is APIKey, JWT, APIKeyOrJWT (default) or None.
	// +optional
	// +kubebuilder:default=APIKeyOrJWT
	Mode AuthMode `json:"mode,omitempty"`

	// allowedOrigins are the browser origins whose pages may open the WebSocket stream
	// (GET /v1/stream) and call the HTTP API (CORS), besides pages of the runtime's own
	// host: a host ("app.example.com",
	// "localhost:3000"), a wildcard subdomain of a domain ("*.example.com"; "*" matches
	// dots too, so it covers every level below), or a scheme and host
	// ("https://app.example.com"). Clients that send no Origin (SDKs, curl) are not
	// subject to it. The runtimes follow changes without a restart.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=261
	// +kubebuilder:validation:XValidation:rule="self.all(o, o.matches('^(https?://)?([*][.][A-Za-z0-9-]+[.])?[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?$'))",message="allowedOrigins: each must be a host (app.example.com), a wildcard subdomain of a domain (*.example.com, not *.com) or scheme://host; '*' would let any page on the web use a visitor's credential"
	AllowedOrigins []string `json:"allowedOrigins,omitempty"`
}

// InferenceModelStatus is the observed state of a served model.
type InferenceModelStatus struct {
	// conditions: Scheduled, Available, WeightsReady, Exposed, TLSReady and the summary Ready.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// observedGeneration is the spec generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// modelName is the name clients send as "model": spec.model.name or metadata.name.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	ModelName string `json:"modelName,omitempty"`

	// replicas is the number of runtime pods that exist (the scale subresource's status path).
	// +optional
	Replicas int32 `json:"replicas,omitempty"`

	// readyReplicas is the number of runtime pods that are ready to serve.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas,omitempty"`

	// selector is the label selector of the runtime pods, for the scale subresource and HPAs.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Selector string `json:"selector,omitempty"`

	// placement is where the replicas go and why.
	// +optional
	Placement *Placement `json:"placement,omitempty"`

	// url is the base URL clients use: the public https URL when exposed, else the
	// in-cluster Service URL.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	URL string `json:"url,omitempty"`
}

// Placement is the outcome of fitting the model to its pool.
type Placement struct {
	// pool is the GPUPool the replicas are placed in.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Pool string `json:"pool,omitempty"`

	// gpusPerReplica is the number of GPUs each replica requests.
	// +optional
	GPUsPerReplica int32 `json:"gpusPerReplica,omitempty"`

	// gpuMemoryPerGPU is the memory each GPU must have (given or estimated); empty when unknown.
	// +optional
	GPUMemoryPerGPU *resource.Quantity `json:"gpuMemoryPerGPU,omitempty"`

	// eligibleNodes is the number of pool nodes that can host at least one replica.
	// +optional
	EligibleNodes int32 `json:"eligibleNodes,omitempty"`

	// fittingReplicas is how many replicas the eligible nodes can hold right now.
	// +optional
	FittingReplicas int32 `json:"fittingReplicas,omitempty"`
}

// InferenceModel is a model served by GPU runtime pods behind an OpenAI-compatible,
// authenticated endpoint.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.replicas,statuspath=.status.replicas,selectorpath=.status.selector
// +kubebuilder:resource:shortName=im,categories=helixflow
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 52",message="metadata.name must start with a letter, contain only lowercase letters, digits and '-', and be at most 52 characters: it names the model's Service, Deployment and Ingress"
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Model",type=string,JSONPath=`.status.modelName`
// +kubebuilder:printcolumn:name="Engine",type=string,JSONPath=`.spec.engine.type`
// +kubebuilder:printcolumn:name="GPUs",type=integer,JSONPath=`.spec.gpu.count`
// +kubebuilder:printcolumn:name="Replicas",type=integer,JSONPath=`.spec.replicas`
// +kubebuilder:printcolumn:name="Available",type=integer,JSONPath=`.status.readyReplicas`
// +kubebuilder:printcolumn:name="URL",type=string,JSONPath=`.status.url`
// +kubebuilder:printcolumn:name="Pool",type=string,JSONPath=`.spec.gpu.pool`,priority=1
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type InferenceModel struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the model to serve and how.
	// +required
	Spec InferenceModelSpec `json:"spec"`

	// status is what the controller observed.
	// +optional
	Status InferenceModelStatus `json:"status,omitempty"`
}

// InferenceModelList is a list of InferenceModels.
// +kubebuilder:object:root=true
type InferenceModelList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []InferenceModel `json:"items"`
}

// ServedModelName is what clients send as "model": spec.model.name, else metadata.name.
func (m *InferenceModel) ServedModelName() string {
	if m.Spec.Model.Name != "" {
		return m.Spec.Model.Name
	}
	return m.Name
}
