// Package controllers holds HelixFlow's reconcilers and the pure builders of the objects
// they own. Builders take the desired state and return objects; they do no I/O, so they
// are table-tested without a cluster.
package controllers

import (
	"fmt"
	"os"
	"time"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/internal/signing"
	"github.com/helixflow/helixflow/internal/tokenservice"
	"github.com/helixflow/helixflow/internal/usage"
)

// FieldOwner is the server-side apply field manager of everything the manager writes.
const FieldOwner = "helixflow-manager"

// Config is the manager-wide configuration the reconcilers need. It comes from manager
// flags so images and addresses are never literals scattered through the code.
type Config struct {
	// RuntimeImage runs `runtime serve` and `runtime fetch` in model pods.
	RuntimeImage string
	// EngineImages is the default image per engine type (Custom has none).
	EngineImages map[servingv1alpha1.EngineType]string
	// UsageEndpoint is the manager's usage aggregator address given to runtimes.
	UsageEndpoint string
	// ClusterDomain is the cluster's DNS suffix for in-cluster URLs.
	ClusterDomain string
	// MaxConcurrentReconciles is how many InferenceModels are reconciled at once.
	MaxConcurrentReconciles int
	// Namespace is the manager's own namespace, where the probe DaemonSets and their
	// ServiceAccount live. It must match the manager's Options.Namespace.
	Namespace string
	// ProbeRuntimeClassName, when set, is the RuntimeClass of probe pods: the one that runs
	// the NVIDIA container runtime where it is not the node's default (GPU Operator: nvidia).
	ProbeRuntimeClassName string
	// WeightsCacheClaim, when set, names a PersistentVolumeClaim (in each model's namespace)
	// that holds the weights instead of a per-pod emptyDir: they are fetched once into
	// /models/<model name> on it and reused by every replica and restart (ReadWriteMany for
	// replicas on several nodes). pvc:// models are not affected.
	WeightsCacheClaim string
	// KeyRotationGrace is how long a rotated-out API key stays valid.
	KeyRotationGrace time.Duration

	// JWTAlgorithm signs tokens: RS256 (RSA 2048) or ES256 (P-256).
	JWTAlgorithm signing.Algorithm
	// JWTRotationPeriod is how long a signing key is the active one.
	JWTRotationPeriod time.Duration
	// JWTIssuer is the iss of every token, published to the runtimes with the JWKS.
	JWTIssuer string
	// TokenTTL and MaxTokenTTL are a token's default and longest lifetime.
	TokenTTL, MaxTokenTTL time.Duration
	// TokenServiceBindAddress serves POST /v1/tokens and the JWKS; "0" disables it.
	TokenServiceBindAddress string
	// UsageBindAddress serves the gRPC usage aggregator runtimes report to; "0" disables it.
	UsageBindAddress string
	// UsageAllowUnauthenticated makes the aggregator take batches sent without a
	// ServiceAccount token (runtimes from before tokens); sent tokens are checked all the same.
	UsageAllowUnauthenticated bool
	// UsageAllowPlaintext makes the aggregator take plain-gRPC connections besides TLS ones
	// (runtimes from before TLS, while they are replaced).
	UsageAllowPlaintext bool

	// Exposure configures the Ingresses, routes and Certificates of spec.endpoint.
	Exposure ExposureConfig
}

// DefaultEngineImages are the engines' upstream images, overridable per engine by flag.
func DefaultEngineImages() map[servingv1alpha1.EngineType]string {
	return map[servingv1alpha1.EngineType]string{
		servingv1alpha1.EngineVLLM:     "vllm/vllm-openai:v0.11.0",
		servingv1alpha1.EngineLlamaCpp: "ghcr.io/ggml-org/llama.cpp:server-cuda",
		servingv1alpha1.EngineTGI:      "ghcr.io/huggingface/text-generation-inference:3.3.6",
		servingv1alpha1.EngineOllama:   "ollama/ollama:0.12.6",
		servingv1alpha1.EngineSGLang:   "lmsysorg/sglang:v0.5.3",
	}
}

// DefaultConfig returns the configuration used when no flag overrides it.
func DefaultConfig() Config {
	return Config{
		RuntimeImage:  "ghcr.io/helixflow/runtime:latest",
		EngineImages:  DefaultEngineImages(),
		UsageEndpoint: "helixflow-usage.helixflow-system.svc:9443", // the Service of config/ and the chart
		ClusterDomain: "cluster.local",
		// Reconciles mostly wait on the API server. Measured with test/bench/reconcile on 2
		// cores: 2 -> 25 models/s, 4 -> 29, 8 -> 37, 16 and 32 no better (the API server is
		// then the bottleneck).
		MaxConcurrentReconciles: 8,
		Namespace:               defaultNamespace(),
		KeyRotationGrace:        DefaultKeyRotationGrace,
		JWTAlgorithm:            signing.RS256,
		JWTRotationPeriod:       720 * time.Hour,
		JWTIssuer:               auth.DefaultIssuer,
		TokenTTL:                tokenservice.DefaultTTL,
		MaxTokenTTL:             tokenservice.DefaultMaxTTL,
		TokenServiceBindAddress: tokenservice.DefaultBindAddress,
		UsageBindAddress:        usage.DefaultBindAddress,
		Exposure:                DefaultExposureConfig(),
	}
}

// defaultNamespace is the manager's namespace as internal/manager.DefaultOptions finds it:
// POD_NAMESPACE, else helixflow-system.
func defaultNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	return "helixflow-system"
}

// engineImage is the image the model's engine container runs.
func (c Config) engineImage(m *servingv1alpha1.InferenceModel) (string, error) {
	if m.Spec.Engine.Image != "" {
		return m.Spec.Engine.Image, nil
	}
	img, ok := c.EngineImages[m.Spec.Engine.Type]
	if !ok || img == "" {
		return "", fmt.Errorf("no default image for engine type %q: set spec.engine.image", m.Spec.Engine.Type)
	}
	return img, nil
}
