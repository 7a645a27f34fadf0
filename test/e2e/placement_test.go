package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

const poolYAML = `apiVersion: serving.helixflow.io/v1alpha1
kind: GPUPool
metadata:
  name: h100
spec:
  nodeSelector:
    matchLabels:
      nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3
  tolerations:
    - key: kwok.x-k8s.io/node   # the simulated nodes' taint (see test/localcluster)
      operator: Exists
      effect: NoSchedule
`

func modelYAML(ns, name string, gpus, replicas int, extra string) string {
	return fmt.Sprintf(`apiVersion: serving.helixflow.io/v1alpha1
kind: InferenceModel
metadata:
  name: %s
  namespace: %s
spec:
  model:
    uri: hf://meta-llama/Llama-3.1-8B-Instruct
    parameters: 8B
  gpu:
    pool: h100
    count: %d
  replicas: %d
%s`, name, ns, gpus, replicas, extra)
}

func apply(t *testing.T, manifest string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(f, []byte(manifest), 0o600); err != nil {
		t.Fatal(err)
	}
	kubectl(t, "apply", "-f", f)
}

func getModel(t *testing.T, ns, name string) *servingv1alpha1.InferenceModel {
	t.Helper()
	m := &servingv1alpha1.InferenceModel{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, m); err != nil {
		t.Fatal(err)
	}
	return m
}

