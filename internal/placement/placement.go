// Package placement decides whether and where an InferenceModel's replicas fit in a GPUPool.
// It is pure: callers pass the pool, its nodes, GPUNode reports and current allocations, and
// get back a verdict with a reason and a message with numbers. No I/O happens here.
package placement

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// LabelGPUMemory is the per-GPU memory in MiB that NVIDIA GPU Feature Discovery puts on nodes.
const LabelGPUMemory = "nvidia.com/gpu.memory"

// LabelGPUProduct is the GPU product that GPU Feature Discovery puts on nodes.
const LabelGPUProduct = "nvidia.com/gpu.product"

// KVCacheHeadroom multiplies the weights' size to leave room for the KV cache, activations
// and the CUDA context. 1.2 is the usual rule of thumb for serving at modest batch sizes;
// users who need more set gpu.minMemory.
const KVCacheHeadroom = 1.2

// Node is what placement needs to know about one node of the pool.
type Node struct {
	Name string
	// Ready is the node's Ready condition and it is not cordoned.
	Ready bool
	// Allocatable is the node's allocatable count of the pool's GPU resource.
	Allocatable int64
	// AllocatedToOthers is the GPUs requested by HelixFlow pods of other models bound here.
	AllocatedToOthers int64
	// GPUMemory is the memory of one GPU (smallest when they differ); nil when unknown.
	GPUMemory *resource.Quantity
}

// Request is what one replica of the model needs.
type Request struct {
	// GPUs per replica, all on one node.
	GPUs int64
	// MemoryPerGPU each GPU must have; nil when neither given nor estimable.
	MemoryPerGPU *resource.Quantity
	// MemoryEstimated is true when MemoryPerGPU comes from parameters x dtype.
	MemoryEstimated bool
	// Replicas wanted.
	Replicas int32
}

// Result is the placement verdict.
type Result struct {
	// Fits is false when no replica can ever be placed (no pods should be created).
	Fits bool
	// Reason is a PascalCase condition reason.
	Reason string
	// Message explains the verdict with numbers.
	Message string
	// EligibleNodes can host at least one replica by capacity and GPU memory.
	EligibleNodes int32
	// FittingReplicas is how many replicas the eligible nodes' free GPUs hold now.
	FittingReplicas int32
}

// bytesPerParam is the size of one weight for each dtype.
var bytesPerParam = map[servingv1alpha1.DType]float64{
	servingv1alpha1.DTypeFP32: 4,
	servingv1alpha1.DTypeFP16: 2,
	servingv1alpha1.DTypeBF16: 2,
	servingv1alpha1.DTypeFP8:  1,
	servingv1alpha1.DTypeINT8: 1,
	servingv1alpha1.DTypeINT4: 0.5,
}

var paramSuffix = map[byte]float64{'K': 1e3, 'M': 1e6, 'B': 1e9, 'T': 1e12}

// ParseParameters turns "8B", "1.5B", "405M" into a parameter count.
func ParseParameters(s string) (float64, error) {
	if len(s) < 2 {
		return 0, fmt.Errorf("parameters %q: want a number and K, M, B or T", s)
	}
	mult, ok := paramSuffix[s[len(s)-1]]
	if !ok {
		return 0, fmt.Errorf("parameters %q: want a number and K, M, B or T", s)
	}
	n, err := strconv.ParseFloat(s[:len(s)-1], 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("parameters %q: want a positive number before the suffix", s)
	}
	return n * mult, nil
}

// MemoryPerGPU returns gpu.minMemory when set; else the estimate
//
//	parameters x bytesPerParam(dtype, default BF16) x KVCacheHeadroom / gpu.count
//
// rounded up to a whole GiB; else nil (unknown). estimated says which.
func MemoryPerGPU(model *servingv1alpha1.InferenceModel) (q *resource.Quantity, estimated bool) {
	gpu := model.Spec.GPU
	if gpu.MinMemory != nil {
		m := gpu.MinMemory.DeepCopy()
		return &m, false
	}
	if model.Spec.Model.Parameters == "" || gpu.Count <= 0 {
		return nil, false
	}
	params, err := ParseParameters(model.Spec.Model.Parameters)
	if err != nil {
		return nil, false
	}
	bpp, ok := bytesPerParam[model.Spec.Model.DType]
	if !ok {
		bpp = bytesPerParam[servingv1alpha1.DTypeBF16]
	}
	perGPU := params * bpp * KVCacheHeadroom / float64(gpu.Count)
	gib := int64(math.Ceil(perGPU / (1 << 30)))
	return resource.NewQuantity(gib<<30, resource.BinarySI), true
}

