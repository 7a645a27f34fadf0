package controllers

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/placement"
)

// +kubebuilder:rbac:groups=serving.helixflow.io,resources=inferencemodels,verbs=get;list;watch
// +kubebuilder:rbac:groups=serving.helixflow.io,resources=inferencemodels/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=serving.helixflow.io,resources=gpupools;gpunodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=services;serviceaccounts,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=resource.k8s.io,resources=resourceclaimtemplates,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=nodes;namespaces;pods,verbs=get;list;watch

// InferenceModelReconciler turns an InferenceModel into a ServiceAccount, Service,
// Deployment of runtime pods (and a PodDisruptionBudget, and for DRA pools a
// ResourceClaimTemplate), placed only where the model fits.
type InferenceModelReconciler struct {
	Client client.Client
	// APIReader reads the API server directly, past the cache (the manager's APIReader).
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder
	Config    Config
	// optional watches cert-manager and Gateway API kinds once their CRDs are installed.
	optional *optionalKinds
}

func (r *InferenceModelReconciler) writer() ownedWriter {
	return newOwnedWriter(r.Client, r.APIReader, r.Scheme)
}

// placementVerdict is the Scheduled condition plus the numbers behind it.
type placementVerdict struct {
	pool      *servingv1alpha1.GPUPool
	fits      bool
	reason    string
	message   string
	placement *servingv1alpha1.Placement
}

func (r *InferenceModelReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	model := &servingv1alpha1.InferenceModel{}
	if err := r.Client.Get(ctx, req.NamespacedName, model); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !model.DeletionTimestamp.IsZero() {
		// Children carry controller references; the garbage collector removes them.
		return ctrl.Result{}, nil
	}
	verdict, err := r.place(ctx, model)
	if err != nil {
		return ctrl.Result{}, err
	}
	desired := modelDesired{model: model, pool: verdict.pool, cfg: r.Config}
	if verdict.fits {
		desired.replicas = ptr.Deref(model.Spec.Replicas, 1)
	} else if desired.keep, err = r.ownDeployment(ctx, model); err != nil {
		return ctrl.Result{}, err
	}
	deploy, applyErr := r.applyChildren(ctx, desired)
	var ex exposure
	if applyErr == nil {
		ex, applyErr = r.reconcileExposure(ctx, model)
	}
	status := computeModelStatus(model, verdict, deploy, applyErr, r.Config.ClusterDomain)
	var pods []corev1.Pod
	if _, _, onPVC := pvcSource(model.Spec.Model.URI); !onPVC {
		if pods, err = modelPods(ctx, r.Client, model); err != nil {
			return ctrl.Result{}, err
		}
	}
	setWeightsStatus(&status, weightsCondition(model, pods))
	setExposureStatus(&status, model, ex)
	if err := r.writeStatus(ctx, model, status); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: ex.requeue}, applyErr
}

// setExposureStatus adds what exposure found to a computed status: the Exposed and TLSReady
// conditions (removed without an endpoint), the public URL, and Ready held back until the
// model is reachable where spec.endpoint says.
func setExposureStatus(st *servingv1alpha1.InferenceModelStatus, m *servingv1alpha1.InferenceModel, ex exposure) {
	if ex.exposed == nil {
		meta.RemoveStatusCondition(&st.Conditions, servingv1alpha1.InferenceModelConditionExposed)
		meta.RemoveStatusCondition(&st.Conditions, servingv1alpha1.InferenceModelConditionTLSReady)
	} else {
		meta.SetStatusCondition(&st.Conditions, *ex.exposed)
		meta.SetStatusCondition(&st.Conditions, *ex.tls)
	}
	if ex.url != "" {
		st.URL = ex.url
	}
	ready := meta.FindStatusCondition(st.Conditions, servingv1alpha1.ConditionReady)
	if ok, blocking := ex.ready(); !ok && ready != nil && ready.Status == metav1.ConditionTrue {
		setCondition(&st.Conditions, servingv1alpha1.ConditionReady, metav1.ConditionFalse, blocking.Reason, blocking.Type+": "+blocking.Message, m.Generation)
	}
}

