package controllers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/signing"
	"github.com/helixflow/helixflow/internal/tokenservice"
	"github.com/helixflow/helixflow/internal/usage"
)

// indexModelPool indexes InferenceModels by spec.gpu.pool.
const indexModelPool = "spec.gpu.pool"

// Setup registers the reconcilers with the manager.
func Setup(mgr ctrl.Manager, cfg Config) error {
	if cfg.Namespace == "" {
		return errors.New("the manager's namespace (Config.Namespace) must not be empty: probe DaemonSets live there")
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &servingv1alpha1.InferenceModel{}, indexModelPool,
		func(o client.Object) []string {
			if p := o.(*servingv1alpha1.InferenceModel).Spec.GPU.Pool; p != "" {
				return []string{p}
			}
			return nil
		}); err != nil {
		return fmt.Errorf("indexing InferenceModels by pool: %w", err)
	}
	models := &InferenceModelReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Scheme: mgr.GetScheme(), Recorder: mgr.GetEventRecorder("inferencemodel-controller"), Config: cfg}
	if err := models.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up InferenceModel controller: %w", err)
	}
	pools := &GPUPoolReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Scheme: mgr.GetScheme(), Recorder: mgr.GetEventRecorder("gpupool-controller"), Config: cfg}
	if err := pools.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up GPUPool controller: %w", err)
	}
	return setupAuth(mgr, cfg)
}

// setupAuth registers the ApiKey controller, the signing-key rotation and loading, the JWKS
// publisher, the token service and the usage aggregator.
func setupAuth(mgr ctrl.Manager, cfg Config) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &servingv1alpha1.ApiKey{}, indexApiKeyHash, apiKeyHashes); err != nil {
		return fmt.Errorf("indexing ApiKeys by key hash: %w", err)
	}
	keys := &ApiKeyReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Scheme: mgr.GetScheme(),
		Recorder: mgr.GetEventRecorder("apikey-controller"), RotationGrace: cfg.KeyRotationGrace, Now: time.Now}
	if err := keys.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up ApiKey controller: %w", err)
	}
	rotator := &SigningKeyReconciler{Client: mgr.GetClient(), Namespace: cfg.Namespace, Algorithm: cfg.JWTAlgorithm,
		RotationPeriod: cfg.JWTRotationPeriod, MaxTokenTTL: cfg.MaxTokenTTL, Now: time.Now}
	if err := rotator.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up signing-key controller: %w", err)
	}
	store := &signing.Store{}
	loader := &SigningKeyLoader{Client: mgr.GetClient(), Namespace: cfg.Namespace, Store: store}
	if err := loader.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up signing-key loader: %w", err)
	}
	jwks := &JWKSReconciler{Client: mgr.GetClient(), Namespace: cfg.Namespace, Issuer: cfg.JWTIssuer}
	if err := jwks.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up JWKS publisher: %w", err)
	}
	tokens := &tokenservice.Server{
		Lookup: cachedKeyLookup{reader: mgr.GetClient()}, Keys: store, Issuer: cfg.JWTIssuer,
		DefaultTTL: cfg.TokenTTL, MaxTTL: cfg.MaxTokenTTL, Log: mgr.GetLogger().WithName("tokenservice"),
		Addr: cfg.TokenServiceBindAddress,
	}
	if err := mgr.Add(tokens); err != nil {
		return fmt.Errorf("adding token service: %w", err)
	}
	if cfg.UsageBindAddress != "0" {
		agg := usage.NewAggregator(mgr.GetClient(), cfg.UsageBindAddress, usage.WithAPIReader(mgr.GetAPIReader()),
			usage.WithReporterAuthentication(mgr.GetClient(), cfg.UsageAllowUnauthenticated),
			// The certificate is for the host the runtimes are told to dial.
			usage.WithServingTLS(usage.SecretCA{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Namespace: cfg.Namespace},
				[]string{endpointHost(cfg.UsageEndpoint)}, cfg.UsageAllowPlaintext),
			usage.WithAggregatorLogger(mgr.GetLogger().WithName("usage")))
		if err := mgr.Add(agg); err != nil {
			return fmt.Errorf("adding usage aggregator: %w", err)
		}
	}
	return nil
}

