package placement

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

func gi(n int64) *resource.Quantity { return resource.NewQuantity(n<<30, resource.BinarySI) }

func node(name string, gpus int64, mem *resource.Quantity) Node {
	return Node{Name: name, Ready: true, Allocatable: gpus, GPUMemory: mem}
}

func TestPlace(t *testing.T) {
	tests := []struct {
		name         string
		nodes        []Node
		req          Request
		wantFits     bool
		wantReason   string
		wantEligible int32
		wantFitting  int32
		wantMsg      []string
	}{
		{
			name:       "no nodes",
			req:        Request{GPUs: 1, Replicas: 1},
			wantReason: servingv1alpha1.InferenceModelReasonNoMatchingNodes,
			wantMsg:    []string{"matches no nodes"},
		},
		{
			name:       "no ready nodes",
			nodes:      []Node{{Name: "a", Allocatable: 8}},
			req:        Request{GPUs: 1, Replicas: 1},
			wantReason: servingv1alpha1.InferenceModelReasonNoMatchingNodes,
			wantMsg:    []string{"none of the 1 nodes", "Ready"},
		},
		{
			name:       "too many GPUs per replica",
			nodes:      []Node{node("a", 4, gi(80)), node("b", 2, gi(80))},
			req:        Request{GPUs: 8, Replicas: 1},
			wantReason: servingv1alpha1.InferenceModelReasonInsufficientGPUs,
			wantMsg:    []string{"needs 8 GPU(s) on one node", "largest node in pool h100 has 4 x 80Gi"},
		},
		{
			name:       "GPU memory too small: the issue's example",
			nodes:      []Node{node("a", 8, gi(40))},
			req:        Request{GPUs: 2, MemoryPerGPU: gi(80), Replicas: 1},
			wantReason: servingv1alpha1.InferenceModelReasonInsufficientGPUMemory,
			wantMsg:    []string{"needs 2 x 80Gi GPU(s) on one node; largest node in pool h100 has 8 x 40Gi"},
		},
		{
			name:         "fits with room",
			nodes:        []Node{node("a", 8, gi(80)), node("b", 8, gi(80))},
			req:          Request{GPUs: 2, MemoryPerGPU: gi(40), Replicas: 3},
			wantFits:     true,
			wantReason:   servingv1alpha1.InferenceModelReasonPlaced,
			wantEligible: 2, wantFitting: 8,
			wantMsg: []string{"3 replica(s) fit in pool h100 on 2 eligible node(s)"},
		},
		{
			name:         "only big-memory nodes are eligible",
			nodes:        []Node{node("small", 8, gi(24)), node("big", 4, gi(80))},
			req:          Request{GPUs: 1, MemoryPerGPU: gi(40), Replicas: 1},
			wantFits:     true,
			wantReason:   servingv1alpha1.InferenceModelReasonPlaced,
			wantEligible: 1, wantFitting: 4,
		},
		{
			name:         "replicas beyond capacity: says how many fit",
			nodes:        []Node{node("a", 8, gi(80))},
			req:          Request{GPUs: 4, MemoryPerGPU: gi(40), Replicas: 3},
			wantFits:     true,
			wantReason:   servingv1alpha1.InferenceModelReasonPartiallyPlaced,
			wantEligible: 1, wantFitting: 2,
			wantMsg: []string{"2 of 3 replicas fit", "Pending"},
		},
		{
			name:         "GPUs used by other models reduce what fits",
			nodes:        []Node{{Name: "a", Ready: true, Allocatable: 8, AllocatedToOthers: 6, GPUMemory: gi(80)}},
			req:          Request{GPUs: 2, Replicas: 2},
			wantFits:     true,
			wantReason:   servingv1alpha1.InferenceModelReasonPartiallyPlaced,
			wantEligible: 1, wantFitting: 1,
			wantMsg: []string{"1 of 2 replicas fit"},
		},
		{
			name:         "unknown model memory is not checked, and said so",
			nodes:        []Node{node("a", 8, gi(16))},
			req:          Request{GPUs: 1, Replicas: 1},
			wantFits:     true,
			wantReason:   servingv1alpha1.InferenceModelReasonPlaced,
			wantEligible: 1, wantFitting: 8,
			wantMsg: []string{"GPU memory needed is unknown"},
		},
		{
			name:         "unknown node memory is not checked, and said so",
			nodes:        []Node{node("a", 8, nil)},
			req:          Request{GPUs: 1, MemoryPerGPU: gi(80), MemoryEstimated: true, Replicas: 1},
			wantFits:     true,
			wantReason:   servingv1alpha1.InferenceModelReasonPlaced,
			wantEligible: 1, wantFitting: 8,
			wantMsg: []string{"1 node(s) report no GPU memory", "estimated"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Place("h100", tc.nodes, tc.req)
			if got.Fits != tc.wantFits || got.Reason != tc.wantReason || got.EligibleNodes != tc.wantEligible || got.FittingReplicas != tc.wantFitting {
				t.Errorf("Place() = %+v, want fits=%v reason=%s eligible=%d fitting=%d", got, tc.wantFits, tc.wantReason, tc.wantEligible, tc.wantFitting)
			}
			for _, w := range tc.wantMsg {
				if !strings.Contains(got.Message, w) {
					t.Errorf("message %q lacks %q", got.Message, w)
				}
			}
		})
	}
}

