package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/placement"
)

// LabelGPUCount is the GPU count GPU Feature Discovery puts on nodes; DRA pools use it
// when no GPUNode report says how many devices a node has.
const LabelGPUCount = "nvidia.com/gpu.count"

// poolInventory is a snapshot of a pool's nodes, their GPUNode reports and the GPUs that
// HelixFlow pods hold on them. Only reads from the informer cache happen here.
type poolInventory struct {
	pool    *servingv1alpha1.GPUPool
	nodes   []corev1.Node
	reports map[string]*servingv1alpha1.GPUNode
	// allocated[node][model] is the GPUs requested by pods of model (namespace/name) on node.
	allocated map[string]map[types.NamespacedName]int64
}

func poolSelector(pool *servingv1alpha1.GPUPool) (labels.Selector, error) {
	sel, err := metav1.LabelSelectorAsSelector(&pool.Spec.NodeSelector)
	if err != nil {
		return nil, fmt.Errorf("parsing spec.nodeSelector of GPUPool %s: %w", pool.Name, err)
	}
	return sel, nil
}

func loadPoolInventory(ctx context.Context, c client.Reader, pool *servingv1alpha1.GPUPool) (*poolInventory, error) {
	sel, err := poolSelector(pool)
	if err != nil {
		return nil, err
	}
	// The cache's objects are only read here, never modified: skip the deep copies, which
	// dominate the cost of reconciling many models against one big pool.
	var nodes corev1.NodeList
	if err := c.List(ctx, &nodes, client.MatchingLabelsSelector{Selector: sel}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	inv := &poolInventory{pool: pool, nodes: nodes.Items, reports: map[string]*servingv1alpha1.GPUNode{}, allocated: map[string]map[types.NamespacedName]int64{}}
	if len(nodes.Items) == 0 {
		return inv, nil
	}
	inPool := make(map[string]bool, len(nodes.Items))
	for i := range nodes.Items {
		inPool[nodes.Items[i].Name] = true
	}
	var reports servingv1alpha1.GPUNodeList
	if err := c.List(ctx, &reports, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("listing GPUNodes: %w", err)
	}
	for i := range reports.Items {
		if inPool[reports.Items[i].Name] {
			inv.reports[reports.Items[i].Name] = &reports.Items[i]
		}
	}
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.MatchingLabels{servingv1alpha1.LabelManagedBy: servingv1alpha1.ManagedByValue}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	resName := corev1.ResourceName(pool.Spec.ResourceName)
	for i := range pods.Items {
		p := &pods.Items[i]
		if !inPool[p.Spec.NodeName] || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		n := podGPURequest(p, resName)
		if n == 0 {
			continue
		}
		model := types.NamespacedName{Namespace: p.Namespace, Name: p.Labels[servingv1alpha1.LabelInferenceModel]}
		if inv.allocated[p.Spec.NodeName] == nil {
			inv.allocated[p.Spec.NodeName] = map[types.NamespacedName]int64{}
		}
		inv.allocated[p.Spec.NodeName][model] += n
	}
	return inv, nil
}

// podGPURequest is the pod's limit of the GPU resource (extended resources are requested
// through limits; requests default to them).
func podGPURequest(p *corev1.Pod, res corev1.ResourceName) int64 {
	var n int64
	for i := range p.Spec.Containers {
		if q, ok := p.Spec.Containers[i].Resources.Limits[res]; ok {
			n += q.Value()
		}
	}
	return n
}

// allocatable is the node's GPU count for the pool: the extended resource, or for DRA pools
// the device count from the GPUNode report or GPU Feature Discovery.
func (inv *poolInventory) allocatable(n *corev1.Node) (capacity, allocatable int64) {
	if inv.pool.Spec.DeviceClassName == "" {
		res := corev1.ResourceName(inv.pool.Spec.ResourceName)
		c, a := n.Status.Capacity[res], n.Status.Allocatable[res]
		return c.Value(), a.Value()
	}
	if r := inv.reports[n.Name]; r != nil && r.Status.GPUCount > 0 {
		return int64(r.Status.GPUCount), int64(r.Status.GPUCount)
	}
	var count int64
	if _, err := fmt.Sscan(n.Labels[LabelGPUCount], &count); err == nil {
		return count, count
	}
	return 0, 0
}

// placementNodes describes the pool's nodes from the point of view of one model: GPUs
// held by the model's own pods are free for it (they are its replicas).
func (inv *poolInventory) placementNodes(model types.NamespacedName) []placement.Node {
	out := make([]placement.Node, 0, len(inv.nodes))
	for i := range inv.nodes {
		n := &inv.nodes[i]
		_, alloc := inv.allocatable(n)
		var others int64
		for m, gpus := range inv.allocated[n.Name] {
			if m != model {
				others += gpus
			}
		}
		out = append(out, placement.Node{
			Name: n.Name, Ready: placement.NodeReady(n), Allocatable: alloc,
			AllocatedToOthers: others, GPUMemory: placement.NodeGPUMemory(n, inv.reports[n.Name]),
		})
	}
	placement.SortNodes(out)
	return out
}
