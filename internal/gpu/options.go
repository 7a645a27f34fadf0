package gpu

import (
	"math"
	"slices"
	"strconv"
)

// Option configures Open and NewWithInterface.
type Option func(*options)

type options struct {
	libraryPath  string
	criticalXIDs map[uint64]struct{}
}

func buildOptions(opts []Option) options {
	o := options{criticalXIDs: xidSet(defaultCriticalXIDs)}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	return o
}

// WithLibraryPath makes Open load NVML from path instead of the default
// "libnvidia-ml.so.1" (searched the usual dlopen way). NewWithInterface ignores it.
func WithLibraryPath(path string) Option {
	return func(o *options) { o.libraryPath = path }
}

// WithCriticalXIDs replaces the set of XIDs that make a device unhealthy (by default
// DefaultCriticalXIDs). Every other XID is still counted in Device.XIDCount and
// Device.LastXID. With no arguments, no XID makes a device unhealthy.
func WithCriticalXIDs(xids ...int) Option {
	return func(o *options) { o.criticalXIDs = xidSet(xids) }
}

// defaultCriticalXIDs are the XIDs that mean the GPU itself (not the program that was
// running on it) is in trouble and needs a reset, a node drain or an RMA, following
// NVIDIA's "XID Errors" guide (docs.nvidia.com/deploy/xid-errors):
//
//	48  double-bit (uncorrectable) ECC error
//	62  internal micro-controller halt (firmware hang; GPU reset needed)
//	63  ECC page retirement / row-remapping event recorded (pending until reset)
//	64  ECC page retirement / row-remapping recording failure
//	74  NVLink error (link down or replay/recovery failure)
//	79  GPU has fallen off the bus
//	94  contained ECC error (memory poisoned; reset recommended)
//	95  uncontained ECC error (every process on the GPU affected; reset required)
//	119 GSP RPC timeout (GPU System Processor unresponsive)
//	120 GSP error
//
// The XIDs a user program causes by itself (13 graphics engine exception, 31 MMU fault,
// 43 GPU stopped processing, 45 preemptive cleanup, 68 video processor exception,
// 109 context switch timeout) are counted but do not make the device unhealthy: NVIDIA's
// device plugin skips the same ones, and draining a node because one job had an illegal
// memory access would be wrong. A critical XID makes the device unhealthy for the life of
// the Prober, because these conditions do not clear without a GPU reset (which in
// practice restarts the probe as well).
var defaultCriticalXIDs = []int{48, 62, 63, 64, 74, 79, 94, 95, 119, 120}

// DefaultCriticalXIDs returns the XIDs that make a device unhealthy unless
// WithCriticalXIDs says otherwise (see the package documentation of the list).
func DefaultCriticalXIDs() []int { return slices.Clone(defaultCriticalXIDs) }

func xidSet(xids []int) map[uint64]struct{} {
	m := make(map[uint64]struct{}, len(xids))
	for _, x := range xids {
		if x >= 0 {
			m[uint64(x)] = struct{}{}
		}
	}
	return m
}

// formatCUDAVersion turns NVML's CUDA driver version integer (1000*major + 10*minor,
// e.g. 12040) into "12.4". Zero or negative means unknown and gives "".
func formatCUDAVersion(v int) string {
	if v <= 0 {
		return ""
	}
	return strconv.Itoa(v/1000) + "." + strconv.Itoa((v%1000)/10)
}

// migMemorySizeGB is the memory part of a MIG profile name ("3g.40gb" → 40), computed
// the way NVIDIA's go-nvlib (and so the device plugin and mig-parted) computes it: the
// profile's share of the GPU's memory, rounded up to an eighth, times the GPU's memory in
// whole GiB. Plain rounding of memory sizes would give odd names such as "1g.9gb" for
// the 9856 MiB of an H100 1-slice instance.
func migMemorySizeGB(deviceTotalBytes, migMemoryMiB uint64) uint64 {
	const oneMiB = 1 << 20
	const oneGiB = 1 << 30
	if deviceTotalBytes == 0 {
		return uint64(math.Round(float64(migMemoryMiB) / 1024))
	}
	frac := float64(migMemoryMiB) * oneMiB / float64(deviceTotalBytes)
	frac = math.Ceil(frac*8) / 8
	totalGB := float64((deviceTotalBytes + oneGiB - 1) / oneGiB)
	return uint64(math.Round(frac * totalGB))
}

// migProfileName formats a MIG profile the way nvidia-smi and the device plugin name it:
// "<g>g.<gb>gb" when the compute instance spans the whole GPU instance, otherwise
// "<c>c.<g>g.<gb>gb", followed by an attribute suffix such as "+me".
func migProfileName(ciSlices, giSlices uint32, memGB uint64, suffix string) string {
	b := make([]byte, 0, 24)
	if ciSlices != giSlices {
		b = strconv.AppendUint(b, uint64(ciSlices), 10)
		b = append(b, "c."...)
	}
	b = strconv.AppendUint(b, uint64(giSlices), 10)
	b = append(b, "g."...)
	b = strconv.AppendUint(b, memGB, 10)
	b = append(b, "gb"...)
	b = append(b, suffix...)
	return string(b)
}
