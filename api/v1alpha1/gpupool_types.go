package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DefaultGPUResourceName is the extended resource the NVIDIA device plugin advertises.
const DefaultGPUResourceName = "nvidia.com/gpu"

// GPUSharing says how the GPUs of a pool are shared between pods.
// +kubebuilder:validation:Enum=Exclusive;TimeSliced;MIG
type GPUSharing string

const (
	// GPUSharingExclusive gives each pod whole GPUs.
	GPUSharingExclusive GPUSharing = "Exclusive"
	// GPUSharingTimeSliced means the device plugin advertises time-sliced replicas of each GPU.
	GPUSharingTimeSliced GPUSharing = "TimeSliced"
	// GPUSharingMIG means pods get Multi-Instance GPU partitions (resourceName names the profile).
	GPUSharingMIG GPUSharing = "MIG"
)

// GPUPool condition types and reasons.
const (
	// GPUPoolConditionProbed says how many of the pool's nodes have a fresh GPUNode report.
	GPUPoolConditionProbed = "Probed"

	// GPUPoolReasonNodesReady: at least one matching node is Ready with GPUs allocatable.
	GPUPoolReasonNodesReady = "NodesReady"
	// GPUPoolReasonNoMatchingNodes: the nodeSelector matches no node.
	GPUPoolReasonNoMatchingNodes = "NoMatchingNodes"
	// GPUPoolReasonNoReadyNodes: nodes match but none is Ready.
	GPUPoolReasonNoReadyNodes = "NoReadyNodes"
	// GPUPoolReasonNoAllocatableGPUs: Ready nodes match but none advertises the pool's resource.
	GPUPoolReasonNoAllocatableGPUs = "NoAllocatableGPUs"
	// GPUPoolReasonProbeDisabled: spec.probe.enabled is false, so no GPUNode reports are expected.
	GPUPoolReasonProbeDisabled = "ProbeDisabled"
	// GPUPoolReasonReportsFresh: every matching node has a fresh GPUNode report.
	GPUPoolReasonReportsFresh = "ReportsFresh"
	// GPUPoolReasonReportsMissing: some matching nodes have no fresh GPUNode report.
	GPUPoolReasonReportsMissing = "ReportsMissing"
)

