package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

func newModel(ns, name, pool string, gpus int32, mutate func(*servingv1alpha1.InferenceModel)) *servingv1alpha1.InferenceModel {
	m := &servingv1alpha1.InferenceModel{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: servingv1alpha1.InferenceModelSpec{
			Model: servingv1alpha1.ModelSource{URI: "hf://meta-llama/Llama-3.1-8B-Instruct", Parameters: "8B", DType: servingv1alpha1.DTypeBF16},
			GPU:   servingv1alpha1.GPURequirements{Pool: pool, Count: gpus},
		},
	}
	if mutate != nil {
		mutate(m)
	}
	return m
}

func create(t *testing.T, obj client.Object) {
	t.Helper()
	if err := env.Client.Create(context.Background(), obj); err != nil {
		t.Fatal(err)
	}
}

func conditionIs(m *servingv1alpha1.InferenceModel, typ string, status metav1.ConditionStatus, reason string) error {
	c := meta.FindStatusCondition(m.Status.Conditions, typ)
	if c == nil {
		return fmt.Errorf("no %s condition yet (status %+v)", typ, m.Status)
	}
	if c.Status != status || c.Reason != reason || c.ObservedGeneration != m.Generation {
		return fmt.Errorf("%s = %s/%s (gen %d of %d): %s; want %s/%s", typ, c.Status, c.Reason, c.ObservedGeneration, m.Generation, c.Message, status, reason)
	}
	return nil
}

func waitCondition(t *testing.T, m *servingv1alpha1.InferenceModel, typ string, status metav1.ConditionStatus, reason string) *servingv1alpha1.InferenceModel {
	t.Helper()
	got := &servingv1alpha1.InferenceModel{}
	eventually(t, fmt.Sprintf("%s %s=%s/%s", m.Name, typ, status, reason), func() error {
		if err := get(got, m.Namespace, m.Name); err != nil {
			return err
		}
		return conditionIs(got, typ, status, reason)
	})
	return got
}

