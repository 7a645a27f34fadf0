//go:build cgo

package gpu

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/dl"
	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

const (
	// defaultLibrary is what go-nvml dlopens when no path is given.
	defaultLibrary = "libnvidia-ml.so.1"
	// maxEventsPerSample bounds how many queued events one Sample drains, so that an
	// event storm cannot make a Sample arbitrarily long; the rest wait for the next one.
	maxEventsPerSample = 256
	mib                = 1 << 20
)

// errClosed is returned by Sample after Close.
var errClosed = fmt.Errorf("%w: prober closed", ErrNVMLUnavailable)

// Open loads libnvidia-ml.so through go-nvml (dlopen at run time, so the binary itself
// does not depend on the library), initialises NVML and starts listening for XID events.
// When the library is missing, the driver is not loaded or NVML cannot be initialised for
// any other reason, the error wraps ErrNVMLUnavailable (and the nvml.Return, so
// errors.Is(err, nvml.ERROR_LIBRARY_NOT_FOUND) works too). Close releases NVML.
func Open(opts ...Option) (Prober, error) {
	o := buildOptions(opts)
	path := defaultLibrary
	var libOpts []nvml.LibraryOption
	if o.libraryPath != "" {
		path = o.libraryPath
		libOpts = append(libOpts, nvml.WithLibraryPath(o.libraryPath))
	}
	p, err := newProber(nvml.New(libOpts...), o)
	if err != nil {
		if errors.Is(err, nvml.ERROR_LIBRARY_NOT_FOUND) {
			// go-nvml turns the dlopen failure into ERROR_LIBRARY_NOT_FOUND and drops the
			// reason; ask the dynamic loader again so the report says which file and why.
			if reason := dlopenError(path); reason != "" {
				err = fmt.Errorf("%w (%s)", err, reason)
			}
		}
		return nil, err // a nil Prober, not a nil *prober in an interface
	}
	return p, nil
}

// NewWithInterface is Open over an existing nvml.Interface, such as one of go-nvml's mock
// servers (pkg/nvml/mock/dgxa100, dgxh100, ...). It calls lib.Init; Close calls
// lib.Shutdown. WithLibraryPath has no effect here.
func NewWithInterface(lib nvml.Interface, opts ...Option) (Prober, error) {
	if lib == nil {
		return nil, fmt.Errorf("%w: nil nvml.Interface", ErrNVMLUnavailable)
	}
	p, err := newProber(lib, buildOptions(opts))
	if err != nil {
		return nil, err
	}
	return p, nil
}

// dlopenError tries to load the library the way go-nvml does and returns the loader's
// message, or "" when it loads now.
func dlopenError(path string) string {
	lib := dl.New(path, dl.RTLD_LAZY|dl.RTLD_GLOBAL)
	if err := lib.Open(); err != nil {
		return err.Error()
	}
	_ = lib.Close()
	return ""
}

type prober struct {
	mu       sync.Mutex
	lib      nvml.Interface
	critical map[uint64]struct{}
	events   nvml.EventSet // nil when the platform has no event support
	closed   bool

	driverVersion string
	cudaVersion   string
	devs          []devState
}

// devState is what the prober keeps per NVML index between samples: the handle and the
// identity strings (which do not change while NVML is initialised, so they are read once
// and shared by every snapshot), whether XID events are registered, the XID history,
// and the names of the MIG devices seen last time.
type devState struct {
	handle     nvml.Device
	identOK    bool
	uuid       string
	name       string
	cc         string
	registered bool

	xidCount    int64
	lastXID     int
	criticalXID bool

	migGen   uint64
	migNames map[string]migEntry // by MIG device UUID
}

type migEntry struct {
	profile  string
	memoryMB uint64 // from the GPU instance profile
	gen      uint64
}