// place decides where the model goes. Errors are only for failed reads; a model that does
// not fit is a verdict, not an error.
func (r *InferenceModelReconciler) place(ctx context.Context, model *servingv1alpha1.InferenceModel) (placementVerdict, error) {
	gpu := model.Spec.GPU
	if gpu.Count == 0 {
		return placementVerdict{fits: true, reason: servingv1alpha1.InferenceModelReasonNoGPURequested, message: "runs on CPU: spec.gpu.count is 0"}, nil
	}
	v := placementVerdict{placement: &servingv1alpha1.Placement{Pool: gpu.Pool, GPUsPerReplica: gpu.Count}}
	mem, estimated := placement.MemoryPerGPU(model)
	v.placement.GPUMemoryPerGPU = mem

	pool := &servingv1alpha1.GPUPool{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: gpu.Pool}, pool); err != nil {
		if !apierrors.IsNotFound(err) {
			return v, fmt.Errorf("getting GPUPool %s: %w", gpu.Pool, err)
		}
		v.reason, v.message = servingv1alpha1.InferenceModelReasonPoolNotFound, fmt.Sprintf("GPUPool %s not found", gpu.Pool)
		return v, nil
	}
	v.pool = pool
	allowed, err := r.namespaceAllowed(ctx, pool, model.Namespace)
	if err != nil {
		return v, err
	}
	if !allowed {
		v.reason = servingv1alpha1.InferenceModelReasonNamespaceNotAllowed
		v.message = fmt.Sprintf("namespace %s is not selected by spec.namespaceSelector of GPUPool %s", model.Namespace, pool.Name)
		return v, nil
	}
	inv, err := loadPoolInventory(ctx, r.Client, pool)
	if err != nil {
		return v, err
	}
	res := placement.Place(pool.Name, inv.placementNodes(client.ObjectKeyFromObject(model)), placement.Request{
		GPUs: int64(gpu.Count), MemoryPerGPU: mem, MemoryEstimated: estimated, Replicas: ptr.Deref(model.Spec.Replicas, 1),
	})
	v.fits, v.reason, v.message = res.Fits, res.Reason, res.Message
	v.placement.EligibleNodes, v.placement.FittingReplicas = res.EligibleNodes, res.FittingReplicas
	return v, nil
}

func (r *InferenceModelReconciler) namespaceAllowed(ctx context.Context, pool *servingv1alpha1.GPUPool, namespace string) (bool, error) {
	if pool.Spec.NamespaceSelector == nil {
		return true, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(pool.Spec.NamespaceSelector)
	if err != nil {
		return false, fmt.Errorf("parsing spec.namespaceSelector of GPUPool %s: %w", pool.Name, err)
	}
	ns := &corev1.Namespace{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: namespace}, ns); err != nil {
		return false, fmt.Errorf("getting namespace %s: %w", namespace, err)
	}
	return sel.Matches(labels.Set(ns.Labels)), nil
}

// ownDeployment returns the model's Deployment from the cache, or nil when there is none.
func (r *InferenceModelReconciler) ownDeployment(ctx context.Context, model *servingv1alpha1.InferenceModel) (*appsv1.Deployment, error) {
	deploy := &appsv1.Deployment{}
	err := r.Client.Get(ctx, client.ObjectKeyFromObject(model), deploy)
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("getting Deployment: %w", err)
	case !metav1.IsControlledBy(deploy, model):
		return nil, nil
	}
	return deploy, nil
}

