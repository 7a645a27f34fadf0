package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// GPUNode condition reasons. The Ready condition of a GPUNode says whether the probe could
// read the node's GPUs with NVML and whether they are healthy.
const (
	// GPUNodeReasonProbed: NVML answered and every device is healthy.
	GPUNodeReasonProbed = "Probed"
	// GPUNodeReasonNVMLUnavailable: libnvidia-ml.so could not be loaded or initialised.
	GPUNodeReasonNVMLUnavailable = "NVMLUnavailable"
	// GPUNodeReasonUnhealthyDevices: NVML answered but at least one device is unhealthy.
	GPUNodeReasonUnhealthyDevices = "UnhealthyDevices"
	// GPUNodeReasonNoDevices: NVML answered but reports no GPU.
	GPUNodeReasonNoDevices = "NoDevices"
)

// GPUNodeStatus is what NVML reports about the GPUs of one node.
type GPUNodeStatus struct {
	// conditions: Ready says whether NVML could be read and all devices are healthy.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// lastProbeTime is when the probe last confirmed this report (a heartbeat).
	// +optional
	LastProbeTime *metav1.Time `json:"lastProbeTime,omitempty"`

	// driverVersion is the NVIDIA kernel driver version, for example 550.54.15.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	DriverVersion string `json:"driverVersion,omitempty"`

	// cudaDriverVersion is the highest CUDA version the driver supports, for example 12.4.
	// +optional
	// +kubebuilder:validation:MaxLength=32
	CUDADriverVersion string `json:"cudaDriverVersion,omitempty"`

	// gpuCount is the number of GPUs NVML reports.
	// +optional
	GPUCount int32 `json:"gpuCount,omitempty"`

	// devices lists the node's GPUs by NVML index.
	// +optional
	// +listType=map
	// +listMapKey=index
	// +kubebuilder:validation:MaxItems=64
	Devices []GPUDevice `json:"devices,omitempty"`
}

// GPUDevice is one physical GPU as NVML sees it.
type GPUDevice struct {
	// index is the NVML device index.
	// +required
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=63
	Index int32 `json:"index"`

	// uuid is the device UUID, for example GPU-5d2a....
	// +optional
	// +kubebuilder:validation:MaxLength=96
	UUID string `json:"uuid,omitempty"`

	// product is the product name, for example NVIDIA H100 80GB HBM3.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	Product string `json:"product,omitempty"`

	// memoryMiB is the total framebuffer memory in MiB.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MemoryMiB int64 `json:"memoryMiB,omitempty"`

	// computeCapability is the CUDA compute capability, for example 9.0.
	// +optional
	// +kubebuilder:validation:MaxLength=8
	// +kubebuilder:validation:Pattern=`^[0-9]+\.[0-9]+$`
	ComputeCapability string `json:"computeCapability,omitempty"`

	// migEnabled is true when MIG mode is on for this device.
	// +optional
	MIGEnabled bool `json:"migEnabled,omitempty"`

	// migDevices lists the MIG partitions when MIG mode is on.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	MIGDevices []MIGDevice `json:"migDevices,omitempty"`

	// healthy is false when the device has uncorrected ECC errors or a critical XID event.
	// +optional
	Healthy bool `json:"healthy,omitempty"`

	// lastXID is the most recent XID error code NVML reported for the device, 0 when none.
	// +optional
	// +kubebuilder:validation:Minimum=0
	LastXID int32 `json:"lastXID,omitempty"`
}

// MIGDevice is one Multi-Instance GPU partition.
type MIGDevice struct {
	// profile is the MIG profile, for example 3g.40gb.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=32
	Profile string `json:"profile"`
	// uuid is the MIG device UUID.
	// +optional
	// +kubebuilder:validation:MaxLength=96
	UUID string `json:"uuid,omitempty"`
	// memoryMiB is the partition's memory in MiB.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MemoryMiB int64 `json:"memoryMiB,omitempty"`
}

// GPUNode is the NVML report of one node's GPUs. Its name is the node's name. It is written
// only by the probe running on that node; people read it.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=gnode,categories=helixflow
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="GPUs",type=integer,JSONPath=`.status.gpuCount`
// +kubebuilder:printcolumn:name="Product",type=string,JSONPath=`.status.devices[0].product`
// +kubebuilder:printcolumn:name="Driver",type=string,JSONPath=`.status.driverVersion`,priority=1
// +kubebuilder:printcolumn:name="Last-Probe",type=date,JSONPath=`.status.lastProbeTime`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type GPUNode struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// status is the probe's report.
	// +optional
	Status GPUNodeStatus `json:"status,omitempty"`
}

// GPUNodeList is a list of GPUNodes.
// +kubebuilder:object:root=true
type GPUNodeList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []GPUNode `json:"items"`
}