func newProber(lib nvml.Interface, o options) (*prober, error) {
	if ret := lib.Init(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("%w: nvml.Init: %w", ErrNVMLUnavailable, ret)
	}
	p := &prober{lib: lib, critical: o.criticalXIDs}

	// Events are optional: without them XIDs are simply not reported.
	if set, ret := lib.EventSetCreate(); ret == nvml.SUCCESS {
		p.events = set
	}
	p.readSystem()
	// Register the devices for XID events now, so that XIDs between Open and the first
	// Sample are not lost. Failures are retried (and reported) by Sample.
	if n, ret := lib.DeviceGetCount(); ret == nvml.SUCCESS {
		p.resize(n)
		var scratch errNote
		for i := range p.devs {
			p.ensureDevice(i, &scratch)
		}
	}
	return p, nil
}

func (p *prober) readSystem() {
	if p.driverVersion == "" {
		if v, ret := p.lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
			p.driverVersion = v
		}
	}
	if p.cudaVersion == "" {
		if v, ret := p.lib.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS {
			p.cudaVersion = formatCUDAVersion(v)
		}
	}
}

func (p *prober) resize(n int) {
	if n < 0 {
		n = 0
	}
	if n <= len(p.devs) {
		p.devs = p.devs[:n]
		return
	}
	p.devs = append(p.devs, make([]devState, n-len(p.devs))...)
}

// Sample reads every device. It fails only when NVML cannot say how many devices there
// are (or ctx is done, or the prober is closed); any other NVML error is reported on the
// device it concerns.
func (p *prober) Sample(ctx context.Context) (Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return Snapshot{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return Snapshot{}, errClosed
	}
	n, ret := p.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		if unavailable(ret) {
			return Snapshot{}, fmt.Errorf("%w: nvml DeviceGetCount: %w", ErrNVMLUnavailable, ret)
		}
		return Snapshot{}, fmt.Errorf("gpu: nvml DeviceGetCount: %w", ret)
	}
	p.resize(n)
	p.readSystem()
	p.drainEvents()

	snap := Snapshot{
		DriverVersion:     p.driverVersion,
		CUDADriverVersion: p.cudaVersion,
		Devices:           make([]Device, n),
	}
	for i := range snap.Devices {
		if err := ctx.Err(); err != nil {
			return Snapshot{}, err
		}
		p.readDevice(i, &snap.Devices[i])
	}
	return snap, nil
}

// Close frees the event set and shuts NVML down. Closing twice is a no-op.
func (p *prober) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	var errs []error
	if p.events != nil {
		if ret := p.events.Free(); ret != nvml.SUCCESS {
			errs = append(errs, fmt.Errorf("gpu: nvml EventSetFree: %w", ret))
		}
		p.events = nil
	}
	if ret := p.lib.Shutdown(); ret != nvml.SUCCESS {
		errs = append(errs, fmt.Errorf("gpu: nvml Shutdown: %w", ret))
	}
	p.devs = nil
	return errors.Join(errs...)
}

// unavailable reports whether ret means NVML as a whole is gone rather than one device
// being in trouble.
func unavailable(ret nvml.Return) bool {
	switch ret {
	case nvml.ERROR_UNINITIALIZED, nvml.ERROR_DRIVER_NOT_LOADED, nvml.ERROR_LIBRARY_NOT_FOUND,
		nvml.ERROR_LIB_RM_VERSION_MISMATCH:
		return true
	}
	return false
}

// errNote collects the NVML errors of one device in one sample. Its zero value costs
// nothing; only an actual error allocates.
type errNote struct{ b strings.Builder }

// ok reports whether the value a call returned can be used. NOT_SUPPORTED is not an
// error (the field stays zero); every other failure is noted against the device.
func (e *errNote) ok(call string, ret nvml.Return) bool {
	switch ret {
	case nvml.SUCCESS:
		return true
	case nvml.ERROR_NOT_SUPPORTED:
		return false
	}
	e.add(call, ret)
	return false
}

func (e *errNote) add(call string, ret nvml.Return) {
	if e.b.Len() > 0 {
		e.b.WriteString("; ")
	}
	e.b.WriteString(call)
	e.b.WriteString(": ")
	e.b.WriteString(ret.Error())
}

