package controllers

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	psaapi "k8s.io/pod-security-admission/api"
	psapolicy "k8s.io/pod-security-admission/policy"
)

// restrictedEvaluator checks pod templates against Pod Security Standards "restricted"
// (latest) with the same evaluator the API server's admission plugin uses.
func restrictedEvaluator(t *testing.T) func(*corev1.PodTemplateSpec) psapolicy.AggregateCheckResult {
	t.Helper()
	evaluator, err := psapolicy.NewEvaluator(psapolicy.DefaultChecks(), nil)
	if err != nil {
		t.Fatal(err)
	}
	restricted := psaapi.LevelVersion{Level: psaapi.LevelRestricted, Version: psaapi.LatestVersion()}
	return func(tmpl *corev1.PodTemplateSpec) psapolicy.AggregateCheckResult {
		return psapolicy.AggregateCheckResults(evaluator.EvaluatePod(restricted, &tmpl.ObjectMeta, &tmpl.Spec))
	}
}