// applyChildren applies every child and returns the Deployment as the server has it.
// When d.keep is set (the model no longer fits) the running Deployment and its PDB are
// left exactly as they are: a spec edit that cannot be placed must not start a rollout of
// pods that can never schedule, and a pool that is deleted or whose nodes all go NotReady
// for a moment must not tear down replicas that are serving.
func (r *InferenceModelReconciler) applyChildren(ctx context.Context, d modelDesired) (*appsv1.Deployment, error) {
	owner := d.model
	objs, err := DesiredObjects(owner, d.pool, d.replicas, d.cfg)
	if err != nil {
		return nil, err
	}
	deploy := d.keep
	for _, obj := range objs {
		if d.keep != nil {
			switch obj.(type) {
			case *appsv1.Deployment, *policyv1.PodDisruptionBudget:
				continue
			}
		}
		if err := r.writer().applyOwned(ctx, owner, obj); err != nil {
			return deploy, err
		}
		if dep, ok := obj.(*appsv1.Deployment); ok {
			deploy = dep
		}
	}
	if d.replicas > 1 || d.keep != nil {
		return deploy, nil
	}
	// One replica or none: a PodDisruptionBudget would block node drains; remove ours.
	pdb := &policyv1.PodDisruptionBudget{}
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: owner.Namespace, Name: owner.Name}, pdb); err == nil && metav1.IsControlledBy(pdb, owner) {
		if err := r.Client.Delete(ctx, pdb); client.IgnoreNotFound(err) != nil {
			return deploy, fmt.Errorf("deleting PodDisruptionBudget: %w", err)
		}
	}
	return deploy, nil
}

// computeModelStatus is pure: the new status from the verdict and the Deployment's state.
func computeModelStatus(model *servingv1alpha1.InferenceModel, v placementVerdict, deploy *appsv1.Deployment, applyErr error, clusterDomain string) servingv1alpha1.InferenceModelStatus {
	st := *model.Status.DeepCopy()
	gen := model.Generation
	st.ObservedGeneration = gen
	st.ModelName = model.ServedModelName()
	st.Selector = labels.SelectorFromSet(selectorLabels(model)).String()
	st.Placement = v.placement
	st.URL = fmt.Sprintf("http://%s.%s.svc.%s:%d/v1", model.Name, model.Namespace, clusterDomain, servingv1alpha1.RuntimeHTTPPort)
	want := ptr.Deref(model.Spec.Replicas, 1)
	var ready int32
	if deploy != nil {
		st.Replicas, ready = deploy.Status.Replicas, deploy.Status.ReadyReplicas
	}
	st.ReadyReplicas = ready

	scheduled := metav1.ConditionFalse
	if v.fits {
		scheduled = metav1.ConditionTrue
	}
	setCondition(&st.Conditions, servingv1alpha1.InferenceModelConditionScheduled, scheduled, v.reason, v.message, gen)

	switch {
	case ready > 0:
		setCondition(&st.Conditions, servingv1alpha1.InferenceModelConditionAvailable, metav1.ConditionTrue,
			servingv1alpha1.InferenceModelReasonReplicasReady, fmt.Sprintf("%d of %d replicas ready", ready, want), gen)
	case !v.fits:
		setCondition(&st.Conditions, servingv1alpha1.InferenceModelConditionAvailable, metav1.ConditionFalse,
			servingv1alpha1.InferenceModelReasonNotScheduled, "no replica can be placed: "+v.message, gen)
	case want == 0:
		setCondition(&st.Conditions, servingv1alpha1.InferenceModelConditionAvailable, metav1.ConditionFalse,
			servingv1alpha1.InferenceModelReasonScaledToZero, "spec.replicas is 0", gen)
	default:
		setCondition(&st.Conditions, servingv1alpha1.InferenceModelConditionAvailable, metav1.ConditionFalse,
			servingv1alpha1.InferenceModelReasonReplicasNotReady, fmt.Sprintf("0 of %d replicas ready", want), gen)
	}

	rolledOut := deploy != nil && deploy.Status.ObservedGeneration >= deploy.Generation &&
		deploy.Status.UpdatedReplicas == want && ready == want && deploy.Status.Replicas == want
	switch {
	case applyErr != nil:
		setCondition(&st.Conditions, servingv1alpha1.ConditionReady, metav1.ConditionFalse, servingv1alpha1.ReasonReconcileError, applyErr.Error(), gen)
	case !v.fits:
		setCondition(&st.Conditions, servingv1alpha1.ConditionReady, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonNotScheduled, v.message, gen)
	case want == 0 && rolledOut:
		setCondition(&st.Conditions, servingv1alpha1.ConditionReady, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonScaledToZero, "spec.replicas is 0", gen)
	case rolledOut:
		setCondition(&st.Conditions, servingv1alpha1.ConditionReady, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonReplicasReady, fmt.Sprintf("%d of %d replicas ready", ready, want), gen)
	default:
		setCondition(&st.Conditions, servingv1alpha1.ConditionReady, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonReplicasNotReady, fmt.Sprintf("%d of %d replicas ready", ready, want), gen)
	}
	return st
}

