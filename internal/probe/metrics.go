package probe

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/helixflow/helixflow/internal/gpu"
)

// Metrics are the probe's GPU metrics. Names follow Prometheus conventions (base units);
// each maps to a DCGM exporter field so dashboards can be ported:
//
//	helixflow_gpu_memory_used_bytes     DCGM_FI_DEV_FB_USED (MiB)
//	helixflow_gpu_memory_total_bytes    DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE (MiB)
//	helixflow_gpu_utilization_ratio     DCGM_FI_DEV_GPU_UTIL (percent)
//	helixflow_gpu_temperature_celsius   DCGM_FI_DEV_GPU_TEMP
//	helixflow_gpu_power_watts           DCGM_FI_DEV_POWER_USAGE
//	helixflow_gpu_xid_errors_total      DCGM_FI_DEV_XID_ERRORS (DCGM reports the last XID code;
//	                                    this counts them, the last code is in the GPUNode)
//	helixflow_gpu_healthy               no DCGM equivalent (1 healthy, 0 not)
//	helixflow_gpu_nvml_up               no DCGM equivalent (1 when NVML answered the last sample)
//
// Labels: gpu (NVML index), uuid, model_name, as the DCGM exporter names them.
type Metrics struct {
	memUsed, memTotal, util, temp, power, healthy *prometheus.GaugeVec
	xid                                           *prometheus.CounterVec
	up                                            prometheus.Gauge
	// devices caches each device's gauges, so a steady-state sample allocates nothing.
	devices map[deviceKey]*deviceGauges
}

type deviceKey struct {
	index         int
	uuid, product string
}

type deviceGauges struct {
	memUsed, memTotal, util, temp, power, healthy prometheus.Gauge
	xid                                           prometheus.Counter
	// xidSeen is the device's XIDCount the counter has been advanced to.
	xidSeen int64
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	labels := []string{"gpu", "uuid", "model_name"}
	gauge := func(name, help string) *prometheus.GaugeVec {
		g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "helixflow", Subsystem: "gpu", Name: name, Help: help}, labels)
		reg.MustRegister(g)
		return g
	}
	m := &Metrics{
		memUsed:  gauge("memory_used_bytes", "Framebuffer memory in use."),
		memTotal: gauge("memory_total_bytes", "Framebuffer memory in total."),
		util:     gauge("utilization_ratio", "Fraction of time a kernel ran over the last sample period."),
		temp:     gauge("temperature_celsius", "GPU temperature."),
		power:    gauge("power_watts", "Power draw."),
		xid: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "helixflow", Subsystem: "gpu", Name: "xid_errors_total",
			Help: "XID errors seen since the probe started."}, labels),
		healthy: gauge("healthy", "1 when the GPU is healthy, 0 otherwise."),
		up:      prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "helixflow", Subsystem: "gpu", Name: "nvml_up", Help: "1 when NVML answered the last sample."}),
	}
	reg.MustRegister(m.xid, m.up)
	m.devices = map[deviceKey]*deviceGauges{}
	return m
}

// Observe records one sample.
func (m *Metrics) Observe(snap gpu.Snapshot, err error) {
	if err != nil {
		m.up.Set(0)
		return
	}
	m.up.Set(1)
	for _, d := range snap.Devices {
		g := m.gauges(d)
		g.memUsed.Set(float64(d.MemoryUsedMiB << 20))
		g.memTotal.Set(float64(d.MemoryTotalMiB << 20))
		g.util.Set(float64(d.UtilizationGPU) / 100)
		g.temp.Set(float64(d.TemperatureC))
		g.power.Set(d.PowerWatts)
		g.countXIDs(d.XIDCount)
		h := 0.0
		if d.Healthy {
			h = 1
		}
		g.healthy.Set(h)
	}
}

// countXIDs advances the XID counter to the device's running count (a sample reports
// totals, not increments). A count below the last one started again from zero (the device
// was opened again): all of it is new.
func (g *deviceGauges) countXIDs(total int64) {
	added := total - g.xidSeen
	if added < 0 {
		added = total
	}
	g.xid.Add(float64(added))
	g.xidSeen = total
}

func (m *Metrics) gauges(d gpu.Device) *deviceGauges {
	key := deviceKey{index: d.Index, uuid: d.UUID, product: d.Product}
	if g, ok := m.devices[key]; ok {
		return g
	}
	l := []string{strconv.Itoa(d.Index), d.UUID, d.Product}
	g := &deviceGauges{
		memUsed: m.memUsed.WithLabelValues(l...), memTotal: m.memTotal.WithLabelValues(l...),
		util: m.util.WithLabelValues(l...), temp: m.temp.WithLabelValues(l...), power: m.power.WithLabelValues(l...),
		xid: m.xid.WithLabelValues(l...), healthy: m.healthy.WithLabelValues(l...),
	}
	m.devices[key] = g
	return g
}
