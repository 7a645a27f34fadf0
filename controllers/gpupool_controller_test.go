package controllers

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

func waitPool(t *testing.T, check func(*servingv1alpha1.GPUPool) error) {
	t.Helper()
	pool := &servingv1alpha1.GPUPool{}
	eventually(t, "pool inventory", func() error {
		if err := get(pool, "", "inventory"); err != nil {
			return err
		}
		return check(pool)
	})
}

func TestGPUPoolStatus(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	gpuPool(t, "inventory", nil)
	waitPool(t, func(p *servingv1alpha1.GPUPool) error {
		c := meta.FindStatusCondition(p.Status.Conditions, servingv1alpha1.ConditionReady)
		if c == nil || c.Reason != servingv1alpha1.GPUPoolReasonNoMatchingNodes {
			return fmt.Errorf("ready = %+v", c)
		}
		return nil
	})

	// Nodes appearing are picked up through the node watch.
	gpuNode(t, "inv-a", 8, 81920, map[string]string{"pool": "inventory"})
	b := gpuNode(t, "inv-b", 4, 81920, map[string]string{"pool": "inventory"})
	gpuNode(t, "other", 8, 81920, map[string]string{"pool": "elsewhere"})
	waitPool(t, func(p *servingv1alpha1.GPUPool) error {
		want := servingv1alpha1.GPUPoolStatus{Nodes: 2, ReadyNodes: 2, GPUs: servingv1alpha1.GPUCounts{Capacity: 12, Allocatable: 12}}
		if p.Status.Nodes != want.Nodes || p.Status.ReadyNodes != want.ReadyNodes || p.Status.GPUs != want.GPUs {
			return fmt.Errorf("status = %+v", p.Status)
		}
		if len(p.Status.Products) != 1 || p.Status.Products[0] != (servingv1alpha1.GPUProduct{Product: "NVIDIA-H100-80GB-HBM3", MemoryMiB: 81920, Count: 12, Healthy: 12}) {
			return fmt.Errorf("products = %+v", p.Status.Products)
		}
		if !meta.IsStatusConditionTrue(p.Status.Conditions, servingv1alpha1.ConditionReady) {
			return fmt.Errorf("not Ready: %+v", p.Status.Conditions)
		}
		return nil
	})

	// A GPUNode report replaces the labels as the source of products and health.
	report := &servingv1alpha1.GPUNode{ObjectMeta: metav1.ObjectMeta{Name: "inv-b"}}
	create(t, report)
	t.Cleanup(func() { _ = env.Client.Delete(ctx, report) })
	report.Status = servingv1alpha1.GPUNodeStatus{
		LastProbeTime: &metav1.Time{Time: time.Now()}, GPUCount: 4,
		Devices: []servingv1alpha1.GPUDevice{
			{Index: 0, Product: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559, Healthy: true},
			{Index: 1, Product: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559, Healthy: true},
			{Index: 2, Product: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559, Healthy: true},
			{Index: 3, Product: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559, Healthy: false, LastXID: 79},
		},
	}
	if err := env.Client.Status().Update(ctx, report); err != nil {
		t.Fatal(err)
	}
	waitPool(t, func(p *servingv1alpha1.GPUPool) error {
		var probed servingv1alpha1.GPUProduct
		for _, pr := range p.Status.Products {
			if pr.Product == "NVIDIA H100 80GB HBM3" {
				probed = pr
			}
		}
		if probed.Count != 4 || probed.Healthy != 3 || probed.MemoryMiB != 81559 {
			return fmt.Errorf("products = %+v", p.Status.Products)
		}
		c := meta.FindStatusCondition(p.Status.Conditions, servingv1alpha1.GPUPoolConditionProbed)
		if c == nil || c.Reason != servingv1alpha1.GPUPoolReasonReportsMissing || c.Message != "1 of 2 nodes have a GPUNode report newer than 3m0s" {
			return fmt.Errorf("probed = %+v", c)
		}
		return nil
	})

	// A node going NotReady takes its GPUs out of allocatable.
	b.Status.Conditions[0].Status = corev1.ConditionFalse
	if err := env.Client.Status().Update(ctx, b); err != nil {
		t.Fatal(err)
	}
	waitPool(t, func(p *servingv1alpha1.GPUPool) error {
		if p.Status.ReadyNodes != 1 || p.Status.GPUs.Allocatable != 8 || p.Status.GPUs.Capacity != 12 {
			return fmt.Errorf("status = %+v", p.Status)
		}
		return nil
	})
}