// GPUPoolSpec selects a set of GPU nodes and says how workloads request GPUs on them.
// +kubebuilder:validation:XValidation:rule="!has(self.deviceClassName) || self.resourceName == 'nvidia.com/gpu'",message="deviceClassName and a non-default resourceName are mutually exclusive: GPUs are claimed either through DRA or through the extended resource",fieldPath=".deviceClassName"
// +kubebuilder:validation:XValidation:rule="self.sharing != 'MIG' || has(self.deviceClassName) || self.resourceName.startsWith('nvidia.com/mig-') || self.resourceName == 'nvidia.com/gpu'",message="sharing MIG needs resourceName nvidia.com/gpu (single strategy), nvidia.com/mig-<profile> (mixed strategy) or a deviceClassName",fieldPath=".resourceName"
type GPUPoolSpec struct {
	// nodeSelector selects the nodes of the pool. Runtime pods placed in the pool get a
	// matching node affinity.
	// +required
	NodeSelector metav1.LabelSelector `json:"nodeSelector"`

	// tolerations are copied to every pod placed in the pool, typically to tolerate the
	// taints that keep other workloads off GPU nodes.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`

	// resourceName is the extended resource requested for each GPU, for example
	// nvidia.com/gpu, or nvidia.com/mig-3g.40gb for a MIG profile.
	// +optional
	// +kubebuilder:default="nvidia.com/gpu"
	// +kubebuilder:validation:MinLength=3
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`
	ResourceName string `json:"resourceName,omitempty"`

	// deviceClassName, when set, makes pods claim GPUs through Dynamic Resource Allocation
	// with a ResourceClaimTemplate of this DeviceClass instead of the extended resource.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	DeviceClassName string `json:"deviceClassName,omitempty"`

	// sharing says how GPUs are shared between pods: Exclusive, TimeSliced or MIG.
	// +optional
	// +kubebuilder:default=Exclusive
	Sharing GPUSharing `json:"sharing,omitempty"`

	// probe configures the NVML probe DaemonSet that reports each node's GPUs as a GPUNode.
	// +optional
	// +kubebuilder:default={}
	Probe GPUProbeSpec `json:"probe,omitempty"`

	// namespaceSelector limits which namespaces may place InferenceModels in the pool.
	// When absent, every namespace may.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
}

// GPUProbeSpec configures the per-node NVML probe.
// +kubebuilder:validation:XValidation:rule="!has(self.interval) || (duration(self.interval) >= duration('10s') && duration(self.interval) <= duration('1h'))",message="interval must be between 10s and 1h",fieldPath=".interval"
type GPUProbeSpec struct {
	// enabled runs the probe DaemonSet on the pool's nodes.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// interval between two NVML samples on a node, as a Go duration (10s to 1h).
	// +optional
	// +kubebuilder:default="60s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	Interval *metav1.Duration `json:"interval,omitempty"`
}

// GPUPoolStatus is what the controller observed about the pool's nodes.
type GPUPoolStatus struct {
	// conditions: Ready (the pool can take workloads) and Probed (GPUNode reports are fresh).
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// observedGeneration is the spec generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// nodes is the number of nodes the nodeSelector matches.
	// +optional
	Nodes int32 `json:"nodes,omitempty"`

	// readyNodes is the number of matching nodes whose Ready condition is True.
	// +optional
	ReadyNodes int32 `json:"readyNodes,omitempty"`

	// gpus counts the pool's GPUs.
	// +optional
	GPUs GPUCounts `json:"gpus,omitempty"`

	// products lists the GPU models in the pool, largest count first.
	// +optional
	// +listType=map
	// +listMapKey=product
	// +kubebuilder:validation:MaxItems=32
	Products []GPUProduct `json:"products,omitempty"`
}

// GPUCounts counts GPUs of the pool's resource across its nodes.
type GPUCounts struct {
	// capacity is the sum of node capacity for the pool's resource.
	// +optional
	Capacity int32 `json:"capacity,omitempty"`
	// allocatable is the sum of node allocatable for the pool's resource on Ready nodes.
	// +optional
	Allocatable int32 `json:"allocatable,omitempty"`
	// allocated is the number of GPUs requested by HelixFlow pods bound to the pool's nodes.
	// +optional
	Allocated int32 `json:"allocated,omitempty"`
}

// GPUProduct summarises one GPU model present in the pool.
type GPUProduct struct {
	// product is the GPU product name, as NVML or GPU Feature Discovery reports it.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	Product string `json:"product"`
	// memoryMiB is the memory of one GPU of this product, in MiB.
	// +optional
	MemoryMiB int64 `json:"memoryMiB,omitempty"`
	// count is the number of GPUs of this product in the pool.
	// +optional
	Count int32 `json:"count,omitempty"`
	// healthy is the number of those GPUs the probe reports healthy.
	// +optional
	Healthy int32 `json:"healthy,omitempty"`
}

// GPUPool is a set of GPU nodes that InferenceModels can be placed on.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=gpool,categories=helixflow
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63",message="metadata.name must be a DNS label (lowercase letters, digits and '-', at most 63 characters): it is used as a label value on pods"
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Nodes",type=integer,JSONPath=`.status.nodes`
// +kubebuilder:printcolumn:name="GPUs",type=integer,JSONPath=`.status.gpus.allocatable`
// +kubebuilder:printcolumn:name="Allocated",type=integer,JSONPath=`.status.gpus.allocated`
// +kubebuilder:printcolumn:name="Product",type=string,JSONPath=`.status.products[0].product`,priority=1
// +kubebuilder:printcolumn:name="Resource",type=string,JSONPath=`.spec.resourceName`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type GPUPool struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec selects the pool's nodes and says how GPUs are requested there.
	// +required
	Spec GPUPoolSpec `json:"spec"`

	// status is what the controller observed about the pool.
	// +optional
	Status GPUPoolStatus `json:"status,omitempty"`
}

// GPUPoolList is a list of GPUPools.
// +kubebuilder:object:root=true
type GPUPoolList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []GPUPool `json:"items"`
}

// ProbeEnabled reports whether the pool runs the NVML probe (default true).
func (s GPUProbeSpec) ProbeEnabled() bool { return s.Enabled == nil || *s.Enabled }
