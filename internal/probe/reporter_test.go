package probe

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/gpu"
	"github.com/helixflow/helixflow/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Run(m, &env)) }

// scriptedProber is a test double of the NVML prober: it returns the snapshots a test
// scripts. The NVML implementation itself is tested on go-nvml's mock servers in
// internal/gpu.
type scriptedProber struct{ snap *gpu.Snapshot }

func (p *scriptedProber) Sample(context.Context) (gpu.Snapshot, error) { return *p.snap, nil }
func (p *scriptedProber) Close() error                                 { return nil }

func h100s(n int) gpu.Snapshot {
	s := gpu.Snapshot{DriverVersion: "550.54.15", CUDADriverVersion: "12.4"}
	for i := range n {
		s.Devices = append(s.Devices, gpu.Device{Index: i, UUID: fmt.Sprintf("GPU-%d", i), Product: "NVIDIA H100 80GB HBM3",
			MemoryTotalMiB: 81559, MemoryUsedMiB: int64(i * 1000), ComputeCapability: "9.0", UtilizationGPU: 40 + i, Healthy: true})
	}
	return s
}

// countingClient counts the status writes that reach the API server.
func countingClient(t *testing.T, writes *atomic.Int32) client.Client {
	t.Helper()
	c, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return interceptor.NewClient(c, interceptor.Funcs{
		SubResourceApply: func(ctx context.Context, c client.Client, sub string, obj runtime.ApplyConfiguration, opts ...client.SubResourceApplyOption) error {
			writes.Add(1)
			return c.SubResource(sub).Apply(ctx, obj, opts...)
		},
	})
}

// Over a simulated hour at a 60 s interval, an unchanged node is written once plus a
// heartbeat every 5 minutes; a change is written at once; utilisation and memory-used
// churn (metrics only) writes nothing.
func TestWritesOnlyOnChangeAndHeartbeat(t *testing.T) {
	ctx := context.Background()
	var writes atomic.Int32
	clock := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	snap := h100s(8)
	r := &Reporter{
		Client: countingClient(t, &writes), NodeName: "node-hour",
		Open: func() (gpu.Prober, error) { return &scriptedProber{snap: &snap}, nil },
		Now:  func() time.Time { return clock },
	}
	for minute := 0; minute < 60; minute++ {
		// Metrics-only churn every minute.
		snap.Devices[0].UtilizationGPU = minute % 100
		snap.Devices[0].MemoryUsedMiB = int64(minute * 10)
		if minute == 30 {
			snap.Devices[3].Healthy = false
			snap.Devices[3].LastXID = 79
		}
		if _, err := r.Tick(ctx); err != nil {
			t.Fatalf("minute %d: %v", minute, err)
		}
		clock = clock.Add(time.Minute)
	}
	// Minute 0: first write. Heartbeats at 5, 10, 15, 20, 25. Minute 30: the change, which
	// restarts the heartbeat: 35, 40, 45, 50, 55. Twelve writes, not sixty.
	if got := writes.Load(); got != 12 {
		t.Errorf("%d status writes over an hour, want 12", got)
	}
	node := &servingv1alpha1.GPUNode{}
	if err := env.Client.Get(ctx, client.ObjectKey{Name: "node-hour"}, node); err != nil {
		t.Fatal(err)
	}
	if node.Status.GPUCount != 8 || len(node.Status.Devices) != 8 || node.Status.Devices[3].Healthy || node.Status.Devices[3].LastXID != 79 {
		t.Errorf("report = %+v", node.Status)
	}
	c := meta.FindStatusCondition(node.Status.Conditions, servingv1alpha1.ConditionReady)
	if c == nil || c.Reason != servingv1alpha1.GPUNodeReasonUnhealthyDevices || c.Message != "1 of 8 GPUs unhealthy" {
		t.Errorf("ready = %+v", c)
	}
	if want := time.Date(2026, 11, 25, 12, 55, 0, 0, time.UTC); !node.Status.LastProbeTime.Time.Equal(want) {
		t.Errorf("lastProbeTime = %v, want the last heartbeat %v", node.Status.LastProbeTime, want)
	}
	if node.Labels[servingv1alpha1.LabelManagedBy] != servingv1alpha1.ManagedByValue {
		t.Errorf("labels = %v", node.Labels)
	}
}

// Without libnvidia-ml.so the probe reports NVMLUnavailable instead of crashing, and picks
// the driver up without a restart once it can be opened.
func TestNVMLUnavailableThenAvailable(t *testing.T) {
	ctx := context.Background()
	available := false
	snap := h100s(2)
	r := &Reporter{
		Client: env.Client, NodeName: "node-nodriver",
		Open: func() (gpu.Prober, error) {
			if !available {
				return nil, fmt.Errorf("loading libnvidia-ml.so.1: %w", gpu.ErrNVMLUnavailable)
			}
			return &scriptedProber{snap: &snap}, nil
		},
	}
	check := func(status, reason string) {
		t.Helper()
		if _, err := r.Tick(ctx); err != nil {
			t.Fatal(err)
		}
		node := &servingv1alpha1.GPUNode{}
		if err := env.Client.Get(ctx, client.ObjectKey{Name: "node-nodriver"}, node); err != nil {
			t.Fatal(err)
		}
		c := meta.FindStatusCondition(node.Status.Conditions, servingv1alpha1.ConditionReady)
		if c == nil || string(c.Status) != status || c.Reason != reason {
			t.Fatalf("ready = %+v, want %s/%s", c, status, reason)
		}
	}
	check("False", servingv1alpha1.GPUNodeReasonNVMLUnavailable)
	available = true
	check("True", servingv1alpha1.GPUNodeReasonProbed)
}
