package controllers

import (
	"context"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// reconciles reads controller-runtime's own reconcile counter for a controller.
func reconciles(t *testing.T, controller string) float64 {
	t.Helper()
	return counterSum(t, "controller_runtime_reconcile_total", "controller", controller)
}

// counterSum adds up the counter name over the series whose label has value, in the
// metrics registry the managers of this test binary share.
func counterSum(t *testing.T, name, label, value string) float64 {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					total += m.GetCounter().GetValue()
				}
			}
		}
	}
	return total
}

// resourceVersions records the version of every object of interest: a write of any kind
// (spec, status, metadata) changes it.
func resourceVersions(t *testing.T, ns string, names []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, name := range names {
		for _, obj := range []client.Object{&servingv1alpha1.InferenceModel{}, &appsv1.Deployment{}, &corev1.Service{}, &corev1.ServiceAccount{}} {
			if err := get(obj, ns, name); err != nil {
				t.Fatal(err)
			}
			out[fmt.Sprintf("%T/%s", obj, name)] = obj.GetResourceVersion()
		}
	}
	return out
}

// A manager restart changes nothing: every model is reconciled again, and no child, no
// status and no model is written.
func TestManagerRestartChangesNothing(t *testing.T) {
	stop := startManager(t)
	gpuNode(t, "restart-a", 8, 81920, map[string]string{"pool": "restart"})
	gpuPool(t, "restart", nil)
	ns := newNamespace(t, nil)
	var names []string
	for i := range 5 {
		m := newModel(ns, fmt.Sprintf("m%d", i), "restart", 1, nil)
		create(t, m)
		names = append(names, m.Name)
	}
	for _, n := range names {
		waitCondition(t, &servingv1alpha1.InferenceModel{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: n}},
			servingv1alpha1.InferenceModelConditionScheduled, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonPlaced)
	}
	// Let the first manager settle: its own writes trigger one more round of reconciles.
	var before map[string]string
	eventually(t, "settled", func() error {
		a := resourceVersions(t, ns, names)
		time.Sleep(500 * time.Millisecond)
		before = resourceVersions(t, ns, names)
		if fmt.Sprint(a) != fmt.Sprint(before) {
			return fmt.Errorf("still changing")
		}
		return nil
	})
	stop()

	// Models of earlier tests are still in the API server (envtest has no garbage
	// collector); the new manager reconciles them all, so wait for at least that many.
	var all servingv1alpha1.InferenceModelList
	if err := env.Client.List(context.Background(), &all); err != nil {
		t.Fatal(err)
	}
	start := reconciles(t, "inferencemodel")
	startManager(t)
	eventually(t, "second manager reconciled every model", func() error {
		if got := reconciles(t, "inferencemodel") - start; got < float64(len(all.Items)) {
			return fmt.Errorf("%v reconciles after restart, want at least %d", got, len(all.Items))
		}
		return nil
	})
	after := resourceVersions(t, ns, names)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s written after restart: resourceVersion %s -> %s", k, v, after[k])
		}
	}
	var deploys appsv1.DeploymentList
	if err := env.Client.List(context.Background(), &deploys, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(deploys.Items) != len(names) {
		t.Errorf("%d Deployments for %d models", len(deploys.Items), len(names))
	}
}