func TestMemoryPerGPU(t *testing.T) {
	model := func(params string, dtype servingv1alpha1.DType, count int32, min *resource.Quantity) *servingv1alpha1.InferenceModel {
		return &servingv1alpha1.InferenceModel{Spec: servingv1alpha1.InferenceModelSpec{
			Model: servingv1alpha1.ModelSource{Parameters: params, DType: dtype},
			GPU:   servingv1alpha1.GPURequirements{Count: count, MinMemory: min},
		}}
	}
	tests := []struct {
		name      string
		model     *servingv1alpha1.InferenceModel
		want      string
		estimated bool
	}{
		{name: "minMemory wins", model: model("70B", servingv1alpha1.DTypeBF16, 1, ptr.To(resource.MustParse("40Gi"))), want: "40Gi"},
		// 8e9 x 2 bytes x 1.2 = 19.2e9 bytes = 17.9 GiB -> 18Gi.
		{name: "8B BF16 on one GPU", model: model("8B", servingv1alpha1.DTypeBF16, 1, nil), want: "18Gi", estimated: true},
		// 70e9 x 2 x 1.2 / 4 = 42e9 bytes = 39.1 GiB -> 40Gi.
		{name: "70B BF16 over 4 GPUs", model: model("70B", servingv1alpha1.DTypeBF16, 4, nil), want: "40Gi", estimated: true},
		// 70e9 x 0.5 x 1.2 = 42e9 -> 40Gi.
		{name: "70B INT4 on one GPU", model: model("70B", servingv1alpha1.DTypeINT4, 1, nil), want: "40Gi", estimated: true},
		// dtype defaults to BF16: 1.5e9 x 2 x 1.2 = 3.6e9 -> 4Gi.
		{name: "no dtype means BF16", model: model("1.5B", "", 1, nil), want: "4Gi", estimated: true},
		{name: "nothing to go on", model: model("", "", 1, nil), want: ""},
		{name: "CPU-only", model: model("8B", "", 0, nil), want: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, est := MemoryPerGPU(tc.model)
			got := ""
			if q != nil {
				got = q.String()
			}
			if got != tc.want || est != tc.estimated {
				t.Errorf("MemoryPerGPU() = %q estimated=%v, want %q estimated=%v", got, est, tc.want, tc.estimated)
			}
		})
	}
}

func TestNodeGPUMemory(t *testing.T) {
	labelled := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{LabelGPUMemory: "40960"}}}
	report := &servingv1alpha1.GPUNode{Status: servingv1alpha1.GPUNodeStatus{Devices: []servingv1alpha1.GPUDevice{{Index: 0, MemoryMiB: 81920}, {Index: 1, MemoryMiB: 40960}}}}
	if got := NodeGPUMemory(labelled, nil); got == nil || got.String() != "40Gi" {
		t.Errorf("from label: %v", got)
	}
	if got := NodeGPUMemory(&corev1.Node{}, report); got == nil || got.String() != "40Gi" {
		t.Errorf("from report (smallest device): %v", got)
	}
	if got := NodeGPUMemory(&corev1.Node{}, nil); got != nil {
		t.Errorf("unknown: %v", got)
	}
}
