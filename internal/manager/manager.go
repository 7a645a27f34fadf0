// Package manager assembles the HelixFlow controller manager: scheme, caches, metrics,
// health probes and leader election. Reconcilers register through Options.Setup so the
// binary in cmd/manager stays a thin flag parser.
package manager

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/scheme"
)

// DefaultNamespace is where the manager keeps its own objects when POD_NAMESPACE is unset.
const DefaultNamespace = "helixflow-system"

// LeaderElectionID names the Lease the manager replicas compete for.
const LeaderElectionID = "helixflow-manager.serving.helixflow.io"

// Leader election and Events need these; reconcilers add their own markers next to them.
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Options configures the manager. The zero value is not usable: see DefaultOptions.
type Options struct {
	// MetricsBindAddress serves Prometheus metrics; "0" disables it.
	MetricsBindAddress string
	// HealthProbeBindAddress serves /healthz and /readyz; "0" disables it.
	HealthProbeBindAddress string
	// PprofBindAddress serves Go's /debug/pprof; "" or "0" disables it (the default).
	PprofBindAddress string
	// LeaderElect makes only one replica run the reconcilers.
	LeaderElect bool
	// Namespace is the manager's own namespace (leader Lease, signing keys).
	Namespace string
	// QPS and Burst limit the manager's requests to the API server (client-side).
	QPS   float32
	Burst int
	// GracefulShutdownTimeout bounds how long runnables get to stop.
	GracefulShutdownTimeout time.Duration
	// SkipControllerNameValidation allows several managers with the same controllers in one
	// process, which only tests do (a manager restart within one test binary).
	SkipControllerNameValidation bool
	// Setup registers reconcilers and other runnables on the manager before it starts.
	Setup []func(ctrl.Manager) error
	// Logger, when set, replaces the global controller-runtime logger for this manager.
	Logger logr.Logger
}

// DefaultOptions returns the documented defaults, with the namespace from POD_NAMESPACE.
func DefaultOptions() Options {
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = DefaultNamespace
	}
	return Options{
		MetricsBindAddress:      ":8080",
		HealthProbeBindAddress:  ":8081",
		Namespace:               ns,
		QPS:                     100,
		Burst:                   200,
		GracefulShutdownTimeout: 30 * time.Second,
	}
}

// New builds a manager for the cluster cfg points at. It does not start it.
func New(cfg *rest.Config, opts Options) (ctrl.Manager, error) {
	if opts.Namespace == "" {
		return nil, errors.New("manager namespace must not be empty")
	}
	shutdown := opts.GracefulShutdownTimeout
	cfg = rest.CopyConfig(cfg)
	if opts.QPS != 0 {
		cfg.QPS, cfg.Burst = opts.QPS, opts.Burst
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                        scheme.New(),
		Metrics:                       metricsserver.Options{BindAddress: opts.MetricsBindAddress},
		HealthProbeBindAddress:        opts.HealthProbeBindAddress,
		PprofBindAddress:              opts.PprofBindAddress,
		LeaderElection:                opts.LeaderElect,
		LeaderElectionID:              LeaderElectionID,
		LeaderElectionNamespace:       opts.Namespace,
		LeaderElectionReleaseOnCancel: true,
		GracefulShutdownTimeout:       &shutdown,
		Cache:                         cacheOptions(installedOptionalKinds(cfg)),
		Controller:                    config.Controller{SkipNameValidation: ptr.To(opts.SkipControllerNameValidation)},
		Logger:                        opts.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("creating manager: %w", err)
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return nil, fmt.Errorf("adding healthz check: %w", err)
	}
	// Ready once the caches have synced, so a rollout waits for a manager that can act.
	if err := mgr.AddReadyzCheck("informers", func(req *http.Request) error {
		if !mgr.GetCache().WaitForCacheSync(req.Context()) {
			return errors.New("informer caches not synced")
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("adding readyz check: %w", err)
	}
	for _, setup := range opts.Setup {
		if err := setup(mgr); err != nil {
			return nil, err
		}
	}
	return mgr, nil
}

// cacheOptions limits the informers to what HelixFlow owns: pods, Secrets, ConfigMaps and
// the workload objects the manager creates are cached only when they carry the managed-by
// label, so the manager's memory does not grow with the rest of the cluster.
func cacheOptions(optional []client.Object) cache.Options {
	owned := cache.ByObject{Label: labels.SelectorFromSet(labels.Set{
		servingv1alpha1.LabelManagedBy: servingv1alpha1.ManagedByValue,
	})}
	opts := cache.Options{
		// Managed fields are a large share of every cached object and the manager never reads them.
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}:                   owned,
			&corev1.Secret{}:                owned,
			&corev1.ConfigMap{}:             owned,
			&corev1.Service{}:               owned,
			&corev1.ServiceAccount{}:        owned,
			&appsv1.Deployment{}:            owned,
			&appsv1.DaemonSet{}:             owned,
			&policyv1.PodDisruptionBudget{}: owned,
			&rbacv1.Role{}:                  owned,
			&networkingv1.Ingress{}:         owned,
			&rbacv1.RoleBinding{}:           owned,
		},
	}
	for _, obj := range optional {
		opts.ByObject[obj] = owned
	}
	return opts
}

// installedOptionalKinds are the kinds of CRDs HelixFlow writes but a cluster may lack
// (cert-manager, Gateway API) that are installed now. Only those can be given a label-filtered
// cache at start (the cache must map them); one installed later is still watched, through a
// cache of all its objects, until the manager restarts.
func installedOptionalKinds(cfg *rest.Config) []client.Object {
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil
	}
	mapper, err := apiutil.NewDynamicRESTMapper(cfg, httpClient)
	if err != nil {
		return nil
	}
	var found []client.Object
	for _, obj := range []client.Object{&certmanagerv1.Certificate{}, &gatewayv1.HTTPRoute{}, &gatewayv1.GRPCRoute{}} {
		gvk, err := apiutil.GVKForObject(obj, scheme.New())
		if err != nil {
			continue
		}
		if _, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err == nil {
			found = append(found, obj)
		}
	}
	return found
}

// Run builds the manager and blocks until ctx is done or the manager fails.
func Run(ctx context.Context, cfg *rest.Config, opts Options) error {
	mgr, err := New(cfg, opts)
	if err != nil {
		return err
	}
	ctrl.Log.WithName("setup").Info("starting manager",
		"namespace", opts.Namespace, "leaderElect", opts.LeaderElect,
		"metrics", opts.MetricsBindAddress, "healthProbe", opts.HealthProbeBindAddress)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("running manager: %w", err)
	}
	return nil
}