func TestInferenceModelChildren(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	gpuNode(t, "children-a", 8, 81920, map[string]string{"pool": "children"})
	gpuPool(t, "children", nil)
	ns := newNamespace(t, nil)
	model := newModel(ns, "llama", "children", 2, func(m *servingv1alpha1.InferenceModel) {
		m.Spec.Engine.Args = []string{"--max-model-len=8192"}
	})
	create(t, model)

	got := waitCondition(t, model, servingv1alpha1.InferenceModelConditionScheduled, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonPlaced)
	if got.Status.Placement == nil || got.Status.Placement.EligibleNodes != 1 || got.Status.Placement.GPUsPerReplica != 2 || got.Status.Placement.FittingReplicas != 4 {
		t.Errorf("placement = %+v", got.Status.Placement)
	}
	if got.Status.ModelName != "llama" || got.Status.URL != fmt.Sprintf("http://llama.%s.svc.cluster.local:8080/v1", ns) {
		t.Errorf("modelName %q url %q", got.Status.ModelName, got.Status.URL)
	}
	if got.Status.Selector != "app.kubernetes.io/managed-by=helixflow,serving.helixflow.io/inference-model=llama" {
		t.Errorf("selector = %q", got.Status.Selector)
	}

	deploy := &appsv1.Deployment{}
	eventually(t, "deployment", func() error { return get(deploy, ns, "llama") })
	sa, svc := &corev1.ServiceAccount{}, &corev1.Service{}
	if err := get(sa, ns, "llama"); err != nil {
		t.Fatalf("service account: %v", err)
	}
	if err := get(svc, ns, "llama"); err != nil {
		t.Fatalf("service: %v", err)
	}
	for _, obj := range []client.Object{deploy, sa, svc} {
		ref := metav1.GetControllerOf(obj)
		if ref == nil || ref.Kind != "InferenceModel" || ref.Name != "llama" || !ptr.Deref(ref.BlockOwnerDeletion, false) {
			t.Errorf("%T owner reference = %+v", obj, ref)
		}
		if mf := obj.GetManagedFields(); len(mf) == 0 || mf[0].Manager != FieldOwner {
			t.Errorf("%T field managers = %+v, want %s", obj, mf, FieldOwner)
		}
	}
	var ports []string
	for _, p := range svc.Spec.Ports {
		ports = append(ports, fmt.Sprintf("%s:%d", p.Name, p.Port))
	}
	if strings.Join(ports, ",") != "http:8080,grpc:9090,metrics:9100" {
		t.Errorf("service ports = %v", ports)
	}

	pod := deploy.Spec.Template.Spec
	if *deploy.Spec.Replicas != 1 || len(pod.InitContainers) != 1 || len(pod.Containers) != 2 {
		t.Fatalf("deployment replicas=%d init=%d containers=%d", *deploy.Spec.Replicas, len(pod.InitContainers), len(pod.Containers))
	}
	engine, rt := pod.Containers[0], pod.Containers[1]
	if gpus := engine.Resources.Limits["nvidia.com/gpu"]; gpus.Value() != 2 {
		t.Errorf("engine GPU limit = %v", engine.Resources.Limits)
	}
	if engine.Image != DefaultEngineImages()[servingv1alpha1.EngineVLLM] || !slices.Contains(engine.Args, "--host=127.0.0.1") ||
		!slices.Contains(engine.Args, "--tensor-parallel-size=2") || !slices.Contains(engine.Args, "--max-model-len=8192") {
		t.Errorf("engine = %s %v", engine.Image, engine.Args)
	}
	if rt.Image != testConfig.RuntimeImage || rt.ReadinessProbe == nil || rt.ReadinessProbe.HTTPGet.Path != "/readyz" || rt.Args[0] != "serve" {
		t.Errorf("runtime container = %+v", rt)
	}
	if pod.InitContainers[0].Args[0] != "fetch" || !slices.Contains(pod.InitContainers[0].Args, "--uri=hf://meta-llama/Llama-3.1-8B-Instruct") {
		t.Errorf("fetch init container args = %v", pod.InitContainers[0].Args)
	}
	terms := pod.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	if len(terms) != 1 || terms[0].MatchExpressions[0].Key != "pool" || terms[0].MatchExpressions[0].Values[0] != "children" {
		t.Errorf("node affinity = %+v", terms)
	}
	if len(pod.Tolerations) != 1 || pod.Tolerations[0].Key != "nvidia.com/gpu" {
		t.Errorf("tolerations = %+v", pod.Tolerations)
	}
	if !*pod.SecurityContext.RunAsNonRoot || pod.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod security context = %+v", pod.SecurityContext)
	}

	// Editing the spec rolls the pods: the template changes.
	eventually(t, "edit engine args", func() error {
		if err := get(got, ns, "llama"); err != nil {
			return err
		}
		got.Spec.Engine.Args = []string{"--max-model-len=4096"}
		return env.Client.Update(ctx, got)
	})
	eventually(t, "template follows the spec", func() error {
		if err := get(deploy, ns, "llama"); err != nil {
			return err
		}
		if args := deploy.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--max-model-len=4096") {
			return fmt.Errorf("engine args %v", args)
		}
		return nil
	})

	// kubectl scale: the scale subresource drives the Deployment and the PDB.
	scale := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"replicas": int64(3)}}}
	scale.SetAPIVersion("autoscaling/v1")
	scale.SetKind("Scale")
	if err := env.Client.SubResource("scale").Update(ctx, got, client.WithSubResourceBody(scale)); err != nil {
		t.Fatalf("scaling: %v", err)
	}
	pdb := &policyv1.PodDisruptionBudget{}
	eventually(t, "scaled deployment and PDB", func() error {
		if err := get(deploy, ns, "llama"); err != nil {
			return err
		}
		if *deploy.Spec.Replicas != 3 {
			return fmt.Errorf("deployment replicas %d", *deploy.Spec.Replicas)
		}
		return get(pdb, ns, "llama")
	})
	if pdb.Spec.MaxUnavailable.IntValue() != 1 {
		t.Errorf("PDB maxUnavailable = %v", pdb.Spec.MaxUnavailable)
	}
	eventually(t, "scale back to 1", func() error {
		if err := get(got, ns, "llama"); err != nil {
			return err
		}
		got.Spec.Replicas = ptr.To[int32](1)
		return env.Client.Update(ctx, got)
	})
	eventually(t, "PDB removed at one replica", func() error {
		if err := get(pdb, ns, "llama"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("PDB still there: %w", err)
		}
		return nil
	})

	// Play the Deployment controller: the model becomes Available and Ready.
	eventually(t, "deployment status", func() error {
		if err := get(deploy, ns, "llama"); err != nil {
			return err
		}
		deploy.Status = appsv1.DeploymentStatus{ObservedGeneration: deploy.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
		return env.Client.Status().Update(ctx, deploy)
	})
	got = waitCondition(t, model, servingv1alpha1.ConditionReady, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonReplicasReady)
	if err := conditionIs(got, servingv1alpha1.InferenceModelConditionAvailable, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonReplicasReady); err != nil {
		t.Error(err)
	}
	if got.Status.ReadyReplicas != 1 || got.Status.Replicas != 1 {
		t.Errorf("replicas %d ready %d", got.Status.Replicas, got.Status.ReadyReplicas)
	}
	var evs corev1.EventList
	eventually(t, "a Ready event", func() error {
		if err := env.Client.List(ctx, &evs, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Name == "llama" && e.Reason == servingv1alpha1.InferenceModelReasonReplicasReady {
				return nil
			}
		}
		return fmt.Errorf("%d events, none ReplicasReady", len(evs.Items))
	})
}

