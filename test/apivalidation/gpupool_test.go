package apivalidation

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

func validGPUPool() client.Object {
	return &servingv1alpha1.GPUPool{
		ObjectMeta: metav1.ObjectMeta{Name: "h100"},
		Spec: servingv1alpha1.GPUPoolSpec{
			NodeSelector: metav1.LabelSelector{MatchLabels: map[string]string{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
		},
	}
}

func TestGPUPoolValidation(t *testing.T) {
	toleration := func(int) any { return map[string]any{"key": "nvidia.com/gpu", "operator": "Exists"} }
	runCases(t, validGPUPool, []validationCase{
		{name: "valid base"},
		{name: "DRA device class with default resource", mutate: set("spec.deviceClassName", "gpu.nvidia.com")},
		{name: "MIG mixed strategy", mutate: all(set("spec.sharing", "MIG"), set("spec.resourceName", "nvidia.com/mig-3g.40gb"))},
		{name: "probe disabled", mutate: set("spec.probe", map[string]any{"enabled": false})},

		{name: "missing nodeSelector", mutate: unset("spec.nodeSelector"), wantErrs: []string{"spec.nodeSelector", "Required"}},
		{name: "deviceClassName with non-default resourceName", mutate: all(set("spec.deviceClassName", "gpu.nvidia.com"), set("spec.resourceName", "nvidia.com/mig-1g.10gb")), wantErrs: []string{"spec.deviceClassName", "mutually exclusive"}},
		{name: "unknown sharing", mutate: set("spec.sharing", "Shared"), wantErrs: []string{"spec.sharing", "Unsupported value"}},
		{name: "MIG with a foreign resource", mutate: all(set("spec.sharing", "MIG"), set("spec.resourceName", "example.com/gpu")), wantErrs: []string{"spec.resourceName", "MIG"}},
		{name: "resourceName without a domain", mutate: set("spec.resourceName", "gpu"), wantErrs: []string{"spec.resourceName"}},
		{name: "too many tolerations", mutate: set("spec.tolerations", repeat(17, toleration)), wantErrs: []string{"spec.tolerations", "must have at most 16 items"}},
		{name: "probe interval too short", mutate: set("spec.probe.interval", "1s"), wantErrs: []string{"spec.probe.interval", "between 10s and 1h"}},
		{name: "probe interval not a duration", mutate: set("spec.probe.interval", "sixty"), wantErrs: []string{"spec.probe.interval"}},
		{name: "name not a DNS label", mutate: set("metadata.name", "h100.pool"), wantErrs: []string{"metadata.name", "DNS label"}},
	})
}