// SetupWithManager watches the model's children and everything placement reads.
func (r *InferenceModelReconciler) SetupWithManager(mgr ctrl.Manager) error {
	c := mgr.GetClient()
	toModelsOfPools := func(ctx context.Context, poolNames []string) []ctrl.Request {
		var reqs []ctrl.Request
		for _, p := range poolNames {
			reqs = append(reqs, modelsInPool(ctx, c, p)...)
		}
		return reqs
	}
	// The children's create events are echoes of our own applies; the model's own events
	// already cover start-up. Updates (someone edits a child, Deployment status moves) and
	// deletes still bring the model back.
	notCreate := builder.WithPredicates(predicate.Funcs{CreateFunc: func(event.CreateEvent) bool { return false }})
	c2, err := ctrl.NewControllerManagedBy(mgr).
		// Status-only updates are our own writes coming back; only spec changes need work.
		For(&servingv1alpha1.InferenceModel{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Owns(&appsv1.Deployment{}, notCreate).
		Owns(&corev1.Service{}, notCreate).
		Owns(&corev1.ServiceAccount{}, notCreate).
		Owns(&rbacv1.Role{}, notCreate).
		Owns(&rbacv1.RoleBinding{}, notCreate).
		Owns(&policyv1.PodDisruptionBudget{}, notCreate).
		// Ingress status (the controller's address) is what Exposed reports.
		Owns(&networkingv1.Ingress{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(r.Config.MaxConcurrentReconciles, 1)}).
		Watches(&servingv1alpha1.GPUPool{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []ctrl.Request {
			return modelsInPool(ctx, c, o.GetName())
		}), builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []ctrl.Request {
			return toModelsOfPools(ctx, poolsOfNode(ctx, c, o.GetLabels()))
		}), builder.WithPredicates(nodePlacementChanged())).
		Watches(&servingv1alpha1.GPUNode{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []ctrl.Request {
			return toModelsOfPools(ctx, poolsOfGPUNode(ctx, c, o))
		}), builder.WithPredicates(gpuNodeDevicesChanged())).
		// A pod bound or gone changes what fits for every model in its pool.
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []ctrl.Request {
			if p := o.GetLabels()[servingv1alpha1.LabelGPUPool]; p != "" {
				return modelsInPool(ctx, c, p)
			}
			return nil
		}), builder.WithPredicates(podBindingChanged())).
		// The model's own pods: their fetch init container is what WeightsReady reports.
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []ctrl.Request {
			var reqs []ctrl.Request
			for _, nn := range podModel(o) {
				reqs = append(reqs, ctrl.Request{NamespacedName: nn})
			}
			return reqs
		}), builder.WithPredicates(predicate.Funcs{
			CreateFunc: func(event.CreateEvent) bool { return false },
			UpdateFunc: func(e event.UpdateEvent) bool {
				return fetchStatusChanged(e.ObjectOld.(*corev1.Pod), e.ObjectNew.(*corev1.Pod))
			},
		})).
		Named("inferencemodel").
		Build(r)
	if err != nil {
		return err
	}
	// Certificates and routes are watched once their CRDs are found, which may be after start.
	r.optional = &optionalKinds{
		ctrl: c2, cache: mgr.GetCache(), mapper: mgr.GetRESTMapper(), watched: map[schema.GroupKind]bool{},
		handler: handler.EnqueueRequestForOwner(mgr.GetScheme(), mgr.GetRESTMapper(), &servingv1alpha1.InferenceModel{}, handler.OnlyControllerOwner()),
	}
	// Kinds installed already are watched from the start: the controller then waits for their
	// caches before its first reconcile, instead of every early reconcile blocking on the
	// first read of each kind while its informer fills (seconds, with hundreds of models).
	// Discovery failing here fails the start, like any other setup error.
	return r.optional.watchInstalled()
}

