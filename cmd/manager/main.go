// Command manager is the HelixFlow controller manager. It parses flags and hands over to
// internal/manager; all behaviour lives there.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/controllers"
	"github.com/helixflow/helixflow/internal/manager"
	"github.com/helixflow/helixflow/internal/signing"
	"github.com/helixflow/helixflow/internal/usage"
)

func main() {
	opts := manager.DefaultOptions()
	flag.StringVar(&opts.MetricsBindAddress, "metrics-bind-address", opts.MetricsBindAddress,
		"Address the Prometheus metrics endpoint binds to; 0 disables it.")
	flag.StringVar(&opts.HealthProbeBindAddress, "health-probe-bind-address", opts.HealthProbeBindAddress,
		"Address the /healthz and /readyz endpoints bind to; 0 disables them.")
	flag.StringVar(&opts.PprofBindAddress, "pprof-bind-address", "0",
		"Address Go's /debug/pprof profiles are served on, for diagnosing the manager; 0 disables it.")
	flag.BoolVar(&opts.LeaderElect, "leader-elect", false,
		"Elect a leader among manager replicas so only one reconciles at a time.")
	flag.StringVar(&opts.Namespace, "namespace", opts.Namespace,
		"The manager's own namespace (default from POD_NAMESPACE, else "+manager.DefaultNamespace+").")
	var qps float64
	flag.Float64Var(&qps, "kube-api-qps", float64(opts.QPS), "Requests per second the manager may send to the API server.")
	flag.IntVar(&opts.Burst, "kube-api-burst", opts.Burst, "Burst of requests the manager may send to the API server.")
	cfg := controllers.DefaultConfig()
	flag.StringVar(&cfg.RuntimeImage, "runtime-image", cfg.RuntimeImage,
		"Image of the runtime binary (runtime serve and runtime fetch) in model pods.")
	flag.Func("engine-image", "Default image of an engine type, as TYPE=IMAGE (repeatable), e.g. VLLM=vllm/vllm-openai:v0.11.0.",
		func(v string) error {
			typ, img, ok := strings.Cut(v, "=")
			if !ok || img == "" {
				return fmt.Errorf("want TYPE=IMAGE, got %q", v)
			}
			if _, known := cfg.EngineImages[servingv1alpha1.EngineType(typ)]; !known {
				return fmt.Errorf("unknown engine type %q", typ)
			}
			cfg.EngineImages[servingv1alpha1.EngineType(typ)] = img
			return nil
		})
	flag.StringVar(&cfg.UsageEndpoint, "usage-endpoint", cfg.UsageEndpoint,
		"Address of the manager's usage aggregator that runtimes report to.")
	flag.StringVar(&cfg.ClusterDomain, "cluster-domain", cfg.ClusterDomain, "The cluster's DNS domain, for in-cluster URLs.")
	flag.StringVar(&cfg.ProbeRuntimeClassName, "probe-runtime-class", cfg.ProbeRuntimeClassName,
		"RuntimeClass of the GPU probe pods (for example nvidia), when the cluster's default runtime does not expose NVML.")
	flag.StringVar(&cfg.WeightsCacheClaim, "weights-cache-claim", cfg.WeightsCacheClaim,
		"PersistentVolumeClaim, in each model's namespace, that keeps fetched weights for every replica and restart instead of a per-pod emptyDir (empty: emptyDir).")
	flag.IntVar(&cfg.MaxConcurrentReconciles, "max-concurrent-reconciles", cfg.MaxConcurrentReconciles,
		"How many InferenceModels are reconciled at once.")
	flag.DurationVar(&cfg.KeyRotationGrace, "api-key-rotation-grace", cfg.KeyRotationGrace,
		"How long the previous key of a rotated ApiKey stays valid.")
	flag.StringVar(&cfg.TokenServiceBindAddress, "token-service-bind-address", cfg.TokenServiceBindAddress,
		"Address the token service (POST /v1/tokens, /.well-known/jwks.json) binds to; 0 disables it.")
	flag.Func("jwt-algorithm", "Algorithm of new JWT signing keys: RS256 (RSA 2048, default) or ES256 (P-256).", func(v string) error {
		alg, err := signing.ParseAlgorithm(v)
		cfg.JWTAlgorithm = alg
		return err
	})
	flag.DurationVar(&cfg.JWTRotationPeriod, "jwt-rotation-period", cfg.JWTRotationPeriod,
		"How long a JWT signing key signs before a new one replaces it; the old one stays published until its tokens expire.")
	flag.StringVar(&cfg.JWTIssuer, "jwt-issuer", cfg.JWTIssuer, "The iss claim of issued tokens, which runtimes require.")
	flag.StringVar(&cfg.UsageBindAddress, "usage-bind-address", cfg.UsageBindAddress,
		"Address the gRPC usage aggregator (runtimes report per-key token usage to it) binds to; 0 disables it. It serves TLS for the host of --usage-endpoint, from a CA kept in the Secret "+usage.CASecretName+".")
	flag.BoolVar(&cfg.UsageAllowUnauthenticated, "usage-allow-unauthenticated", cfg.UsageAllowUnauthenticated,
		"Take usage reports sent without a ServiceAccount token, from runtimes older than tokens, while upgrading them; reports with a token are checked all the same.")
	flag.BoolVar(&cfg.UsageAllowPlaintext, "usage-allow-plaintext", cfg.UsageAllowPlaintext,
		"Take plain-gRPC connections to the usage aggregator besides TLS ones, from runtimes older than TLS, while upgrading them; their tokens are checked all the same.")
	flag.DurationVar(&cfg.TokenTTL, "token-ttl", cfg.TokenTTL, "Lifetime of an issued token when the request does not ask for one.")
	flag.DurationVar(&cfg.MaxTokenTTL, "max-token-ttl", cfg.MaxTokenTTL, "Longest lifetime a token request may ask for.")
	flag.StringVar(&cfg.Exposure.DefaultIngressClass, "default-ingress-class", cfg.Exposure.DefaultIngressClass,
		"Ingress class of exposed models that set neither spec.endpoint.ingressClassName nor gatewayRef.")
	flag.Func("ingress-dialect", "Annotations written on Ingresses: ingress-nginx (the community controller, default) or nginx-inc (F5 NGINX Ingress Controller, nginx.org/*).",
		func(v string) error {
			switch controllers.IngressDialect(v) {
			case controllers.DialectIngressNginx, controllers.DialectNginxInc:
				cfg.Exposure.Dialect = controllers.IngressDialect(v)
				return nil
			}
			return fmt.Errorf("unknown dialect %q: want ingress-nginx or nginx-inc", v)
		})
	flag.Func("default-issuer", "cert-manager issuer of exposed models that name none, as ClusterIssuer/NAME or Issuer/NAME (a bare NAME is a ClusterIssuer).",
		func(v string) error {
			kind, name, ok := strings.Cut(v, "/")
			if !ok {
				kind, name = string(servingv1alpha1.IssuerKindClusterIssuer), v
			}
			if name == "" || (kind != string(servingv1alpha1.IssuerKindClusterIssuer) && kind != string(servingv1alpha1.IssuerKindIssuer)) {
				return fmt.Errorf("want ClusterIssuer/NAME or Issuer/NAME, got %q", v)
			}
			cfg.Exposure.DefaultIssuer = &servingv1alpha1.IssuerReference{Name: name, Kind: servingv1alpha1.IssuerKind(kind)}
			return nil
		})
	flag.DurationVar(&cfg.Exposure.StreamTimeout, "stream-timeout", cfg.Exposure.StreamTimeout,
		"Read and send timeouts written on Ingresses and routes: how long a token stream may run (at least 10m recommended).")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	// --kubeconfig is registered on flag.CommandLine by controller-runtime; KUBECONFIG and
	// in-cluster configuration are the fallbacks, as in every controller-runtime manager.
	flag.Parse()
	opts.QPS = float32(qps)
	if err := cfg.Exposure.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "invalid exposure flags:", err)
		os.Exit(2)
	}
	cfg.Namespace = opts.Namespace
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))

	restCfg, err := ctrl.GetConfig()
	if err != nil {
		ctrl.Log.Error(err, "loading kubeconfig")
		os.Exit(1)
	}
	opts.Setup = append(opts.Setup, func(mgr ctrl.Manager) error { return controllers.Setup(mgr, cfg) })
	if err := manager.Run(ctrl.SetupSignalHandler(), restCfg, opts); err != nil {
		ctrl.Log.Error(err, "manager exited")
		os.Exit(1)
	}
}
