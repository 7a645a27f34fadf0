package controllers

import (
	"context"
	"fmt"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// A model that stops fitting keeps its running Deployment untouched: an edit that cannot be
// placed starts no rollout of pods that could never schedule, and nodes going NotReady for a
// moment do not scale a serving model to zero.
func TestInferenceModelKeepsServingWhenItStopsFitting(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	node := gpuNode(t, "keep-a", 8, 81920, map[string]string{"pool": "keep"})
	gpuPool(t, "keep", nil)
	ns := newNamespace(t, nil)
	model := newModel(ns, "steady", "keep", 1, nil)
	create(t, model)
	waitCondition(t, model, servingv1alpha1.InferenceModelConditionScheduled, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonPlaced)
	deploy := &appsv1.Deployment{}
	eventually(t, "deployment serving", func() error {
		if err := get(deploy, ns, "steady"); err != nil {
			return err
		}
		deploy.Status = appsv1.DeploymentStatus{ObservedGeneration: deploy.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
		return env.Client.Status().Update(ctx, deploy)
	})
	waitCondition(t, model, servingv1alpha1.ConditionReady, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonReplicasReady)
	if err := get(deploy, ns, "steady"); err != nil {
		t.Fatal(err)
	}
	unchanged := func(what string) {
		t.Helper()
		now := &appsv1.Deployment{}
		if err := get(now, ns, "steady"); err != nil {
			t.Fatal(err)
		}
		if now.Generation != deploy.Generation || *now.Spec.Replicas != 1 {
			t.Errorf("%s: Deployment changed (generation %d -> %d, replicas %d)", what, deploy.Generation, now.Generation, *now.Spec.Replicas)
		}
	}

	edit := func(count int32) {
		t.Helper()
		eventually(t, fmt.Sprintf("set gpu.count=%d", count), func() error {
			m := &servingv1alpha1.InferenceModel{}
			if err := get(m, ns, "steady"); err != nil {
				return err
			}
			m.Spec.GPU.Count = count
			return env.Client.Update(ctx, m)
		})
	}
	edit(16)
	got := waitCondition(t, model, servingv1alpha1.InferenceModelConditionScheduled, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonInsufficientGPUs)
	unchanged("after an edit that does not fit")
	if err := conditionIs(got, servingv1alpha1.InferenceModelConditionAvailable, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonReplicasReady); err != nil {
		t.Errorf("the old version still serves: %v", err)
	}
	if err := conditionIs(got, servingv1alpha1.ConditionReady, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonNotScheduled); err != nil {
		t.Error(err)
	}
	edit(1)
	waitCondition(t, model, servingv1alpha1.InferenceModelConditionScheduled, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonPlaced)

	// Every node of the pool goes NotReady: Scheduled says so, the replicas stay.
	if err := get(node, "", "keep-a"); err != nil {
		t.Fatal(err)
	}
	node.Status.Conditions[0].Status = corev1.ConditionUnknown
	if err := env.Client.Status().Update(ctx, node); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, model, servingv1alpha1.InferenceModelConditionScheduled, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonNoMatchingNodes)
	unchanged("after the pool's nodes went NotReady")
}