func (e *errNote) empty() bool    { return e.b.Len() == 0 }
func (e *errNote) String() string { return e.b.String() }

// ensureDevice gets the handle and the identity of device i once, and registers it for
// XID events. Whatever fails is noted in errs and tried again next sample.
func (p *prober) ensureDevice(i int, errs *errNote) {
	st := &p.devs[i]
	if st.handle == nil {
		h, ret := p.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS || h == nil {
			if ret == nvml.SUCCESS {
				ret = nvml.ERROR_UNKNOWN
			}
			errs.add("DeviceGetHandleByIndex", ret)
			return
		}
		st.handle = h
	}
	h := st.handle
	if !st.identOK {
		ok := true
		uuid, ret := h.GetUUID()
		if ret == nvml.SUCCESS {
			st.uuid = uuid
		} else if ret != nvml.ERROR_NOT_SUPPORTED {
			errs.add("GetUUID", ret)
			ok = false
		}
		name, ret := h.GetName()
		if ret == nvml.SUCCESS {
			st.name = name
		} else if ret != nvml.ERROR_NOT_SUPPORTED {
			errs.add("GetName", ret)
			ok = false
		}
		major, minor, ret := h.GetCudaComputeCapability()
		if ret == nvml.SUCCESS {
			st.cc = strconv.Itoa(major) + "." + strconv.Itoa(minor)
		} else if ret != nvml.ERROR_NOT_SUPPORTED {
			errs.add("GetCudaComputeCapability", ret)
			ok = false
		}
		st.identOK = ok
	}
	if !st.registered && p.events != nil {
		supported, ret := h.GetSupportedEventTypes()
		switch {
		case ret == nvml.ERROR_NOT_SUPPORTED:
			st.registered = true // nothing to listen to on this device
		case ret != nvml.SUCCESS:
			errs.add("GetSupportedEventTypes", ret)
		case supported&nvml.EventTypeXidCriticalError == 0:
			st.registered = true
		default:
			ret = h.RegisterEvents(nvml.EventTypeXidCriticalError, p.events)
			switch ret {
			case nvml.SUCCESS, nvml.ERROR_NOT_SUPPORTED:
				st.registered = true
			default:
				errs.add("RegisterEvents", ret)
			}
		}
	}
}

// drainEvents takes every queued event off the set without waiting (timeout 0): NVML
// answers ERROR_TIMEOUT at once when the queue is empty.
func (p *prober) drainEvents() {
	if p.events == nil {
		return
	}
	for range maxEventsPerSample {
		e, ret := p.events.Wait(0)
		if ret != nvml.SUCCESS {
			// ERROR_TIMEOUT: queue empty. Anything else (GPU_IS_LOST, UNKNOWN): stop for
			// this sample; the device reads below will report the device itself.
			return
		}
		if e.EventType&nvml.EventTypeXidCriticalError == 0 {
			continue
		}
		i := p.deviceIndexOf(e.Device)
		if i < 0 {
			continue
		}
		st := &p.devs[i]
		st.xidCount++
		st.lastXID = int(e.EventData)
		if _, bad := p.critical[e.EventData]; bad {
			st.criticalXID = true
		}
	}
}

// deviceIndexOf finds which device an event came from: by handle identity, else by
// UUID, else through the parent of a MIG device handle. Only runs per event (rare).
func (p *prober) deviceIndexOf(d nvml.Device) int {
	if d == nil {
		return -1
	}
	if t := reflect.TypeOf(d); t.Comparable() {
		for i := range p.devs {
			if h := p.devs[i].handle; h != nil && reflect.TypeOf(h) == t && h == d {
				return i
			}
		}
	}
	if uuid, ret := d.GetUUID(); ret == nvml.SUCCESS && uuid != "" {
		for i := range p.devs {
			if p.devs[i].uuid == uuid {
				return i
			}
		}
	}
	if isMig, ret := d.IsMigDeviceHandle(); ret == nvml.SUCCESS && isMig {
		if parent, ret := d.GetDeviceHandleFromMigDeviceHandle(); ret == nvml.SUCCESS && parent != nil {
			if isMig, ret := parent.IsMigDeviceHandle(); ret != nvml.SUCCESS || !isMig {
				return p.deviceIndexOf(parent)
			}
		}
	}
	return -1
}