// Each reason a model cannot be placed gives Scheduled=False with numbers, and no pods.
func TestInferenceModelUnschedulable(t *testing.T) {
	startManager(t)
	gpuNode(t, "small-a", 2, 40960, map[string]string{"pool": "small"})
	gpuNode(t, "small-b", 4, 40960, map[string]string{"pool": "small"})
	gpuPool(t, "small", nil)
	gpuPool(t, "empty", nil)
	gpuPool(t, "private", func(p *servingv1alpha1.GPUPool) {
		p.Spec.NodeSelector.MatchLabels = map[string]string{"pool": "small"}
		p.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"team": "research"}}
	})
	ns := newNamespace(t, map[string]string{"team": "product"})
	tests := []struct {
		model      *servingv1alpha1.InferenceModel
		wantReason string
		wantMsg    string
	}{
		{newModel(ns, "no-pool", "missing", 1, nil), servingv1alpha1.InferenceModelReasonPoolNotFound, "GPUPool missing not found"},
		{newModel(ns, "not-allowed", "private", 1, nil), servingv1alpha1.InferenceModelReasonNamespaceNotAllowed, "namespace " + ns + " is not selected"},
		{newModel(ns, "no-nodes", "empty", 1, nil), servingv1alpha1.InferenceModelReasonNoMatchingNodes, "matches no nodes"},
		{newModel(ns, "too-many-gpus", "small", 8, nil), servingv1alpha1.InferenceModelReasonInsufficientGPUs, "needs 8 x 3Gi GPU(s) on one node; largest node in pool small has 4 x 40Gi"},
		{newModel(ns, "too-big", "small", 2, func(m *servingv1alpha1.InferenceModel) {
			m.Spec.GPU.MinMemory = ptr.To(resource.MustParse("80Gi"))
		}), servingv1alpha1.InferenceModelReasonInsufficientGPUMemory, "needs 2 x 80Gi GPU(s) on one node; largest node in pool small has 4 x 40Gi"},
		{newModel(ns, "estimated-too-big", "small", 1, func(m *servingv1alpha1.InferenceModel) {
			m.Spec.Model.Parameters = "70B"
		}), servingv1alpha1.InferenceModelReasonInsufficientGPUMemory, "needs 1 x 157Gi GPU(s)"},
	}
	for _, tc := range tests {
		t.Run(tc.wantReason+"/"+tc.model.Name, func(t *testing.T) {
			create(t, tc.model)
			got := waitCondition(t, tc.model, servingv1alpha1.InferenceModelConditionScheduled, metav1.ConditionFalse, tc.wantReason)
			c := meta.FindStatusCondition(got.Status.Conditions, servingv1alpha1.InferenceModelConditionScheduled)
			if !strings.Contains(c.Message, tc.wantMsg) {
				t.Errorf("message %q lacks %q", c.Message, tc.wantMsg)
			}
			if err := conditionIs(got, servingv1alpha1.ConditionReady, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonNotScheduled); err != nil {
				t.Error(err)
			}
			deploy := &appsv1.Deployment{}
			eventually(t, "deployment", func() error { return get(deploy, ns, tc.model.Name) })
			if *deploy.Spec.Replicas != 0 {
				t.Errorf("a model that cannot fit got %d replicas: its pods would sit Pending forever", *deploy.Spec.Replicas)
			}
		})
	}

	// Fixing the cause is picked up through watches, without touching the model.
	t.Run("pool appears", func(t *testing.T) {
		gpuNode(t, "late-a", 8, 81920, map[string]string{"pool": "missing"})
		gpuPool(t, "missing", nil)
		got := waitCondition(t, tests[0].model, servingv1alpha1.InferenceModelConditionScheduled, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonPlaced)
		if got.Status.Placement.EligibleNodes != 1 {
			t.Errorf("placement %+v", got.Status.Placement)
		}
	})
}

// A CPU-only model needs no pool and requests no GPU.
func TestInferenceModelCPUOnly(t *testing.T) {
	startManager(t)
	ns := newNamespace(t, nil)
	model := newModel(ns, "embed", "", 0, func(m *servingv1alpha1.InferenceModel) {
		m.Spec.Engine.Type = servingv1alpha1.EngineLlamaCpp
		m.Spec.Model.URI = "pvc://weights/embed/model.gguf"
	})
	create(t, model)
	waitCondition(t, model, servingv1alpha1.InferenceModelConditionScheduled, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonNoGPURequested)
	deploy := &appsv1.Deployment{}
	eventually(t, "deployment", func() error { return get(deploy, ns, "embed") })
	pod := deploy.Spec.Template.Spec
	if len(pod.InitContainers) != 0 {
		t.Errorf("pvc:// needs no fetch, got init containers %v", pod.InitContainers)
	}
	if pod.Volumes[0].PersistentVolumeClaim == nil || pod.Volumes[0].PersistentVolumeClaim.ClaimName != "weights" {
		t.Errorf("models volume = %+v", pod.Volumes[0])
	}
	if _, ok := pod.Containers[0].Resources.Limits["nvidia.com/gpu"]; ok || pod.Affinity != nil {
		t.Errorf("CPU-only pod asks for GPUs or a pool: %+v %+v", pod.Containers[0].Resources, pod.Affinity)
	}
	if !slices.Contains(pod.Containers[0].Args, "/models/embed/model.gguf") {
		t.Errorf("llama.cpp args = %v", pod.Containers[0].Args)
	}
}
