// Package gpu reads what a node's NVIDIA GPUs are and how they are doing, through NVML
// (github.com/NVIDIA/go-nvml). NVML is loaded at run time: on a machine without
// libnvidia-ml.so, Open returns ErrNVMLUnavailable instead of crashing, so the probe can
// say so in its GPUNode report. Nothing here forks nvidia-smi or creates a CUDA context.
package gpu

import (
	"context"
	"errors"
)

// ErrNVMLUnavailable means libnvidia-ml.so could not be loaded or initialised.
var ErrNVMLUnavailable = errors.New("NVML unavailable")

// Snapshot is one sample of a node's GPUs.
type Snapshot struct {
	// DriverVersion is the kernel driver version, e.g. "550.54.15".
	DriverVersion string
	// CUDADriverVersion is the highest CUDA version the driver supports, e.g. "12.4".
	CUDADriverVersion string
	// Devices by NVML index. A device NVML failed to read is present with Healthy=false
	// and Err set; the others are unaffected.
	Devices []Device
}

// Device is one physical GPU.
type Device struct {
	Index             int
	UUID              string
	Product           string
	MemoryTotalMiB    int64
	MemoryUsedMiB     int64
	MemoryFreeMiB     int64
	ComputeCapability string // "9.0"
	// UtilizationGPU is the percentage of time a kernel ran over the last sample period.
	UtilizationGPU int
	TemperatureC   int
	PowerWatts     float64
	MIGEnabled     bool
	MIGDevices     []MIGDevice
	// ECCUncorrected is the volatile count of uncorrected ECC errors (0 when ECC is off).
	ECCUncorrected int64
	// XIDCount is the number of XID events seen since the probe started; LastXID the latest.
	XIDCount int64
	LastXID  int
	// Healthy is false after an uncorrected ECC error, a critical XID, or a read error.
	Healthy bool
	// Err says why the device could not be read fully; empty when it was.
	Err string
}

// MIGDevice is one Multi-Instance GPU partition.
type MIGDevice struct {
	Profile   string // "3g.40gb"
	UUID      string
	MemoryMiB int64
}

// Prober samples the node's GPUs. Implementations are safe for use by one goroutine.
type Prober interface {
	// Sample reads every device. It returns an error only when nothing could be read;
	// per-device failures are reported in the devices.
	Sample(ctx context.Context) (Snapshot, error)
	// Close releases NVML.
	Close() error
}