func setCondition(conds *[]metav1.Condition, typ string, status metav1.ConditionStatus, reason, message string, gen int64) {
	meta.SetStatusCondition(conds, metav1.Condition{Type: typ, Status: status, Reason: reason, Message: truncate(message, 32768), ObservedGeneration: gen})
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// writeStatus updates the status only when it changed, and records Events on transitions.
func (r *InferenceModelReconciler) writeStatus(ctx context.Context, model *servingv1alpha1.InferenceModel, st servingv1alpha1.InferenceModelStatus) error {
	if equality.Semantic.DeepEqual(model.Status, st) {
		return nil
	}
	old := model.Status.DeepCopy()
	model.Status = st
	if err := r.Client.Status().Update(ctx, model); err != nil {
		return fmt.Errorf("updating status: %w", err)
	}
	r.recordTransitions(model, old.Conditions, st.Conditions)
	log.FromContext(ctx).V(1).Info("status updated", "ready", meta.IsStatusConditionTrue(st.Conditions, servingv1alpha1.ConditionReady))
	return nil
}

// recordTransitions emits an Event when a condition changes, except on the normal path of
// a new model: being placed at once and not yet Ready are not news (and at thousands of
// models an Event each is real load on the API server). A model that cannot be placed, or
// whose weights cannot be fetched, gets a Warning at once; Ready becoming True, and leaving
// True, are always recorded.
func (r *InferenceModelReconciler) recordTransitions(model *servingv1alpha1.InferenceModel, before, after []metav1.Condition) {
	for _, typ := range []string{servingv1alpha1.InferenceModelConditionScheduled, servingv1alpha1.InferenceModelConditionWeightsReady, servingv1alpha1.ConditionReady} {
		was, now := meta.FindStatusCondition(before, typ), meta.FindStatusCondition(after, typ)
		if now == nil || (was != nil && was.Status == now.Status && was.Reason == now.Reason) {
			continue
		}
		// Of the weights, only a failure is news: fetching and fetched happen to every model.
		if typ == servingv1alpha1.InferenceModelConditionWeightsReady && now.Reason != servingv1alpha1.InferenceModelReasonWeightsFailed {
			continue
		}
		if was == nil && now.Status == metav1.ConditionTrue && typ == servingv1alpha1.InferenceModelConditionScheduled {
			continue
		}
		if typ == servingv1alpha1.ConditionReady && now.Status != metav1.ConditionTrue && (was == nil || was.Status != metav1.ConditionTrue) {
			continue
		}
		emitConditionEvent(r.Recorder, model, now)
	}
}

// emitConditionEvent records a condition as an Event on obj: Normal when it is True,
// Warning otherwise, with the condition's reason and message and its type as the action.
func emitConditionEvent(rec events.EventRecorder, obj runtime.Object, c *metav1.Condition) {
	eventType := corev1.EventTypeNormal
	if c.Status != metav1.ConditionTrue {
		eventType = corev1.EventTypeWarning
	}
	rec.Eventf(obj, nil, eventType, c.Reason, c.Type, "%s", c.Message)
}

// modelsInPool lists the InferenceModels that name pool, through the field index.
func modelsInPool(ctx context.Context, c client.Reader, pool string) []ctrl.Request {
	var list servingv1alpha1.InferenceModelList
	if err := c.List(ctx, &list, client.MatchingFields{indexModelPool: pool}, client.UnsafeDisableDeepCopy); err != nil {
		log.FromContext(ctx).Error(err, "listing InferenceModels of pool", "pool", pool)
		return nil
	}
	reqs := make([]ctrl.Request, 0, len(list.Items))
	for i := range list.Items {
		reqs = append(reqs, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: list.Items[i].Namespace, Name: list.Items[i].Name}})
	}
	return reqs
}