// SetupWithManager watches the pool's nodes, their GPUNode reports, HelixFlow pods and the
// pool's probe DaemonSet.
func (r *GPUPoolReconciler) SetupWithManager(mgr ctrl.Manager) error {
	c := mgr.GetClient()
	return ctrl.NewControllerManagedBy(mgr).
		For(&servingv1alpha1.GPUPool{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// Someone editing or deleting the DaemonSet brings the pool back; its creation (our own
		// apply) and its status (pods coming and going on every node) do not.
		Owns(&appsv1.DaemonSet{}, builder.WithPredicates(predicate.Funcs{
			CreateFunc: func(event.CreateEvent) bool { return false },
			UpdateFunc: func(e event.UpdateEvent) bool {
				return e.ObjectOld.GetGeneration() != e.ObjectNew.GetGeneration() ||
					!equality.Semantic.DeepEqual(e.ObjectOld.GetLabels(), e.ObjectNew.GetLabels())
			},
		})).
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []ctrl.Request {
			return poolRequests(poolsOfNode(ctx, c, o.GetLabels()))
		}), builder.WithPredicates(nodePlacementChanged())).
		Watches(&servingv1alpha1.GPUNode{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []ctrl.Request {
			return poolRequests(poolsOfGPUNode(ctx, c, o))
		})).
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []ctrl.Request {
			if p := o.GetLabels()[servingv1alpha1.LabelGPUPool]; p != "" {
				return poolRequests([]string{p})
			}
			return nil
		}), builder.WithPredicates(podBindingChanged())).
		Named("gpupool").
		Complete(r)
}

func poolRequests(names []string) []ctrl.Request {
	reqs := make([]ctrl.Request, 0, len(names))
	for _, n := range names {
		reqs = append(reqs, ctrl.Request{NamespacedName: types.NamespacedName{Name: n}})
	}
	return reqs
}

// poolsOfNode returns the pools whose nodeSelector matches the node's labels.
func poolsOfNode(ctx context.Context, c client.Reader, nodeLabels map[string]string) []string {
	var pools servingv1alpha1.GPUPoolList
	if err := c.List(ctx, &pools, client.UnsafeDisableDeepCopy); err != nil {
		log.FromContext(ctx).Error(err, "listing GPUPools")
		return nil
	}
	var names []string
	for i := range pools.Items {
		sel, err := poolSelector(&pools.Items[i])
		if err == nil && sel.Matches(labels.Set(nodeLabels)) {
			names = append(names, pools.Items[i].Name)
		}
	}
	return names
}

// poolsOfGPUNode returns the pools of the node a GPUNode report describes (same name).
func poolsOfGPUNode(ctx context.Context, c client.Reader, report client.Object) []string {
	node := &corev1.Node{}
	if err := c.Get(ctx, client.ObjectKey{Name: report.GetName()}, node); err != nil {
		return nil
	}
	return poolsOfNode(ctx, c, node.Labels)
}

// nodePlacementChanged passes node events that can change placement: labels, GPU capacity,
// readiness, cordoning. Heartbeat-only status updates are dropped.
func nodePlacementChanged() predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		o, n := e.ObjectOld.(*corev1.Node), e.ObjectNew.(*corev1.Node)
		return !equality.Semantic.DeepEqual(o.Labels, n.Labels) ||
			!equality.Semantic.DeepEqual(o.Status.Capacity, n.Status.Capacity) ||
			!equality.Semantic.DeepEqual(o.Status.Allocatable, n.Status.Allocatable) ||
			o.Spec.Unschedulable != n.Spec.Unschedulable ||
			nodeReadyStatus(o) != nodeReadyStatus(n)
	}}
}

func nodeReadyStatus(n *corev1.Node) corev1.ConditionStatus {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status
		}
	}
	return corev1.ConditionUnknown
}

// gpuNodeDevicesChanged passes GPUNode events that change placement (device memory and
// count), not the heartbeat.
func gpuNodeDevicesChanged() predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		o, n := e.ObjectOld.(*servingv1alpha1.GPUNode), e.ObjectNew.(*servingv1alpha1.GPUNode)
		return !equality.Semantic.DeepEqual(o.Status.Devices, n.Status.Devices) || o.Status.GPUCount != n.Status.GPUCount
	}}
}

// podBindingChanged passes pod creation, deletion, binding to a node and termination:
// the events that change how many GPUs are allocated.
func podBindingChanged() predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		o, n := e.ObjectOld.(*corev1.Pod), e.ObjectNew.(*corev1.Pod)
		terminal := func(p *corev1.Pod) bool {
			return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
		}
		return o.Spec.NodeName != n.Spec.NodeName || terminal(o) != terminal(n)
	}}
}

// endpointHost is the host of the address runtimes are given: host:port, or a gRPC target
// such as dns:///host:port or dns://resolver/host:port (the address itself when it has no
// port).
func endpointHost(addr string) string {
	if _, rest, ok := strings.Cut(addr, "://"); ok {
		addr = rest[strings.LastIndex(rest, "/")+1:]
	}
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}
