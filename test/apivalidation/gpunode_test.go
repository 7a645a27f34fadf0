package apivalidation

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

func validGPUNode() client.Object {
	return &servingv1alpha1.GPUNode{ObjectMeta: metav1.ObjectMeta{Name: "gpu-node"}}
}

func device(i int) any {
	return map[string]any{"index": i, "product": "NVIDIA H100 80GB HBM3", "memoryMiB": 81559, "computeCapability": "9.0", "healthy": true}
}

// GPUNode reports are written through the status subresource by the probe, so each case
// creates the node and then writes its status.
func TestGPUNodeValidation(t *testing.T) {
	runCases(t, validGPUNode, []validationCase{
		{name: "valid report", status: true, onUpdate: set("status.devices", repeat(8, device))},
		{name: "compute capability not a version", status: true, onUpdate: set("status.devices", []any{map[string]any{"index": 0, "computeCapability": "nine"}}), wantErrs: []string{"status.devices[0].computeCapability"}},
		{name: "too many devices", status: true, onUpdate: set("status.devices", repeat(65, device)), wantErrs: []string{"status.devices", "must have at most 64 items"}},
		{name: "duplicate device index", status: true, onUpdate: set("status.devices", []any{device(0), device(0)}), wantErrs: []string{"status.devices", "Duplicate value"}},
		{name: "negative memory", status: true, onUpdate: set("status.devices", []any{map[string]any{"index": 0, "memoryMiB": -1}}), wantErrs: []string{"status.devices[0].memoryMiB"}},
		{name: "MIG device without profile", status: true, onUpdate: set("status.devices", []any{map[string]any{"index": 0, "migEnabled": true, "migDevices": []any{map[string]any{"uuid": "MIG-1"}}}}), wantErrs: []string{"status.devices[0].migDevices[0].profile", "Required"}},
	})
}
