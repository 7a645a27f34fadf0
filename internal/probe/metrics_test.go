package probe

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/helixflow/helixflow/internal/gpu"
)

func TestMetricsObserve(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	snap := h100s(2)
	snap.Devices[1].Healthy, snap.Devices[1].XIDCount, snap.Devices[1].PowerWatts, snap.Devices[1].TemperatureC = false, 3, 312.5, 71
	m.Observe(snap, nil)
	want := `
# HELP helixflow_gpu_memory_used_bytes Framebuffer memory in use.
# TYPE helixflow_gpu_memory_used_bytes gauge
helixflow_gpu_memory_used_bytes{gpu="0",model_name="NVIDIA H100 80GB HBM3",uuid="GPU-0"} 0
helixflow_gpu_memory_used_bytes{gpu="1",model_name="NVIDIA H100 80GB HBM3",uuid="GPU-1"} 1.048576e+09
# HELP helixflow_gpu_healthy 1 when the GPU is healthy, 0 otherwise.
# TYPE helixflow_gpu_healthy gauge
helixflow_gpu_healthy{gpu="0",model_name="NVIDIA H100 80GB HBM3",uuid="GPU-0"} 1
helixflow_gpu_healthy{gpu="1",model_name="NVIDIA H100 80GB HBM3",uuid="GPU-1"} 0
# HELP helixflow_gpu_xid_errors_total XID errors seen since the probe started.
# TYPE helixflow_gpu_xid_errors_total counter
helixflow_gpu_xid_errors_total{gpu="0",model_name="NVIDIA H100 80GB HBM3",uuid="GPU-0"} 0
helixflow_gpu_xid_errors_total{gpu="1",model_name="NVIDIA H100 80GB HBM3",uuid="GPU-1"} 3
# HELP helixflow_gpu_utilization_ratio Fraction of time a kernel ran over the last sample period.
# TYPE helixflow_gpu_utilization_ratio gauge
helixflow_gpu_utilization_ratio{gpu="0",model_name="NVIDIA H100 80GB HBM3",uuid="GPU-0"} 0.4
helixflow_gpu_utilization_ratio{gpu="1",model_name="NVIDIA H100 80GB HBM3",uuid="GPU-1"} 0.41
# HELP helixflow_gpu_nvml_up 1 when NVML answered the last sample.
# TYPE helixflow_gpu_nvml_up gauge
helixflow_gpu_nvml_up 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "helixflow_gpu_memory_used_bytes", "helixflow_gpu_healthy",
		"helixflow_gpu_xid_errors_total", "helixflow_gpu_utilization_ratio", "helixflow_gpu_nvml_up"); err != nil {
		t.Error(err)
	}
	// Samples report running counts: the counter follows them, and a count that started
	// again from zero (the device opened again) adds all of itself.
	for _, n := range []int64{5, 5, 2} {
		snap.Devices[1].XIDCount = n
		m.Observe(snap, nil)
	}
	if got := testutil.ToFloat64(m.xid.WithLabelValues("1", "GPU-1", "NVIDIA H100 80GB HBM3")); got != 7 {
		t.Errorf("xid_errors_total after counts 3, 5, 5, 2 = %v, want 7", got)
	}
	m.Observe(gpu.Snapshot{}, errors.New("boom"))
	if got := testutil.ToFloat64(m.up); got != 0 {
		t.Errorf("nvml_up after a failed sample = %v", got)
	}
}