// Place fits req onto nodes of the named pool.
func Place(pool string, nodes []Node, req Request) Result {
	if len(nodes) == 0 {
		return Result{Reason: servingv1alpha1.InferenceModelReasonNoMatchingNodes,
			Message: fmt.Sprintf("GPUPool %s matches no nodes", pool)}
	}
	var (
		eligible, fitting    int64
		biggest              Node // the node with the most allocatable GPUs
		enoughGPUs           int  // nodes with enough GPUs, whatever their memory
		largestMem           *resource.Quantity
		unknownMem, notReady int
	)
	for _, n := range nodes {
		if !n.Ready {
			notReady++
			continue
		}
		if n.Allocatable > biggest.Allocatable || biggest.Name == "" {
			biggest = n
		}
		if n.Allocatable < req.GPUs {
			continue
		}
		enoughGPUs++
		if n.GPUMemory == nil {
			unknownMem++
		} else if largestMem == nil || n.GPUMemory.Cmp(*largestMem) > 0 {
			m := n.GPUMemory.DeepCopy()
			largestMem = &m
		}
		if req.MemoryPerGPU != nil && n.GPUMemory != nil && n.GPUMemory.Cmp(*req.MemoryPerGPU) < 0 {
			continue
		}
		eligible++
		if free := n.Allocatable - n.AllocatedToOthers; free > 0 {
			fitting += free / req.GPUs
		}
	}
	res := Result{EligibleNodes: int32(eligible), FittingReplicas: int32(min(fitting, math.MaxInt32))}
	// perReplica is what one replica asks for, e.g. "2 GPU(s)" or "2 x 80Gi GPU(s)".
	perReplica := fmt.Sprintf("%d GPU(s)", req.GPUs)
	if req.MemoryPerGPU != nil {
		perReplica = fmt.Sprintf("%d x %s GPU(s)", req.GPUs, quantityString(*req.MemoryPerGPU))
	}
	need := "needs " + perReplica
	switch {
	case notReady == len(nodes):
		res.Reason = servingv1alpha1.InferenceModelReasonNoMatchingNodes
		res.Message = fmt.Sprintf("none of the %d nodes of GPUPool %s is Ready", len(nodes), pool)
	case enoughGPUs == 0:
		res.Reason = servingv1alpha1.InferenceModelReasonInsufficientGPUs
		res.Message = fmt.Sprintf("%s on one node; largest node in pool %s has %d", need, pool, biggest.Allocatable)
		if biggest.GPUMemory != nil {
			res.Message += " x " + quantityString(*biggest.GPUMemory)
		}
	case eligible == 0:
		res.Reason = servingv1alpha1.InferenceModelReasonInsufficientGPUMemory
		if biggest.GPUMemory != nil {
			res.Message = fmt.Sprintf("%s on one node; largest node in pool %s has %d x %s", need, pool, biggest.Allocatable, quantityString(*biggest.GPUMemory))
		} else {
			res.Message = fmt.Sprintf("%s on one node; largest GPU in pool %s has %s", need, pool, quantityString(*largestMem))
		}
	default:
		res.Fits = true
		res.Reason = servingv1alpha1.InferenceModelReasonPlaced
		var notes []string
		if req.MemoryPerGPU == nil {
			notes = append(notes, "GPU memory needed is unknown (set gpu.minMemory or model.parameters), memory not checked")
		} else if unknownMem > 0 {
			notes = append(notes, fmt.Sprintf("%d node(s) report no GPU memory, memory not checked there", unknownMem))
		}
		if req.MemoryEstimated {
			notes = append(notes, "memory estimated from model.parameters and dtype")
		}
		if res.FittingReplicas < req.Replicas {
			res.Reason = servingv1alpha1.InferenceModelReasonPartiallyPlaced
			res.Message = fmt.Sprintf("%d of %d replicas fit in pool %s (%s each, %d eligible node(s)); the rest stay Pending until GPUs free up",
				res.FittingReplicas, req.Replicas, pool, perReplica, eligible)
		} else {
			res.Message = fmt.Sprintf("%d replica(s) fit in pool %s on %d eligible node(s), %s each",
				req.Replicas, pool, eligible, perReplica)
		}
		if len(notes) > 0 {
			res.Message += "; " + strings.Join(notes, "; ")
		}
	}
	return res
}

// quantityString prints memory the way people write it: 80Gi rather than 85899345920.
func quantityString(q resource.Quantity) string {
	v := q.Value()
	if v >= 1<<30 && v%(1<<30) == 0 {
		return fmt.Sprintf("%dGi", v>>30)
	}
	if v >= 1<<20 && v%(1<<20) == 0 {
		if v >= 1<<30 {
			return fmt.Sprintf("%.1fGi", float64(v)/(1<<30))
		}
		return fmt.Sprintf("%dMi", v>>20)
	}
	return q.String()
}

// NodeGPUMemory reads a node's per-GPU memory: the smallest device in its GPUNode report,
// else the GPU Feature Discovery label (MiB), else nil.
func NodeGPUMemory(node *corev1.Node, report *servingv1alpha1.GPUNode) *resource.Quantity {
	if report != nil && len(report.Status.Devices) > 0 {
		smallest := int64(-1)
		for _, d := range report.Status.Devices {
			if d.MemoryMiB > 0 && (smallest < 0 || d.MemoryMiB < smallest) {
				smallest = d.MemoryMiB
			}
		}
		if smallest > 0 {
			return resource.NewQuantity(smallest<<20, resource.BinarySI)
		}
	}
	if v, ok := node.Labels[LabelGPUMemory]; ok {
		if mib, err := strconv.ParseInt(v, 10, 64); err == nil && mib > 0 {
			return resource.NewQuantity(mib<<20, resource.BinarySI)
		}
	}
	return nil
}

// NodeReady is true when the node's Ready condition is True and it is not cordoned.
func NodeReady(node *corev1.Node) bool {
	if node.Spec.Unschedulable {
		return false
	}
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// SortNodes orders nodes by name so results and messages are stable.
func SortNodes(nodes []Node) {
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
}
