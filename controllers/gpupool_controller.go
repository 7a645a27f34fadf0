package controllers

import (
	"context"
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/placement"
)

// +kubebuilder:rbac:groups=serving.helixflow.io,resources=gpupools,verbs=get;list;watch
// +kubebuilder:rbac:groups=serving.helixflow.io,resources=gpupools/status,verbs=get;update;patch

// GPUPoolReconciler keeps a GPUPool's status in line with its nodes, their GPUNode reports
// and the GPUs HelixFlow pods hold there.
type GPUPoolReconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
	// Now is the clock used to judge report freshness; time.Now when nil.
	Now func() time.Time
}

func (r *GPUPoolReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	pool := &servingv1alpha1.GPUPool{}
	if err := r.Client.Get(ctx, req.NamespacedName, pool); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	inv, err := loadPoolInventory(ctx, r.Client, pool)
	if err != nil {
		return ctrl.Result{}, err
	}
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	st, staleAfter := computePoolStatus(pool, inv, now())
	if !equality.Semantic.DeepEqual(pool.Status, st) {
		before := meta.FindStatusCondition(pool.Status.Conditions, servingv1alpha1.ConditionReady)
		pool.Status = st
		if err := r.Client.Status().Update(ctx, pool); err != nil {
			return ctrl.Result{}, fmt.Errorf("updating status: %w", err)
		}
		if after := meta.FindStatusCondition(st.Conditions, servingv1alpha1.ConditionReady); before == nil || before.Status != after.Status {
			eventType := corev1.EventTypeNormal
			if after.Status != metav1.ConditionTrue {
				eventType = corev1.EventTypeWarning
			}
			r.Recorder.Eventf(pool, nil, eventType, after.Reason, servingv1alpha1.ConditionReady, "%s", after.Message)
		}
	}
	// Report freshness changes with time alone: look again when the oldest report goes stale.
	return ctrl.Result{RequeueAfter: staleAfter}, nil
}

// reportTTL is how old a GPUNode report may be before the pool counts it as missing:
// three probe intervals, so one late heartbeat does not flap the condition.
func reportTTL(pool *servingv1alpha1.GPUPool) time.Duration {
	interval := time.Minute
	if pool.Spec.Probe.Interval != nil {
		interval = pool.Spec.Probe.Interval.Duration
	}
	return 3 * interval
}

