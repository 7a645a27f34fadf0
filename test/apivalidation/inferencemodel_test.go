package apivalidation

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

func validInferenceModel() client.Object {
	return &servingv1alpha1.InferenceModel{
		ObjectMeta: metav1.ObjectMeta{Name: "llama"},
		Spec: servingv1alpha1.InferenceModelSpec{
			Model: servingv1alpha1.ModelSource{URI: "hf://meta-llama/Llama-3.1-8B-Instruct", Parameters: "8B", DType: servingv1alpha1.DTypeBF16},
			GPU:   servingv1alpha1.GPURequirements{Pool: "h100", Count: 1, MinMemory: ptr.To(resource.MustParse("40Gi"))},
		},
	}
}

func TestInferenceModelValidation(t *testing.T) {
	runCases(t, validInferenceModel, []validationCase{
		// Accepted: the rules must not get in the way of real use.
		{name: "valid base"},
		{name: "CPU-only model without pool", mutate: all(set("spec.gpu.count", 0), unset("spec.gpu.pool"), unset("spec.gpu.minMemory"))},
		{name: "every URI scheme: s3", mutate: set("spec.model.uri", "s3://models/llama/8b")},
		{name: "every URI scheme: gs", mutate: set("spec.model.uri", "gs://models-bucket/llama")},
		{name: "every URI scheme: pvc", mutate: set("spec.model.uri", "pvc://weights/llama/8b")},
		{name: "every URI scheme: oci", mutate: set("spec.model.uri", "oci://ghcr.io/acme/llama:8b")},
		{name: "every URI scheme: https", mutate: set("spec.model.uri", "https://example.com/llama.gguf")},
		{name: "gateway endpoint", mutate: set("spec.endpoint", map[string]any{"host": "llama.example.com", "gatewayRef": map[string]any{"name": "edge"}})},
		{name: "custom engine with image", mutate: set("spec.engine", map[string]any{"type": "Custom", "image": "ghcr.io/acme/engine:1"})},
		{name: "same model.name on update", mutate: set("spec.model.name", "llama-8b"), onUpdate: set("spec.replicas", 3)},
		{name: "browser origins", mutate: set("spec.auth.allowedOrigins", []any{"app.example.com", "*.example.com", "https://chat.example.com", "http://localhost:3000"})},

		// Rejected at create.
		{name: "unknown URI scheme", mutate: set("spec.model.uri", "ftp://models/llama"), wantErrs: []string{"spec.model.uri", "must start with hf://"}},
		{name: "URI with a space", mutate: set("spec.model.uri", "hf://meta llama/x"), wantErrs: []string{"spec.model.uri"}},
		{name: "hf URI without repo", mutate: set("spec.model.uri", "hf://meta-llama"), wantErrs: []string{"spec.model.uri", "hf://<org>/<repo>"}},
		{name: "pvc URI with bad claim", mutate: set("spec.model.uri", "pvc://Bad_Claim/x"), wantErrs: []string{"spec.model.uri", "claim"}},
		{name: "pvc URI escaping the claim", mutate: set("spec.model.uri", "pvc://weights/../../etc"), wantErrs: []string{"spec.model.uri", "'..'"}},
		{name: "s3 URI with bad bucket", mutate: set("spec.model.uri", "s3://B/x"), wantErrs: []string{"spec.model.uri", "bucket"}},
		{name: "missing URI", mutate: unset("spec.model.uri"), wantErrs: []string{"spec.model.uri", "Required"}},
		{name: "URI too long", mutate: set("spec.model.uri", "https://example.com/"+strings.Repeat("a", 2048)), wantErrs: []string{"spec.model.uri", "Too long"}},
		{name: "gpu count 0 with a pool", mutate: all(set("spec.gpu.count", 0), unset("spec.gpu.minMemory")), wantErrs: []string{"spec.gpu.pool", "must be empty when count is 0"}},
		{name: "gpu count without a pool", mutate: unset("spec.gpu.pool"), wantErrs: []string{"spec.gpu.pool", "required when count is greater than 0"}},
		{name: "gpu count above 16", mutate: set("spec.gpu.count", 17), wantErrs: []string{"spec.gpu.count"}},
		{name: "negative gpu count", mutate: set("spec.gpu.count", -1), wantErrs: []string{"spec.gpu.count"}},
		{name: "gpu minMemory too small", mutate: set("spec.gpu.minMemory", "512Mi"), wantErrs: []string{"spec.gpu.minMemory", "between 1Gi and 1Ti"}},
		{name: "gpu minMemory absurd", mutate: set("spec.gpu.minMemory", "5Pi"), wantErrs: []string{"spec.gpu.minMemory", "between 1Gi and 1Ti"}},
		{name: "minMemory on a CPU-only model", mutate: all(set("spec.gpu.count", 0), unset("spec.gpu.pool")), wantErrs: []string{"spec.gpu.minMemory"}},
		{name: "pool name not a DNS label", mutate: set("spec.gpu.pool", "H100_pool"), wantErrs: []string{"spec.gpu.pool"}},
		{name: "negative replicas", mutate: set("spec.replicas", -1), wantErrs: []string{"spec.replicas"}},
		{name: "absurd replicas", mutate: set("spec.replicas", 100000), wantErrs: []string{"spec.replicas"}},
		{name: "unknown engine type", mutate: set("spec.engine.type", "Triton"), wantErrs: []string{"spec.engine.type", "Unsupported value"}},
		{name: "custom engine without image", mutate: set("spec.engine.type", "Custom"), wantErrs: []string{"spec.engine.image", "required when type is Custom"}},
		{name: "engine port taken by the runtime", mutate: set("spec.engine.port", 8080), wantErrs: []string{"spec.engine.port", "runtime"}},
		{name: "privileged engine port", mutate: set("spec.engine.port", 80), wantErrs: []string{"spec.engine.port"}},
		{name: "too many engine args", mutate: set("spec.engine.args", repeat(65, func(int) any { return "--x" })), wantErrs: []string{"spec.engine.args", "must have at most 64 items"}},
		{name: "unknown dtype", mutate: set("spec.model.dtype", "FP4"), wantErrs: []string{"spec.model.dtype", "Unsupported value"}},
		{name: "parameters not a size", mutate: set("spec.model.parameters", "lots"), wantErrs: []string{"spec.model.parameters"}},
		{name: "model name with spaces", mutate: set("spec.model.name", "my model"), wantErrs: []string{"spec.model.name"}},
		{name: "credentials secret name invalid", mutate: set("spec.model.credentialsSecretRef", map[string]any{"name": "HF_Token"}), wantErrs: []string{"spec.model.credentialsSecretRef.name"}},
		{name: "both gatewayRef and ingressClassName", mutate: set("spec.endpoint", map[string]any{"host": "llama.example.com", "ingressClassName": "nginx", "gatewayRef": map[string]any{"name": "edge"}}), wantErrs: []string{"spec.endpoint.gatewayRef", "mutually exclusive"}},
		{name: "host not a DNS name", mutate: set("spec.endpoint", map[string]any{"host": "Llama_Example.com"}), wantErrs: []string{"spec.endpoint.host", "DNS name"}},
		{name: "host with a scheme", mutate: set("spec.endpoint", map[string]any{"host": "https://llama.example.com"}), wantErrs: []string{"spec.endpoint.host"}},
		{name: "host with one label", mutate: set("spec.endpoint", map[string]any{"host": "localhost"}), wantErrs: []string{"spec.endpoint.host"}},
		{name: "endpoint without host", mutate: set("spec.endpoint", map[string]any{"ingressClassName": "nginx"}), wantErrs: []string{"spec.endpoint.host", "Required"}},
		{name: "unknown issuer kind", mutate: set("spec.endpoint", map[string]any{"host": "llama.example.com", "tls": map[string]any{"issuerRef": map[string]any{"name": "le", "kind": "Vault"}}}), wantErrs: []string{"spec.endpoint.tls.issuerRef.kind"}},
		{name: "zero edge rate limit", mutate: set("spec.endpoint", map[string]any{"host": "llama.example.com", "rateLimit": map[string]any{"requestsPerSecond": 0}}), wantErrs: []string{"spec.endpoint.rateLimit.requestsPerSecond"}},
		{name: "unknown auth mode", mutate: set("spec.auth.mode", "Basic"), wantErrs: []string{"spec.auth.mode", "Unsupported value"}},
		{name: "any origin", mutate: set("spec.auth.allowedOrigins", []any{"*"}), wantErrs: []string{"spec.auth.allowedOrigins", "any page on the web"}},
		{name: "any https origin", mutate: set("spec.auth.allowedOrigins", []any{"https://*"}), wantErrs: []string{"spec.auth.allowedOrigins", "wildcard subdomain"}},
		{name: "every .com origin", mutate: set("spec.auth.allowedOrigins", []any{"*.com"}), wantErrs: []string{"spec.auth.allowedOrigins", "not *.com"}},
		{name: "every https .io origin", mutate: set("spec.auth.allowedOrigins", []any{"https://*.io"}), wantErrs: []string{"spec.auth.allowedOrigins"}},
		{name: "origin with a path", mutate: set("spec.auth.allowedOrigins", []any{"https://app.example.com/chat"}), wantErrs: []string{"spec.auth.allowedOrigins"}},
		{name: "origin listed twice", mutate: set("spec.auth.allowedOrigins", []any{"app.example.com", "app.example.com"}), wantErrs: []string{"spec.auth.allowedOrigins", "Duplicate"}},
		{name: "name too long for a Service", mutate: set("metadata.name", strings.Repeat("m", 53)), wantErrs: []string{"metadata.name", "at most 52 characters"}},
		{name: "name starting with a digit", mutate: set("metadata.name", "8b-model"), wantErrs: []string{"metadata.name", "start with a letter"}},

		// Rejected at update.
		{name: "model.name changed", mutate: set("spec.model.name", "llama-8b"), onUpdate: set("spec.model.name", "llama-70b"), wantErrs: []string{"spec.model.name", "immutable"}},
		{name: "model.name added after create", onUpdate: set("spec.model.name", "llama-8b"), wantErrs: []string{"spec.model.name", "immutable"}},
	})
}