// The product's central promise on a real scheduler: models land on their pool's GPU nodes
// and become Ready; a model too big for any node gets Scheduled=False and no pods; replicas
// beyond capacity stay Pending and the condition says how many fit; delete cleans up.
func TestPlacementOnSimulatedGPUNodes(t *testing.T) {
	ctx := context.Background()
	h100 := map[string]string{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "81559"}
	for _, n := range []string{"gpu-a", "gpu-b"} {
		if err := cluster.AddGPUNode(ctx, n, 8, h100); err != nil {
			t.Fatal(err)
		}
	}
	// A GPU node outside the pool: nothing of ours may land there.
	if err := cluster.AddGPUNode(ctx, "gpu-other", 8, map[string]string{"nvidia.com/gpu.product": "NVIDIA-A10G", "nvidia.com/gpu.memory": "23028"}); err != nil {
		t.Fatal(err)
	}
	apply(t, poolYAML)
	ns := "team-a"
	kubectl(t, "create", "namespace", ns)

	eventually(t, "pool status", func() error {
		pool := &servingv1alpha1.GPUPool{}
		if err := c.Get(ctx, client.ObjectKey{Name: "h100"}, pool); err != nil {
			return err
		}
		if pool.Status.Nodes != 2 || pool.Status.ReadyNodes != 2 || pool.Status.GPUs.Allocatable != 16 {
			return fmt.Errorf("pool status %+v", pool.Status)
		}
		return nil
	})

	t.Run("lands on the pool and becomes Ready", func(t *testing.T) {
		apply(t, modelYAML(ns, "llama", 2, 2, ""))
		kubectl(t, "wait", "--for=condition=Ready", "--timeout=120s", "-n", ns, "inferencemodel/llama")
		pods := podsOf(t, ns, "llama")
		if len(pods) != 2 {
			t.Fatalf("%d pods, want 2", len(pods))
		}
		for _, p := range pods {
			if p.Spec.NodeName != "gpu-a" && p.Spec.NodeName != "gpu-b" {
				t.Errorf("pod %s on %q, outside pool h100", p.Name, p.Spec.NodeName)
			}
			if p.Status.Phase != corev1.PodRunning {
				t.Errorf("pod %s is %s", p.Name, p.Status.Phase)
			}
		}
		m := getModel(t, ns, "llama")
		if m.Status.ReadyReplicas != 2 || m.Status.Placement.EligibleNodes != 2 {
			t.Errorf("status %+v placement %+v", m.Status, m.Status.Placement)
		}
		out := kubectl(t, "get", "im", "-n", ns)
		if !strings.Contains(out, "llama") || !strings.Contains(out, "True") || !strings.Contains(out, "VLLM") {
			t.Errorf("kubectl get im:\n%s", out)
		}
		eventually(t, "pool counts the allocation", func() error {
			pool := &servingv1alpha1.GPUPool{}
			if err := c.Get(ctx, client.ObjectKey{Name: "h100"}, pool); err != nil {
				return err
			}
			if pool.Status.GPUs.Allocated != 4 {
				return fmt.Errorf("allocated %d, want 4", pool.Status.GPUs.Allocated)
			}
			return nil
		})
	})

	t.Run("too big for any node: Scheduled=False and no pods", func(t *testing.T) {
		apply(t, modelYAML(ns, "huge", 16, 1, ""))
		eventually(t, "Scheduled=False", func() error {
			m := getModel(t, ns, "huge")
			cond := meta.FindStatusCondition(m.Status.Conditions, servingv1alpha1.InferenceModelConditionScheduled)
			if cond == nil || cond.Status != metav1.ConditionFalse || cond.Reason != servingv1alpha1.InferenceModelReasonInsufficientGPUs {
				return fmt.Errorf("scheduled = %+v", cond)
			}
			if !strings.Contains(cond.Message, "needs 16") || !strings.Contains(cond.Message, "largest node in pool h100 has 8") {
				return fmt.Errorf("message %q", cond.Message)
			}
			return nil
		})
		if pods := podsOf(t, ns, "huge"); len(pods) != 0 {
			t.Errorf("%d pods for a model that cannot fit", len(pods))
		}
		out := kubectl(t, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=huge")
		if !strings.Contains(out, servingv1alpha1.InferenceModelReasonInsufficientGPUs) {
			t.Errorf("no InsufficientGPUs event:\n%s", out)
		}
	})

	// How many 4-GPU replicas fit depends on where the scheduler put llama's pods (the
	// spread usually puts one on each node, leaving 6 + 6 free: 2 fit; packed: 3 fit).
	fit := 0
	used := map[string]int{}
	for _, p := range podsOf(t, ns, "llama") {
		used[p.Spec.NodeName] += 2
	}
	for _, n := range []string{"gpu-a", "gpu-b"} {
		fit += (8 - used[n]) / 4
	}
	t.Run("replicas beyond capacity stay Pending and the message says how many fit", func(t *testing.T) {
		apply(t, modelYAML(ns, "wide", 4, 5, ""))
		eventually(t, fmt.Sprintf("%d Running, %d Pending", fit, 5-fit), func() error {
			var running, pending int
			for _, p := range podsOf(t, ns, "wide") {
				switch {
				case p.Status.Phase == corev1.PodRunning:
					running++
				case p.Status.Phase == corev1.PodPending && p.Spec.NodeName == "":
					pending++
				}
			}
			if running != fit || pending != 5-fit {
				return fmt.Errorf("%d running, %d pending", running, pending)
			}
			return nil
		})
		// The pods can get there before the manager's status write does (a conflict on it
		// is retried with backoff), so the condition is awaited too.
		var m *servingv1alpha1.InferenceModel
		eventually(t, fmt.Sprintf("Scheduled=%s saying %d of 5 replicas fit", servingv1alpha1.InferenceModelReasonPartiallyPlaced, fit), func() error {
			m = getModel(t, ns, "wide")
			cond := meta.FindStatusCondition(m.Status.Conditions, servingv1alpha1.InferenceModelConditionScheduled)
			if cond == nil || cond.Reason != servingv1alpha1.InferenceModelReasonPartiallyPlaced || !strings.Contains(cond.Message, fmt.Sprintf("%d of 5 replicas fit", fit)) {
				return fmt.Errorf("scheduled = %+v", cond)
			}
			return nil
		})
		if meta.IsStatusConditionTrue(m.Status.Conditions, servingv1alpha1.ConditionReady) {
			t.Error("Ready with 2 replicas Pending")
		}
	})

	t.Run("kubectl scale", func(t *testing.T) {
		kubectl(t, "scale", "-n", ns, "inferencemodel/wide", fmt.Sprintf("--replicas=%d", fit))
		kubectl(t, "wait", "--for=condition=Ready", "--timeout=120s", "-n", ns, "inferencemodel/wide")
		eventually(t, "Pending pods gone", func() error {
			if n := len(podsOf(t, ns, "wide")); n != fit {
				return fmt.Errorf("%d pods", n)
			}
			return nil
		})
	})

	t.Run("delete removes the children", func(t *testing.T) {
		kubectl(t, "delete", "-n", ns, "inferencemodel/llama", "--wait=true", "--timeout=120s")
		eventually(t, "garbage collected", func() error {
			for _, obj := range []client.Object{&appsv1.Deployment{}, &corev1.Service{}, &corev1.ServiceAccount{}} {
				err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "llama"}, obj)
				if !apierrors.IsNotFound(err) {
					return fmt.Errorf("%T still there: %w", obj, err)
				}
			}
			if n := len(podsOf(t, ns, "llama")); n != 0 {
				return fmt.Errorf("%d pods left", n)
			}
			return nil
		})
	})
}