func (p *prober) readDevice(i int, out *Device) {
	var errs errNote
	p.ensureDevice(i, &errs)
	st := &p.devs[i]
	out.Index = i
	out.UUID = st.uuid
	out.Product = st.name
	out.ComputeCapability = st.cc
	out.XIDCount = st.xidCount
	out.LastXID = st.lastXID

	if h := st.handle; h != nil {
		var memTotal uint64
		if mem, ret := h.GetMemoryInfo(); errs.ok("GetMemoryInfo", ret) {
			memTotal = mem.Total
			out.MemoryTotalMiB = int64(mem.Total / mib)
			out.MemoryUsedMiB = int64(mem.Used / mib)
			out.MemoryFreeMiB = int64(mem.Free / mib)
		}
		if u, ret := h.GetUtilizationRates(); errs.ok("GetUtilizationRates", ret) {
			out.UtilizationGPU = int(u.Gpu)
		}
		if t, ret := h.GetTemperature(nvml.TEMPERATURE_GPU); errs.ok("GetTemperature", ret) {
			out.TemperatureC = int(t)
		}
		if mw, ret := h.GetPowerUsage(); errs.ok("GetPowerUsage", ret) {
			out.PowerWatts = float64(mw) / 1000
		}
		if n, ret := h.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC); errs.ok("GetTotalEccErrors", ret) {
			out.ECCUncorrected = int64(n)
		}
		if cur, _, ret := h.GetMigMode(); errs.ok("GetMigMode", ret) {
			out.MIGEnabled = cur == nvml.DEVICE_MIG_ENABLE
		}
		if out.MIGEnabled {
			out.MIGDevices = p.readMIG(st, h, memTotal, &errs)
		} else {
			clear(st.migNames)
		}
	}

	if !errs.empty() {
		out.Err = errs.String()
	}
	out.Healthy = errs.empty() && out.ECCUncorrected == 0 && !st.criticalXID
}

// readMIG lists the MIG devices of a MIG-enabled GPU. The profile name needs a walk from
// the MIG device to its GPU and compute instances and their profiles; it is done once per
// MIG device (by UUID) and remembered until that MIG device disappears.
func (p *prober) readMIG(st *devState, h nvml.Device, parentTotal uint64, errs *errNote) []MIGDevice {
	count, ret := h.GetMaxMigDeviceCount()
	if !errs.ok("GetMaxMigDeviceCount", ret) || count <= 0 {
		return nil
	}
	st.migGen++
	var out []MIGDevice
	for j := range count {
		mh, ret := h.GetMigDeviceHandleByIndex(j)
		if ret == nvml.ERROR_NOT_FOUND || ret == nvml.ERROR_INVALID_ARGUMENT {
			continue // empty slot
		}
		if !errs.ok("GetMigDeviceHandleByIndex", ret) || mh == nil {
			continue
		}
		var m MIGDevice
		if uuid, ret := mh.GetUUID(); errs.ok("MIG GetUUID", ret) {
			m.UUID = uuid
		}
		entry, known := st.migNames[m.UUID]
		if !known || m.UUID == "" {
			entry = resolveMIGProfile(h, mh, parentTotal, errs)
		}
		if m.UUID != "" && entry.profile != "" {
			if st.migNames == nil {
				st.migNames = make(map[string]migEntry, count)
			}
			entry.gen = st.migGen
			st.migNames[m.UUID] = entry
		}
		m.Profile = entry.profile
		if mem, ret := mh.GetMemoryInfo(); errs.ok("MIG GetMemoryInfo", ret) {
			m.MemoryMiB = int64(mem.Total / mib)
		} else {
			m.MemoryMiB = int64(entry.memoryMB)
		}
		if out == nil {
			out = make([]MIGDevice, 0, count)
		}
		out = append(out, m)
	}
	for uuid, e := range st.migNames {
		if e.gen != st.migGen {
			delete(st.migNames, uuid)
		}
	}
	return out
}

