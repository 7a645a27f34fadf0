// Package probe turns NVML samples of one node into that node's GPUNode report and its
// Prometheus GPU metrics. It writes the report only when something a scheduler or a person
// cares about changed, plus a heartbeat, so a thousand nodes do not flood the API server.
package probe

import (
	"errors"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/gpu"
)

// BuildStatus is the GPUNode status for a sample (or for the error that prevented one).
// previous carries the conditions already reported, so transition times survive.
func BuildStatus(snap gpu.Snapshot, sampleErr error, previous []metav1.Condition, now metav1.Time) servingv1alpha1.GPUNodeStatus {
	st := servingv1alpha1.GPUNodeStatus{LastProbeTime: &now}
	for _, c := range previous {
		st.Conditions = append(st.Conditions, *c.DeepCopy())
	}
	ready := metav1.Condition{Type: servingv1alpha1.ConditionReady}
	switch {
	case sampleErr != nil:
		ready.Status, ready.Reason = metav1.ConditionFalse, servingv1alpha1.GPUNodeReasonNVMLUnavailable
		if !errors.Is(sampleErr, gpu.ErrNVMLUnavailable) {
			ready.Reason = servingv1alpha1.ReasonReconcileError
		}
		ready.Message = sampleErr.Error()
	default:
		st.DriverVersion, st.CUDADriverVersion = snap.DriverVersion, snap.CUDADriverVersion
		st.GPUCount = int32(len(snap.Devices))
		unhealthy := 0
		for _, d := range snap.Devices {
			st.Devices = append(st.Devices, device(d))
			if !d.Healthy {
				unhealthy++
			}
		}
		switch {
		case len(snap.Devices) == 0:
			ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, servingv1alpha1.GPUNodeReasonNoDevices, "NVML reports no GPU"
		case unhealthy > 0:
			ready.Status, ready.Reason = metav1.ConditionFalse, servingv1alpha1.GPUNodeReasonUnhealthyDevices
			ready.Message = fmt.Sprintf("%d of %d GPUs unhealthy", unhealthy, len(snap.Devices))
		default:
			ready.Status, ready.Reason = metav1.ConditionTrue, servingv1alpha1.GPUNodeReasonProbed
			ready.Message = fmt.Sprintf("%d healthy GPUs", len(snap.Devices))
		}
	}
	ready.LastTransitionTime = now
	meta.SetStatusCondition(&st.Conditions, ready)
	return st
}

func device(d gpu.Device) servingv1alpha1.GPUDevice {
	out := servingv1alpha1.GPUDevice{
		Index: int32(d.Index), UUID: d.UUID, Product: d.Product, MemoryMiB: d.MemoryTotalMiB,
		ComputeCapability: d.ComputeCapability, MIGEnabled: d.MIGEnabled, Healthy: d.Healthy, LastXID: int32(d.LastXID),
	}
	for _, m := range d.MIGDevices {
		out.MIGDevices = append(out.MIGDevices, servingv1alpha1.MIGDevice{Profile: m.Profile, UUID: m.UUID, MemoryMiB: m.MemoryMiB})
	}
	return out
}

// changed reports whether two statuses differ in anything but the probe time.
func changed(a, b *servingv1alpha1.GPUNodeStatus) bool {
	if a == nil || b == nil {
		return a != b
	}
	x, y := *a, *b
	x.LastProbeTime, y.LastProbeTime = nil, nil
	return !equality.Semantic.DeepEqual(x, y)
}