// computePoolStatus is pure. staleAfter is when the freshest-but-aging report expires
// (0 when nothing will change with time alone).
func computePoolStatus(pool *servingv1alpha1.GPUPool, inv *poolInventory, now time.Time) (servingv1alpha1.GPUPoolStatus, time.Duration) {
	st := *pool.Status.DeepCopy()
	gen := pool.Generation
	st.ObservedGeneration = gen
	st.Nodes, st.ReadyNodes = int32(len(inv.nodes)), 0
	st.GPUs = servingv1alpha1.GPUCounts{}
	products := map[string]*servingv1alpha1.GPUProduct{}
	ttl := reportTTL(pool)
	var fresh int32
	var staleAfter time.Duration
	for i := range inv.nodes {
		n := &inv.nodes[i]
		capacity, alloc := inv.allocatable(n)
		st.GPUs.Capacity += int32(capacity)
		if placement.NodeReady(n) {
			st.ReadyNodes++
			st.GPUs.Allocatable += int32(alloc)
		}
		for _, gpus := range inv.allocated[n.Name] {
			st.GPUs.Allocated += int32(gpus)
		}
		report := inv.reports[n.Name]
		if report != nil && report.Status.LastProbeTime != nil {
			if age := now.Sub(report.Status.LastProbeTime.Time); age < ttl {
				fresh++
				if left := ttl - age; staleAfter == 0 || left < staleAfter {
					staleAfter = left
				}
			}
		}
		addProducts(products, n, report, capacity)
	}
	st.Products = sortedProducts(products)

	switch {
	case st.Nodes == 0:
		setCondition(&st.Conditions, servingv1alpha1.ConditionReady, metav1.ConditionFalse, servingv1alpha1.GPUPoolReasonNoMatchingNodes, "spec.nodeSelector matches no nodes", gen)
	case st.ReadyNodes == 0:
		setCondition(&st.Conditions, servingv1alpha1.ConditionReady, metav1.ConditionFalse, servingv1alpha1.GPUPoolReasonNoReadyNodes, fmt.Sprintf("none of %d nodes is Ready", st.Nodes), gen)
	case st.GPUs.Allocatable == 0:
		setCondition(&st.Conditions, servingv1alpha1.ConditionReady, metav1.ConditionFalse, servingv1alpha1.GPUPoolReasonNoAllocatableGPUs,
			fmt.Sprintf("%d Ready node(s) but none advertises %s", st.ReadyNodes, poolResourceDescription(pool)), gen)
	default:
		setCondition(&st.Conditions, servingv1alpha1.ConditionReady, metav1.ConditionTrue, servingv1alpha1.GPUPoolReasonNodesReady,
			fmt.Sprintf("%d of %d nodes Ready, %d GPUs allocatable, %d allocated", st.ReadyNodes, st.Nodes, st.GPUs.Allocatable, st.GPUs.Allocated), gen)
	}
	switch {
	case !pool.Spec.Probe.ProbeEnabled():
		setCondition(&st.Conditions, servingv1alpha1.GPUPoolConditionProbed, metav1.ConditionFalse, servingv1alpha1.GPUPoolReasonProbeDisabled, "spec.probe.enabled is false; node labels are used", gen)
		staleAfter = 0
	case fresh == st.Nodes && st.Nodes > 0:
		setCondition(&st.Conditions, servingv1alpha1.GPUPoolConditionProbed, metav1.ConditionTrue, servingv1alpha1.GPUPoolReasonReportsFresh,
			fmt.Sprintf("all %d nodes have a GPUNode report newer than %s", st.Nodes, ttl), gen)
	default:
		setCondition(&st.Conditions, servingv1alpha1.GPUPoolConditionProbed, metav1.ConditionFalse, servingv1alpha1.GPUPoolReasonReportsMissing,
			fmt.Sprintf("%d of %d nodes have a GPUNode report newer than %s", fresh, st.Nodes, ttl), gen)
	}
	return st, staleAfter
}

func poolResourceDescription(pool *servingv1alpha1.GPUPool) string {
	if pool.Spec.DeviceClassName != "" {
		return "devices of DeviceClass " + pool.Spec.DeviceClassName
	}
	return pool.Spec.ResourceName
}

// addProducts counts a node's GPUs by product, from its GPUNode report when there is one
// (with health), else from GPU Feature Discovery labels.
func addProducts(products map[string]*servingv1alpha1.GPUProduct, n *corev1.Node, report *servingv1alpha1.GPUNode, capacity int64) {
	get := func(name string, memMiB int64) *servingv1alpha1.GPUProduct {
		p := products[name]
		if p == nil {
			p = &servingv1alpha1.GPUProduct{Product: name, MemoryMiB: memMiB}
			products[name] = p
		}
		return p
	}
	if report != nil && len(report.Status.Devices) > 0 {
		for _, d := range report.Status.Devices {
			if d.Product == "" {
				continue
			}
			p := get(d.Product, d.MemoryMiB)
			p.Count++
			if d.Healthy {
				p.Healthy++
			}
		}
		return
	}
	name := n.Labels[placement.LabelGPUProduct]
	if name == "" || capacity == 0 {
		return
	}
	var memMiB int64
	if q := placement.NodeGPUMemory(n, nil); q != nil {
		memMiB = q.Value() >> 20
	}
	p := get(name, memMiB)
	p.Count += int32(capacity)
	// Without a probe nothing says a GPU is unhealthy: the device plugin's count stands.
	p.Healthy += int32(capacity)
}

func sortedProducts(m map[string]*servingv1alpha1.GPUProduct) []servingv1alpha1.GPUProduct {
	out := make([]servingv1alpha1.GPUProduct, 0, len(m))
	for _, p := range m {
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Product < out[j].Product
	})
	if len(out) > 32 {
		out = out[:32]
	}
	return out
}