// resolveMIGProfile names the profile of MIG device mig on GPU parent, e.g. "3g.40gb",
// "1c.3g.20gb" or "1g.10gb+me", from the GPU instance and compute instance profile info.
// NVML's profile IDs (GpuInstanceInfo.ProfileId) are not the GPU_INSTANCE_PROFILE_*
// indexes, so the profile tables are searched for the matching Id.
func resolveMIGProfile(parent, mig nvml.Device, parentTotal uint64, errs *errNote) migEntry {
	giID, ret := mig.GetGpuInstanceId()
	if !errs.ok("MIG GetGpuInstanceId", ret) {
		return migEntry{}
	}
	ciID, ret := mig.GetComputeInstanceId()
	if !errs.ok("MIG GetComputeInstanceId", ret) {
		return migEntry{}
	}
	gi, ret := parent.GetGpuInstanceById(giID)
	if !errs.ok("GetGpuInstanceById", ret) || gi == nil {
		return migEntry{}
	}
	giInfo, ret := gi.GetInfo()
	if !errs.ok("GpuInstance GetInfo", ret) {
		return migEntry{}
	}
	ci, ret := gi.GetComputeInstanceById(ciID)
	if !errs.ok("GetComputeInstanceById", ret) || ci == nil {
		return migEntry{}
	}
	ciInfo, ret := ci.GetInfo()
	if !errs.ok("ComputeInstance GetInfo", ret) {
		return migEntry{}
	}

	giIndex := -1
	var giProfile nvml.GpuInstanceProfileInfo
	for idx := range nvml.GPU_INSTANCE_PROFILE_COUNT {
		info, ret := parent.GetGpuInstanceProfileInfo(idx)
		if ret == nvml.SUCCESS && info.Id == giInfo.ProfileId {
			giIndex, giProfile = idx, info
			break
		}
	}
	if giIndex < 0 {
		return migEntry{}
	}
	var ciSlices uint32
	found := false
	for idx := 0; idx < nvml.COMPUTE_INSTANCE_PROFILE_COUNT && !found; idx++ {
		for eng := range nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_COUNT {
			info, ret := gi.GetComputeInstanceProfileInfo(idx, eng)
			if ret == nvml.SUCCESS && info.Id == ciInfo.ProfileId {
				ciSlices, found = info.SliceCount, true
				break
			}
		}
	}
	if !found {
		ciSlices = giProfile.SliceCount
	}
	gb := migMemorySizeGB(parentTotal, giProfile.MemorySizeMB)
	return migEntry{
		profile:  migProfileName(ciSlices, giProfile.SliceCount, gb, migProfileSuffix(giIndex)),
		memoryMB: giProfile.MemorySizeMB,
	}
}

// migProfileSuffix is the attribute part of a profile name, from the GPU instance profile
// index, as nvidia-smi and go-nvlib spell it.
func migProfileSuffix(giProfileIndex int) string {
	switch giProfileIndex {
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, nvml.GPU_INSTANCE_PROFILE_2_SLICE_REV1:
		return "+me"
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_ALL_ME, nvml.GPU_INSTANCE_PROFILE_2_SLICE_ALL_ME:
		return "+me.all"
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_2_SLICE_GFX,
		nvml.GPU_INSTANCE_PROFILE_3_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_4_SLICE_GFX:
		return "+gfx"
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_NO_ME, nvml.GPU_INSTANCE_PROFILE_2_SLICE_NO_ME:
		return "-me"
	}
	return ""
}
