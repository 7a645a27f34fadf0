package apivalidation

import (
	"fmt"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

func validApiKey() client.Object {
	return &servingv1alpha1.ApiKey{
		ObjectMeta: metav1.ObjectMeta{Name: "chat-app"},
		Spec: servingv1alpha1.ApiKeySpec{
			Models: []string{"llama-3.1-8b"},
			Scopes: []servingv1alpha1.Scope{servingv1alpha1.ScopeInference},
		},
	}
}

func TestApiKeyValidation(t *testing.T) {
	runCases(t, validApiKey, []validationCase{
		{name: "valid base"},
		{name: "bring your own key", mutate: set("spec.existingSecretRef", map[string]any{"name": "byo", "key": "api-key"})},
		{name: "long name with explicit secretName", mutate: all(set("metadata.name", strings.Repeat("k", 250)), set("spec.secretName", "short"))},

		{name: "secretName and existingSecretRef", mutate: all(set("spec.secretName", "mine"), set("spec.existingSecretRef", map[string]any{"name": "byo", "key": "k"})), wantErrs: []string{"spec.existingSecretRef", "mutually exclusive"}},
		{name: "unknown scope", mutate: set("spec.scopes", []any{"Admin"}), wantErrs: []string{"spec.scopes", "Unsupported value"}},
		{name: "duplicate scope", mutate: set("spec.scopes", []any{"Inference", "Inference"}), wantErrs: []string{"spec.scopes", "Duplicate value"}},
		{name: "too many models", mutate: set("spec.models", repeat(65, func(i int) any { return fmt.Sprintf("m%d", i) })), wantErrs: []string{"spec.models", "must have at most 64 items"}},
		{name: "model name with spaces", mutate: set("spec.models", []any{"my model"}), wantErrs: []string{"spec.models[0]"}},
		{name: "description too long", mutate: set("spec.description", strings.Repeat("d", 257)), wantErrs: []string{"spec.description", "Too long"}},
		{name: "zero requests per minute", mutate: set("spec.rateLimit", map[string]any{"requestsPerMinute": 0}), wantErrs: []string{"spec.rateLimit.requestsPerMinute"}},
		{name: "negative max concurrent", mutate: set("spec.rateLimit", map[string]any{"maxConcurrent": -2}), wantErrs: []string{"spec.rateLimit.maxConcurrent"}},
		{name: "negative quota", mutate: set("spec.quota", map[string]any{"tokens": -5}), wantErrs: []string{"spec.quota.tokens"}},
		{name: "quota without tokens", mutate: set("spec.quota", map[string]any{"window": "Day"}), wantErrs: []string{"spec.quota.tokens", "Required"}},
		{name: "unknown quota window", mutate: set("spec.quota", map[string]any{"tokens": 10, "window": "Year"}), wantErrs: []string{"spec.quota.window", "Unsupported value"}},
		{name: "expiresAt not a time", mutate: set("spec.expiresAt", "next tuesday"), wantErrs: []string{"spec.expiresAt"}},
		{name: "existing secret key with a slash", mutate: set("spec.existingSecretRef", map[string]any{"name": "byo", "key": "a/b"}), wantErrs: []string{"spec.existingSecretRef.key"}},
		{name: "name too long for the default Secret", mutate: set("metadata.name", strings.Repeat("k", 250)), wantErrs: []string{"metadata.name", "<name>-apikey"}},

		{name: "secretName changed", mutate: set("spec.secretName", "one"), onUpdate: set("spec.secretName", "two"), wantErrs: []string{"spec.secretName", "immutable"}},
		{name: "secretName added after create", onUpdate: set("spec.secretName", "late"), wantErrs: []string{"spec.secretName", "cannot be added or removed"}},
	})
}
