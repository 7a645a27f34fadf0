package controllers

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/placement"
)

// +kubebuilder:rbac:groups=serving.helixflow.io,resources=gpupools,verbs=get;list;watch
// +kubebuilder:rbac:groups=serving.helixflow.io,resources=gpupools/status,verbs=get;update;patch

// The probe: its DaemonSets and ServiceAccount in the manager's namespace, and the
// cluster-wide RBAC and admission policy it runs under. Existing ClusterRoles, bindings and
// admission policies can be changed only when they are the probe's own; creating needs no name.
// +kubebuilder:rbac:groups=apps,resources=daemonsets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=clusterroles;clusterrolebindings,verbs=create
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=clusterroles;clusterrolebindings,verbs=get;update;patch,resourceNames=helixflow-probe
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=validatingadmissionpolicies;validatingadmissionpolicybindings,verbs=create
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=validatingadmissionpolicies;validatingadmissionpolicybindings,verbs=get;update;patch,resourceNames=helixflow-probe-own-gpunode
// RBAC lets a ClusterRole grant only what its creator holds (or escalate/bind, which would
// let the manager grant anything): the manager holds the probe's GPUNode verbs for that
// reason alone and never writes GPUNodes itself.
// +kubebuilder:rbac:groups=serving.helixflow.io,resources=gpunodes;gpunodes/status,verbs=get;list;watch;create;update;patch

// GPUPoolReconciler keeps a GPUPool's status in line with its nodes, their GPUNode reports
// and the GPUs HelixFlow pods hold there, and runs the pool's GPU probe DaemonSet.
type GPUPoolReconciler struct {
	Client client.Client
	// APIReader reads the API server directly, past the cache (the manager's APIReader).
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder
	// Config gives the probe's image, runtime class and namespace (the manager's).
	Config Config
	// Now is the clock used to judge report freshness; time.Now when nil.
	Now func() time.Time

	// applied maps a pool's name to the appliedProbe last applied for it.
	applied sync.Map
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
			emitConditionEvent(r.Recorder, pool, after)
		}
	}
	// After the status: the inventory does not depend on the probe objects, and a failure
	// here (the manager's namespace going away) must not freeze what the pool reports.
	if err := r.reconcileProbe(ctx, pool); err != nil {
		return ctrl.Result{}, err
	}
	// Report freshness changes with time alone: look again when the oldest report goes stale.
	return ctrl.Result{RequeueAfter: staleAfter}, nil
}

// reportTTL is how old a GPUNode report may be before the pool counts it as missing:
// three probe intervals, so one late heartbeat does not flap the condition.
func reportTTL(pool *servingv1alpha1.GPUPool) time.Duration {
	return 3 * probeInterval(pool)
}

// reconcileProbe runs the pool's probe DaemonSet, or removes it when spec.probe.enabled is
// false. The cluster-wide objects the probe runs under (ServiceAccount, RBAC, admission
// policy) are shared by every pool and owned by none, so no one pool's deletion takes them
// from the others; they are applied with each pool's DaemonSet, and outlive the last pool.
// Only pods in the manager's namespace can run as the probe.
func (r *GPUPoolReconciler) reconcileProbe(ctx context.Context, pool *servingv1alpha1.GPUPool) error {
	if !pool.Spec.Probe.ProbeEnabled() {
		r.applied.Delete(pool.Name)
		return r.deleteProbe(ctx, pool)
	}
	shared, ds := probeSharedObjects(r.Config.Namespace), probeDaemonSet(pool, r.Config)
	// Every GPUNode heartbeat reconciles the pool; re-applying six unchanged objects each
	// time would cost a thousand-node cluster ~20 requests/s for nothing. Apply again only
	// when what this process last applied for the pool differs, or the DaemonSet is gone or
	// was edited since (its generation moved). Hand edits of the shared objects are repaired
	// on the pool's next spec change or manager restart.
	hash, err := desiredHash(append(shared, ds)...)
	if err != nil {
		return err
	}
	if prev, ok := r.applied.Load(pool.Name); ok && prev == (appliedProbe{hash, r.daemonSetGeneration(ctx, pool)}) {
		return nil
	}
	for _, obj := range shared {
		if err := applyShared(ctx, r.Client, obj); err != nil {
			return err
		}
	}
	if err := newOwnedWriter(r.Client, r.APIReader, r.Scheme).applyOwned(ctx, pool, ds); err != nil {
		return fmt.Errorf("applying probe: %w", err)
	}
	r.applied.Store(pool.Name, appliedProbe{hash, ds.Generation})
	return nil
}

// appliedProbe is what the reconciler last applied for a pool: the desired objects' hash and
// the DaemonSet generation the API server answered with.
type appliedProbe struct {
	hash       string
	generation int64
}

// daemonSetGeneration is the cached probe DaemonSet's generation; 0 when it is missing or
// being deleted.
func (r *GPUPoolReconciler) daemonSetGeneration(ctx context.Context, pool *servingv1alpha1.GPUPool) int64 {
	ds := &appsv1.DaemonSet{}
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: r.Config.Namespace, Name: ProbeDaemonSetName(pool)}, ds); err != nil || !ds.DeletionTimestamp.IsZero() {
		return 0
	}
	return ds.Generation
}

// deleteProbe deletes the pool's probe DaemonSet if the cache holds one the pool controls.
func (r *GPUPoolReconciler) deleteProbe(ctx context.Context, pool *servingv1alpha1.GPUPool) error {
	ds := &appsv1.DaemonSet{}
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: r.Config.Namespace, Name: ProbeDaemonSetName(pool)}, ds); err != nil {
		return client.IgnoreNotFound(err)
	}
	if !metav1.IsControlledBy(ds, pool) {
		return nil
	}
	if err := r.Client.Delete(ctx, ds, client.Preconditions{UID: &ds.UID}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting probe DaemonSet: %w", err)
	}
	return nil
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
