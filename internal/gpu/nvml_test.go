//go:build cgo

package gpu

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// ---------------------------------------------------------------------------------------
// fakeNode: go-nvml's dgx mock servers, completed.
//
// The dgx mocks describe devices (name, UUID, memory, compute capability, MIG mode) and
// the MIG profile tables, and really create GPU and compute instances. They leave
// unimplemented (moq methods that panic when called) what a probe reads beyond that:
// temperature, power, utilization, ECC counters, event sets, and the MIG device handles
// NVML hands out for the compute instances. fakeNode fills exactly those in, on top of
// the mock's own state: MIG device handles are built from the GPU/compute instances the
// mock created, with the memory of the mock's GPU instance profile.
// ---------------------------------------------------------------------------------------

type fakeNode struct {
	srv *server.Server
	cfg gpus.Config // the GPU model of the mock (all dgx mocks are homogeneous)

	mu         sync.Mutex
	queue      []nvml.EventData
	events     *mock.EventSet
	ecc        map[int]uint64
	registered map[int]uint64
	migHandles map[*server.ComputeInstance]*mock.Device
	migLists   map[*server.Device]migList
}

// Telemetry the fake reports for device i (not part of the mock's description).
func fakeTempC(i int) int       { return 30 + i }
func fakePowerMW(i int) uint32  { return uint32(100_000 + 1000*i + 500) } // 100.5 W + i
func fakeUtilization(i int) int { return 10 * i }

func newFakeNode(t testing.TB, srv *server.Server) *fakeNode {
	t.Helper()
	f := &fakeNode{
		srv:        srv,
		cfg:        srv.Devices[0].(*server.Device).Config,
		ecc:        map[int]uint64{},
		registered: map[int]uint64{},
		migHandles: map[*server.ComputeInstance]*mock.Device{},
		migLists:   map[*server.Device]migList{},
	}
	f.events = &mock.EventSet{
		WaitFunc: func(uint32) (nvml.EventData, nvml.Return) {
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.queue) == 0 {
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			}
			e := f.queue[0]
			f.queue = f.queue[1:]
			return e, nvml.SUCCESS
		},
		FreeFunc: func() nvml.Return { return nvml.SUCCESS },
	}
	srv.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return f.events, nvml.SUCCESS }

	for i, nd := range srv.Devices {
		d := nd.(*server.Device)
		d.GetTemperatureFunc = func(s nvml.TemperatureSensors) (uint32, nvml.Return) {
			if s != nvml.TEMPERATURE_GPU {
				return 0, nvml.ERROR_INVALID_ARGUMENT
			}
			return uint32(fakeTempC(i)), nvml.SUCCESS
		}
		d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return fakePowerMW(i), nvml.SUCCESS }
		d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
			if mode, _, _ := d.GetMigMode(); mode == nvml.DEVICE_MIG_ENABLE {
				return nvml.Utilization{}, nvml.ERROR_NOT_SUPPORTED // as on real MIG GPUs
			}
			return nvml.Utilization{Gpu: uint32(fakeUtilization(i))}, nvml.SUCCESS
		}
		d.GetTotalEccErrorsFunc = func(typ nvml.MemoryErrorType, counter nvml.EccCounterType) (uint64, nvml.Return) {
			if typ != nvml.MEMORY_ERROR_TYPE_UNCORRECTED || counter != nvml.VOLATILE_ECC {
				return 0, nvml.ERROR_INVALID_ARGUMENT
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.ecc[i], nvml.SUCCESS
		}
		d.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) {
			return nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError, nvml.SUCCESS
		}
		d.RegisterEventsFunc = func(types uint64, set nvml.EventSet) nvml.Return {
			if set != f.events {
				return nvml.ERROR_INVALID_ARGUMENT
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			f.registered[i] |= types
			return nvml.SUCCESS
		}
		// At most one MIG device per slice: the 1-slice profile's instance count.
		d.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) {
			return int(d.Config.MIGProfiles.GpuInstanceProfiles[nvml.GPU_INSTANCE_PROFILE_1_SLICE].InstanceCount), nvml.SUCCESS
		}
		d.GetMigDeviceHandleByIndexFunc = func(j int) (nvml.Device, nvml.Return) {
			migs := f.migDevices(d)
			if j < 0 || j >= len(migs) {
				return nil, nvml.ERROR_NOT_FOUND
			}
			return migs[j], nvml.SUCCESS
		}
		d.GetGpuInstanceByIdFunc = func(id int) (nvml.GpuInstance, nvml.Return) {
			d.RLock()
			defer d.RUnlock()
			for gi := range d.GpuInstances {
				if int(gi.Info.Id) == id {
					f.completeGI(gi)
					return gi, nvml.SUCCESS
				}
			}
			return nil, nvml.ERROR_NOT_FOUND
		}
	}
	return f
}

func (f *fakeNode) dev(i int) *server.Device { return f.srv.Devices[i].(*server.Device) }

func (f *fakeNode) completeGI(gi *server.GpuInstance) {
	gi.GetComputeInstanceByIdFunc = func(id int) (nvml.ComputeInstance, nvml.Return) {
		gi.RLock()
		defer gi.RUnlock()
		for ci := range gi.ComputeInstances {
			if int(ci.Info.Id) == id {
				return ci, nvml.SUCCESS
			}
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
}

// migDevices returns the MIG device handles of d in NVML's order (GPU instance, then
// compute instance), one per compute instance the mock holds; handles are stable. The
// list is cached until the mock's instances change, so that the fake does not dominate
// the MIG benchmark's allocations.
func (f *fakeNode) migDevices(d *server.Device) []nvml.Device {
	d.RLock()
	key := [3]int{int(d.GpuInstanceCounter), len(d.GpuInstances), 0}
	for gi := range d.GpuInstances {
		gi.RLock()
		key[2] += len(gi.ComputeInstances) + 1000*int(gi.ComputeInstanceCounter)
		gi.RUnlock()
	}
	d.RUnlock()
	f.mu.Lock()
	if c, ok := f.migLists[d]; ok && c.key == key {
		f.mu.Unlock()
		return c.list
	}
	f.mu.Unlock()

	type pair struct {
		gi *server.GpuInstance
		ci *server.ComputeInstance
	}
	var pairs []pair
	d.RLock()
	for gi := range d.GpuInstances {
		gi.RLock()
		for ci := range gi.ComputeInstances {
			pairs = append(pairs, pair{gi, ci})
		}
		gi.RUnlock()
	}
	d.RUnlock()
	slices.SortFunc(pairs, func(a, b pair) int {
		if a.gi.Info.Id != b.gi.Info.Id {
			return int(a.gi.Info.Id) - int(b.gi.Info.Id)
		}
		return int(a.ci.Info.Id) - int(b.ci.Info.Id)
	})
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]nvml.Device, 0, len(pairs))
	for _, p := range pairs {
		h, ok := f.migHandles[p.ci]
		if !ok {
			giID, ciID := int(p.gi.Info.Id), int(p.ci.Info.Id)
			memMiB := d.Config.MIGProfiles.GpuInstanceProfiles[int(p.gi.Info.ProfileId)].MemorySizeMB
			uuid := fmt.Sprintf("MIG-%s-%d-%d", strings.TrimPrefix(d.UUID, "GPU-"), giID, ciID)
			h = &mock.Device{
				GetUUIDFunc: func() (string, nvml.Return) { return uuid, nvml.SUCCESS },
				GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
					return nvml.Memory{Total: memMiB << 20, Free: memMiB << 20}, nvml.SUCCESS
				},
				GetGpuInstanceIdFunc: func() (int, nvml.Return) { return giID, nvml.SUCCESS },
				GetComputeInstanceIdFunc: func() (int, nvml.Return) {
					return ciID, nvml.SUCCESS
				},
				IsMigDeviceHandleFunc:                  func() (bool, nvml.Return) { return true, nvml.SUCCESS },
				GetDeviceHandleFromMigDeviceHandleFunc: func() (nvml.Device, nvml.Return) { return d, nvml.SUCCESS },
			}
			f.migHandles[p.ci] = h
		}
		out = append(out, h)
	}
	f.migLists[d] = migList{key, out}
	return out
}

type migList struct {
	key  [3]int
	list []nvml.Device
}

type migSpec struct {
	giProfile, ciProfile int // GPU_INSTANCE_PROFILE_*, COMPUTE_INSTANCE_PROFILE_*
}

// enableMIG turns MIG on for device i and creates the instances through the mock's own
// CreateGpuInstance / CreateComputeInstance, with the mock's profile info.
func (f *fakeNode) enableMIG(t testing.TB, i int, specs ...migSpec) []*server.GpuInstance {
	t.Helper()
	d := f.dev(i)
	if ret, _ := d.SetMigMode(nvml.DEVICE_MIG_ENABLE); ret != nvml.SUCCESS {
		t.Fatalf("SetMigMode: %v", ret)
	}
	var out []*server.GpuInstance
	for _, s := range specs {
		gip, ret := d.GetGpuInstanceProfileInfo(s.giProfile)
		if ret != nvml.SUCCESS {
			t.Fatalf("GetGpuInstanceProfileInfo(%d): %v", s.giProfile, ret)
		}
		gi, ret := d.CreateGpuInstance(&gip)
		if ret != nvml.SUCCESS {
			t.Fatalf("CreateGpuInstance: %v", ret)
		}
		cip, ret := gi.GetComputeInstanceProfileInfo(s.ciProfile, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
		if ret != nvml.SUCCESS {
			t.Fatalf("GetComputeInstanceProfileInfo(%d, %d): %v", s.giProfile, s.ciProfile, ret)
		}
		if _, ret := gi.CreateComputeInstance(&cip); ret != nvml.SUCCESS {
			t.Fatalf("CreateComputeInstance: %v", ret)
		}
		out = append(out, gi.(*server.GpuInstance))
	}
	return out
}

func (f *fakeNode) pushXID(d nvml.Device, xid uint64) {
	f.push(nvml.EventData{Device: d, EventType: nvml.EventTypeXidCriticalError, EventData: xid})
}

func (f *fakeNode) push(e nvml.EventData) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queue = append(f.queue, e)
}

func (f *fakeNode) setECC(i int, n uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ecc[i] = n
}

// wantDevice is what device i of the fake should look like when nothing is wrong, read
// from the mock's own data structures.
func (f *fakeNode) wantDevice(i int) Device {
	d := f.dev(i)
	migOn := d.MigMode == nvml.DEVICE_MIG_ENABLE
	util := fakeUtilization(i)
	if migOn {
		util = 0
	}
	return Device{
		Index:             i,
		UUID:              d.UUID,
		Product:           d.Config.Name,
		MemoryTotalMiB:    int64(d.MemoryInfo.Total >> 20),
		MemoryUsedMiB:     int64(d.MemoryInfo.Used >> 20),
		MemoryFreeMiB:     int64(d.MemoryInfo.Free >> 20),
		ComputeCapability: fmt.Sprintf("%d.%d", d.Config.CudaMajor, d.Config.CudaMinor),
		UtilizationGPU:    util,
		TemperatureC:      fakeTempC(i),
		PowerWatts:        float64(fakePowerMW(i)) / 1000,
		MIGEnabled:        migOn,
		Healthy:           true,
	}
}

func mustProber(t testing.TB, lib nvml.Interface, opts ...Option) Prober {
	t.Helper()
	p, err := NewWithInterface(lib, opts...)
	if err != nil {
		t.Fatalf("NewWithInterface: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func mustSample(t testing.TB, p Prober) Snapshot {
	t.Helper()
	snap, err := p.Sample(context.Background())
	if err != nil {
		t.Fatalf("Sample: %v", err)
	}
	return snap
}

// ---------------------------------------------------------------------------------------
// Snapshots of the dgx mocks
// ---------------------------------------------------------------------------------------

// TestSampleDGX checks a whole snapshot of each DGX mock against what the mock describes:
// device count, names, UUIDs, memory, compute capability, driver/CUDA versions, and a MIG
// layout created through the mock (profile names, memory, UUIDs, order).
func TestSampleDGX(t *testing.T) {
	type wantMIG struct {
		profile   string
		memoryMiB int64
	}
	cases := []struct {
		name    string
		newSrv  func() *server.Server
		cfg     gpus.Config
		product string
		memMiB  int64
		cc      string
		mig     map[int][]migSpec
		wantMIG map[int][]wantMIG
	}{
		{
			name:    "dgxa100",
			newSrv:  dgxa100.New,
			cfg:     gpus.A100_SXM4_40GB,
			product: "Mock NVIDIA A100-SXM4-40GB",
			memMiB:  40960,
			cc:      "8.0",
			mig: map[int][]migSpec{
				0: slices.Repeat([]migSpec{{nvml.GPU_INSTANCE_PROFILE_1_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE}}, 7),
				1: {
					{nvml.GPU_INSTANCE_PROFILE_3_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_3_SLICE},
					{nvml.GPU_INSTANCE_PROFILE_2_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_2_SLICE},
					{nvml.GPU_INSTANCE_PROFILE_1_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE},
				},
				2: {{nvml.GPU_INSTANCE_PROFILE_3_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE}},
				3: {{nvml.GPU_INSTANCE_PROFILE_7_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_7_SLICE}},
				4: {
					{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE},
					{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2, nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE},
				},
			},
			wantMIG: map[int][]wantMIG{
				0: slices.Repeat([]wantMIG{{"1g.5gb", 4864}}, 7),
				1: {{"3g.20gb", 19968}, {"2g.10gb", 9856}, {"1g.5gb", 4864}},
				2: {{"1c.3g.20gb", 19968}},
				3: {{"7g.40gb", 40192}},
				4: {{"1g.5gb+me", 4864}, {"1g.10gb", 9856}},
			},
		},
		{
			name:    "dgxh100",
			newSrv:  dgxh100.New,
			cfg:     gpus.H100_SXM5_80GB,
			product: "NVIDIA H100 80GB HBM3",
			memMiB:  81920,
			cc:      "9.0",
			mig: map[int][]migSpec{
				0: slices.Repeat([]migSpec{{nvml.GPU_INSTANCE_PROFILE_3_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_3_SLICE}}, 2),
				1: {
					{nvml.GPU_INSTANCE_PROFILE_1_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE},
					{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE},
					{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2, nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE},
					{nvml.GPU_INSTANCE_PROFILE_2_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_2_SLICE},
				},
				5: {{nvml.GPU_INSTANCE_PROFILE_7_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_7_SLICE}},
				6: {{nvml.GPU_INSTANCE_PROFILE_4_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_2_SLICE}},
			},
			wantMIG: map[int][]wantMIG{
				0: {{"3g.40gb", 40960}, {"3g.40gb", 40960}},
				1: {{"1g.10gb", 10240}, {"1g.10gb+me", 10240}, {"1g.20gb", 20480}, {"2g.20gb", 20480}},
				5: {{"7g.80gb", 81920}},
				6: {{"2c.4g.40gb", 40960}},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := tc.newSrv()
			f := newFakeNode(t, srv)
			// Some memory in use on device 7, to see used/free converted.
			f.dev(7).MemoryInfo.Used = 1536 << 20
			f.dev(7).MemoryInfo.Free = f.dev(7).MemoryInfo.Total - 1536<<20
			for i, specs := range tc.mig {
				f.enableMIG(t, i, specs...)
			}
			p := mustProber(t, srv)
			snap := mustSample(t, p)

			// Concrete values, so that a change in the mock or the code shows up.
			if snap.DriverVersion != "550.54.15" || snap.CUDADriverVersion != "12.4" {
				t.Errorf("versions = %q, CUDA %q; want 550.54.15, 12.4", snap.DriverVersion, snap.CUDADriverVersion)
			}
			if snap.DriverVersion != srv.DriverVersion {
				t.Errorf("DriverVersion %q, mock says %q", snap.DriverVersion, srv.DriverVersion)
			}
			if len(snap.Devices) != 8 || len(snap.Devices) != len(srv.Devices) {
				t.Fatalf("%d devices, mock has %d", len(snap.Devices), len(srv.Devices))
			}
			if tc.cfg.Name != tc.product || int64(tc.cfg.MemoryMB) != tc.memMiB {
				t.Fatalf("mock config changed: %q %d MiB", tc.cfg.Name, tc.cfg.MemoryMB)
			}
			if got := snap.Devices[7]; got.MemoryUsedMiB != 1536 || got.MemoryFreeMiB != tc.memMiB-1536 {
				t.Errorf("device 7 used/free = %d/%d MiB", got.MemoryUsedMiB, got.MemoryFreeMiB)
			}
			if got := snap.Devices[2]; got.TemperatureC != 32 || got.PowerWatts != 102.5 {
				t.Errorf("device 2 temperature/power = %d C / %v W; want 32 C / 102.5 W", got.TemperatureC, got.PowerWatts)
			}

			uuids := map[string]bool{}
			for i, got := range snap.Devices {
				if got.Product != tc.product || got.MemoryTotalMiB != tc.memMiB || got.ComputeCapability != tc.cc {
					t.Errorf("device %d = %q %d MiB cc %q; want %q %d MiB cc %q", i,
						got.Product, got.MemoryTotalMiB, got.ComputeCapability, tc.product, tc.memMiB, tc.cc)
				}
				if !strings.HasPrefix(got.UUID, "GPU-") || uuids[got.UUID] {
					t.Errorf("device %d UUID %q not a unique GPU- UUID", i, got.UUID)
				}
				uuids[got.UUID] = true

				want := f.wantDevice(i)
				for _, m := range tc.wantMIG[i] {
					want.MIGDevices = append(want.MIGDevices, MIGDevice{Profile: m.profile, MemoryMiB: m.memoryMiB})
				}
				if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(MIGDevice{}, "UUID")); diff != "" {
					t.Errorf("device %d (-want +got):\n%s", i, diff)
				}
				// MIG UUIDs: the ones NVML (the fake) hands out, in NVML's order.
				var wantUUIDs, gotUUIDs []string
				for _, h := range f.migDevices(f.dev(i)) {
					u, _ := h.GetUUID()
					wantUUIDs = append(wantUUIDs, u)
				}
				for _, m := range got.MIGDevices {
					gotUUIDs = append(gotUUIDs, m.UUID)
				}
				if !slices.Equal(wantUUIDs, gotUUIDs) {
					t.Errorf("device %d MIG UUIDs = %v; want %v", i, gotUUIDs, wantUUIDs)
				}
			}
			// MIG memory also matches the mock's profile table for the profiles used.
			if tc.name == "dgxh100" {
				want := int64(dgxh100.MIGProfiles.GpuInstanceProfiles[nvml.GPU_INSTANCE_PROFILE_3_SLICE].MemorySizeMB)
				if got := snap.Devices[0].MIGDevices[0].MemoryMiB; got != want || got != 40960 {
					t.Errorf("3g.40gb memory = %d MiB; mock profile says %d", got, want)
				}
			} else {
				want := int64(dgxa100.MIGProfiles.GpuInstanceProfiles[nvml.GPU_INSTANCE_PROFILE_1_SLICE].MemorySizeMB)
				if got := snap.Devices[0].MIGDevices[6].MemoryMiB; got != want || got != 4864 {
					t.Errorf("1g.5gb memory = %d MiB; mock profile says %d", got, want)
				}
			}
			// Every device was registered for XID events, and nothing else.
			for i := range srv.Devices {
				if f.registered[i] != nvml.EventTypeXidCriticalError {
					t.Errorf("device %d registered events %#x; want XID only", i, f.registered[i])
				}
			}
		})
	}
}

// TestMIGLayoutChanges: a MIG device that goes away disappears from the next snapshot,
// a new one appears, and a known MIG device's profile is resolved once, not every sample.
func TestMIGLayoutChanges(t *testing.T) {
	srv := dgxh100.New()
	f := newFakeNode(t, srv)
	gis := f.enableMIG(t, 0,
		migSpec{nvml.GPU_INSTANCE_PROFILE_3_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_3_SLICE},
		migSpec{nvml.GPU_INSTANCE_PROFILE_3_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_3_SLICE})
	p := mustProber(t, srv)

	profiles := func(s Snapshot) []string {
		var out []string
		for _, m := range s.Devices[0].MIGDevices {
			out = append(out, m.Profile)
		}
		return out
	}
	s1 := mustSample(t, p)
	s2 := mustSample(t, p)
	if !slices.Equal(profiles(s1), []string{"3g.40gb", "3g.40gb"}) || !cmp.Equal(s1.Devices[0], s2.Devices[0]) {
		t.Fatalf("samples differ or wrong: %v / %v", s1.Devices[0], s2.Devices[0])
	}
	for _, h := range f.migDevices(f.dev(0)) {
		if n := len(h.(*mock.Device).GetGpuInstanceIdCalls()); n != 1 {
			t.Errorf("MIG profile of %v resolved %d times over 2 samples; want 1", h, n)
		}
	}

	if ret := gis[1].Destroy(); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	f.enableMIG(t, 0, migSpec{nvml.GPU_INSTANCE_PROFILE_1_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE})
	s3 := mustSample(t, p)
	if got := profiles(s3); !slices.Equal(got, []string{"3g.40gb", "1g.10gb"}) {
		t.Fatalf("after reconfiguring: %v", got)
	}
	if s3.Devices[0].MIGDevices[0].UUID != s1.Devices[0].MIGDevices[0].UUID ||
		s3.Devices[0].MIGDevices[1].UUID == s1.Devices[0].MIGDevices[1].UUID {
		t.Errorf("MIG UUIDs after reconfiguring: %v then %v", s1.Devices[0].MIGDevices, s3.Devices[0].MIGDevices)
	}
	if pr := p.(*prober); len(pr.devs[0].migNames) != 2 {
		t.Errorf("MIG name cache holds %d entries; want 2 (stale one dropped)", len(pr.devs[0].migNames))
	}
}

// ---------------------------------------------------------------------------------------
// Per-device NVML errors
// ---------------------------------------------------------------------------------------

// faultyDevice wraps a mock device handle and makes one call fail.
type faultyDevice struct {
	nvml.Device
	mu   sync.Mutex
	fail string
	ret  nvml.Return
}

func (d *faultyDevice) failing(call string) (nvml.Return, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ret, d.fail == call
}

func (d *faultyDevice) set(call string, ret nvml.Return) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fail, d.ret = call, ret
}

func (d *faultyDevice) GetUUID() (string, nvml.Return) {
	if ret, bad := d.failing("GetUUID"); bad {
		return "", ret
	}
	return d.Device.GetUUID()
}

func (d *faultyDevice) GetName() (string, nvml.Return) {
	if ret, bad := d.failing("GetName"); bad {
		return "", ret
	}
	return d.Device.GetName()
}

func (d *faultyDevice) GetCudaComputeCapability() (int, int, nvml.Return) {
	if ret, bad := d.failing("GetCudaComputeCapability"); bad {
		return 0, 0, ret
	}
	return d.Device.GetCudaComputeCapability()
}

func (d *faultyDevice) GetMemoryInfo() (nvml.Memory, nvml.Return) {
	if ret, bad := d.failing("GetMemoryInfo"); bad {
		return nvml.Memory{}, ret
	}
	return d.Device.GetMemoryInfo()
}

func (d *faultyDevice) GetUtilizationRates() (nvml.Utilization, nvml.Return) {
	if ret, bad := d.failing("GetUtilizationRates"); bad {
		return nvml.Utilization{}, ret
	}
	return d.Device.GetUtilizationRates()
}

func (d *faultyDevice) GetTemperature(s nvml.TemperatureSensors) (uint32, nvml.Return) {
	if ret, bad := d.failing("GetTemperature"); bad {
		return 0, ret
	}
	return d.Device.GetTemperature(s)
}

func (d *faultyDevice) GetPowerUsage() (uint32, nvml.Return) {
	if ret, bad := d.failing("GetPowerUsage"); bad {
		return 0, ret
	}
	return d.Device.GetPowerUsage()
}

func (d *faultyDevice) GetTotalEccErrors(t nvml.MemoryErrorType, c nvml.EccCounterType) (uint64, nvml.Return) {
	if ret, bad := d.failing("GetTotalEccErrors"); bad {
		return 0, ret
	}
	return d.Device.GetTotalEccErrors(t, c)
}

func (d *faultyDevice) GetMigMode() (int, int, nvml.Return) {
	if ret, bad := d.failing("GetMigMode"); bad {
		return 0, 0, ret
	}
	return d.Device.GetMigMode()
}

func (d *faultyDevice) GetMigDeviceHandleByIndex(j int) (nvml.Device, nvml.Return) {
	if ret, bad := d.failing("GetMigDeviceHandleByIndex"); bad {
		return nil, ret
	}
	return d.Device.GetMigDeviceHandleByIndex(j)
}

func (d *faultyDevice) RegisterEvents(types uint64, set nvml.EventSet) nvml.Return {
	if ret, bad := d.failing("RegisterEvents"); bad {
		return ret
	}
	return d.Device.RegisterEvents(types, set)
}

// wrapDevice makes the server hand out a faultyDevice for index i (from then on), and
// makes DeviceGetHandleByIndex itself fail for i when fail == "DeviceGetHandleByIndex".
func wrapDevice(srv *server.Server, i int) *faultyDevice {
	orig := srv.DeviceGetHandleByIndexFunc
	fd := &faultyDevice{Device: srv.Devices[i]}
	srv.DeviceGetHandleByIndexFunc = func(n int) (nvml.Device, nvml.Return) {
		if n != i {
			return orig(n)
		}
		if ret, bad := fd.failing("DeviceGetHandleByIndex"); bad {
			return nil, ret
		}
		return fd, nvml.SUCCESS
	}
	return fd
}

// TestDeviceErrorIsolation: an NVML error on any one call of device 3 makes device 3
// unhealthy with Err naming the call and the error, leaves the other 7 devices complete
// and healthy, and does not fail the Sample; NOT_SUPPORTED leaves the field zero and the
// device healthy. When the fault goes away the device recovers on the next sample.
func TestDeviceErrorIsolation(t *testing.T) {
	const bad = 3
	cases := []struct {
		call    string
		ret     nvml.Return
		mig     bool          // device 3 in MIG mode (for MIG calls)
		zero    func(*Device) // the fields the failing call would have filled
		healthy bool
	}{
		{call: "DeviceGetHandleByIndex", ret: nvml.ERROR_GPU_IS_LOST, zero: func(d *Device) { *d = Device{Index: d.Index} }},
		{call: "GetUUID", ret: nvml.ERROR_GPU_IS_LOST, zero: func(d *Device) { d.UUID = "" }},
		{call: "GetName", ret: nvml.ERROR_UNKNOWN, zero: func(d *Device) { d.Product = "" }},
		{call: "GetCudaComputeCapability", ret: nvml.ERROR_UNKNOWN, zero: func(d *Device) { d.ComputeCapability = "" }},
		{call: "GetMemoryInfo", ret: nvml.ERROR_GPU_IS_LOST, zero: func(d *Device) {
			d.MemoryTotalMiB, d.MemoryUsedMiB, d.MemoryFreeMiB = 0, 0, 0
		}},
		{call: "GetUtilizationRates", ret: nvml.ERROR_UNKNOWN, zero: func(d *Device) { d.UtilizationGPU = 0 }},
		{call: "GetTemperature", ret: nvml.ERROR_UNKNOWN, zero: func(d *Device) { d.TemperatureC = 0 }},
		{call: "GetPowerUsage", ret: nvml.ERROR_NO_PERMISSION, zero: func(d *Device) { d.PowerWatts = 0 }},
		{call: "GetTotalEccErrors", ret: nvml.ERROR_UNKNOWN, zero: func(*Device) {}},
		{call: "GetMigMode", ret: nvml.ERROR_UNKNOWN, zero: func(*Device) {}},
		{call: "RegisterEvents", ret: nvml.ERROR_UNKNOWN, zero: func(*Device) {}},
		{call: "GetMigDeviceHandleByIndex", ret: nvml.ERROR_UNKNOWN, mig: true, zero: func(d *Device) { d.MIGDevices = nil }},
		// NOT_SUPPORTED is not an error: the field stays zero, the device stays healthy.
		{call: "GetTemperature", ret: nvml.ERROR_NOT_SUPPORTED, healthy: true, zero: func(d *Device) { d.TemperatureC = 0 }},
		{call: "GetPowerUsage", ret: nvml.ERROR_NOT_SUPPORTED, healthy: true, zero: func(d *Device) { d.PowerWatts = 0 }},
		{call: "GetTotalEccErrors", ret: nvml.ERROR_NOT_SUPPORTED, healthy: true, zero: func(*Device) {}},
		{call: "GetUtilizationRates", ret: nvml.ERROR_NOT_SUPPORTED, healthy: true, zero: func(d *Device) { d.UtilizationGPU = 0 }},
		{call: "GetMigMode", ret: nvml.ERROR_NOT_SUPPORTED, healthy: true, zero: func(*Device) {}},
		{call: "RegisterEvents", ret: nvml.ERROR_NOT_SUPPORTED, healthy: true, zero: func(*Device) {}},
	}
	for _, tc := range cases {
		t.Run(tc.call+"/"+tc.ret.Error(), func(t *testing.T) {
			srv := dgxh100.New()
			f := newFakeNode(t, srv)
			if tc.mig {
				f.enableMIG(t, bad, migSpec{nvml.GPU_INSTANCE_PROFILE_7_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_7_SLICE})
			}
			fd := wrapDevice(srv, bad)
			fd.set(tc.call, tc.ret)
			p := mustProber(t, srv)
			snap, err := p.Sample(context.Background())
			if err != nil {
				t.Fatalf("Sample failed as a whole: %v", err)
			}
			if len(snap.Devices) != 8 {
				t.Fatalf("%d devices", len(snap.Devices))
			}
			for i, got := range snap.Devices {
				want := f.wantDevice(i)
				if tc.mig && i == bad {
					want.MIGDevices = []MIGDevice{{Profile: "7g.80gb", MemoryMiB: 81920}}
				}
				if i == bad {
					tc.zero(&want)
					want.Healthy = tc.healthy
					if !tc.healthy {
						if !strings.Contains(got.Err, tc.call) || !strings.Contains(got.Err, tc.ret.Error()) {
							t.Errorf("device %d Err = %q; want it to name %s and %v", i, got.Err, tc.call, tc.ret)
						}
						want.Err = got.Err
					}
				}
				if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(MIGDevice{}, "UUID")); diff != "" {
					t.Errorf("device %d (-want +got):\n%s", i, diff)
				}
			}

			// Fault cleared: device 3 is read fully and healthy again.
			fd.set("", nvml.SUCCESS)
			snap = mustSample(t, p)
			want := f.wantDevice(bad)
			if tc.mig {
				want.MIGDevices = []MIGDevice{{Profile: "7g.80gb", MemoryMiB: 81920}}
			}
			if diff := cmp.Diff(want, snap.Devices[bad], cmpopts.IgnoreFields(MIGDevice{}, "UUID")); diff != "" {
				t.Errorf("after the fault cleared (-want +got):\n%s", diff)
			}
		})
	}
}

// TestECCUncorrected: a volatile uncorrected ECC count > 0 makes the device unhealthy
// without being a read error.
func TestECCUncorrected(t *testing.T) {
	srv := dgxa100.New()
	f := newFakeNode(t, srv)
	f.setECC(4, 2)
	p := mustProber(t, srv)
	snap := mustSample(t, p)
	for i, d := range snap.Devices {
		wantHealthy := i != 4
		if d.Healthy != wantHealthy || d.Err != "" {
			t.Errorf("device %d Healthy=%v Err=%q; want Healthy=%v, no Err", i, d.Healthy, d.Err, wantHealthy)
		}
	}
	if got := snap.Devices[4].ECCUncorrected; got != 2 {
		t.Errorf("ECCUncorrected = %d; want 2", got)
	}
}

// TestSampleFailsOnlyWithoutDeviceCount: only DeviceGetCount failing fails the Sample;
// errors meaning NVML itself is gone wrap ErrNVMLUnavailable.
func TestSampleFailsOnlyWithoutDeviceCount(t *testing.T) {
	for _, tc := range []struct {
		ret         nvml.Return
		unavailable bool
	}{
		{nvml.ERROR_UNKNOWN, false},
		{nvml.ERROR_DRIVER_NOT_LOADED, true},
		{nvml.ERROR_UNINITIALIZED, true},
	} {
		t.Run(tc.ret.Error(), func(t *testing.T) {
			srv := dgxh100.New()
			newFakeNode(t, srv)
			p := mustProber(t, srv)
			srv.DeviceGetCountFunc = func() (int, nvml.Return) { return 0, tc.ret }
			snap, err := p.Sample(context.Background())
			if err == nil || len(snap.Devices) != 0 {
				t.Fatalf("Sample = %v, %v; want an error", snap, err)
			}
			if !errors.Is(err, tc.ret) || errors.Is(err, ErrNVMLUnavailable) != tc.unavailable {
				t.Errorf("err = %v; errors.Is(ret) = %v, errors.Is(ErrNVMLUnavailable) = %v (want %v)",
					err, errors.Is(err, tc.ret), errors.Is(err, ErrNVMLUnavailable), tc.unavailable)
			}
		})
	}
}

// ---------------------------------------------------------------------------------------
// XID events
// ---------------------------------------------------------------------------------------

// TestXIDEvents: XID events queued on the event set are picked up by the next Sample
// without blocking (every Wait has timeout 0), counted per device, and critical XIDs make
// the device unhealthy for good; application XIDs do not.
func TestXIDEvents(t *testing.T) {
	type ev struct {
		dev  int // -1: a device that is not on this node
		xid  uint64
		kind uint64 // event type; 0 means XID
	}
	type devWant struct {
		count   int64
		last    int
		healthy bool
	}
	cases := []struct {
		name   string
		opts   []Option
		wrap   int // device handed out wrapped (so events are matched by UUID), -1 none
		events []ev
		want   map[int]devWant // devices not listed: no XIDs, healthy
	}{
		{name: "critical 79 fallen off the bus", wrap: -1, events: []ev{{dev: 2, xid: 79}},
			want: map[int]devWant{2: {1, 79, false}}},
		{name: "application XID 13 stays healthy", wrap: -1, events: []ev{{dev: 5, xid: 13}},
			want: map[int]devWant{5: {1, 13, true}}},
		{name: "every default critical XID", wrap: -1, events: func() []ev {
			var out []ev
			for i, x := range DefaultCriticalXIDs() {
				out = append(out, ev{dev: i % 8, xid: uint64(x)})
			}
			return out
		}(), want: map[int]devWant{
			0: {2, 119, false}, 1: {2, 120, false}, 2: {1, 63, false}, 3: {1, 64, false},
			4: {1, 74, false}, 5: {1, 79, false}, 6: {1, 94, false}, 7: {1, 95, false},
		}},
		{name: "critical then application: still unhealthy, last is 13", wrap: -1,
			events: []ev{{dev: 1, xid: 48}, {dev: 1, xid: 13}},
			want:   map[int]devWant{1: {2, 13, false}}},
		{name: "custom critical list", wrap: -1, opts: []Option{WithCriticalXIDs(13)},
			events: []ev{{dev: 1, xid: 13}, {dev: 2, xid: 79}},
			want:   map[int]devWant{1: {1, 13, false}, 2: {1, 79, true}}},
		{name: "other event types are not XIDs", wrap: -1,
			events: []ev{{dev: 1, xid: 0, kind: nvml.EventTypeDoubleBitEccError}}},
		{name: "event of an unknown device is ignored", wrap: -1, events: []ev{{dev: -1, xid: 79}}},
		{name: "wrapped handle matched by UUID", wrap: 6, events: []ev{{dev: 6, xid: 95}},
			want: map[int]devWant{6: {1, 95, false}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := dgxh100.New()
			f := newFakeNode(t, srv)
			if tc.wrap >= 0 {
				wrapDevice(srv, tc.wrap)
			}
			p := mustProber(t, srv, tc.opts...)
			before := mustSample(t, p)
			for _, d := range before.Devices {
				if !d.Healthy || d.XIDCount != 0 {
					t.Fatalf("before events: %+v", d)
				}
			}
			stranger := dgxh100.NewDevice(8)
			stranger.IsMigDeviceHandleFunc = func() (bool, nvml.Return) { return false, nvml.SUCCESS }
			for _, e := range tc.events {
				var d nvml.Device = stranger
				if e.dev >= 0 {
					d = srv.Devices[e.dev] // the raw mock device, as NVML reports it
				}
				kind := e.kind
				if kind == 0 {
					kind = nvml.EventTypeXidCriticalError
				}
				f.push(nvml.EventData{Device: d, EventType: kind, EventData: e.xid})
			}
			// Twice: the second sample sees no new events, and nothing heals.
			for round := range 2 {
				snap := mustSample(t, p)
				for i, d := range snap.Devices {
					w, ok := tc.want[i]
					if !ok {
						w = devWant{healthy: true}
					}
					if d.XIDCount != w.count || d.LastXID != w.last || d.Healthy != w.healthy || d.Err != "" {
						t.Errorf("round %d device %d: XIDCount=%d LastXID=%d Healthy=%v Err=%q; want %d %d %v",
							round, i, d.XIDCount, d.LastXID, d.Healthy, d.Err, w.count, w.last, w.healthy)
					}
				}
			}
			for _, c := range f.events.WaitCalls() {
				if c.V != 0 {
					t.Fatalf("EventSet.Wait called with timeout %d ms; Sample must not block", c.V)
				}
			}
			if len(f.events.WaitCalls()) < 3 {
				t.Errorf("Wait called %d times over 3 samples", len(f.events.WaitCalls()))
			}
		})
	}
}

// TestXIDStormIsBounded: one Sample drains at most maxEventsPerSample events; the rest
// are picked up by the following samples.
func TestXIDStormIsBounded(t *testing.T) {
	srv := dgxh100.New()
	f := newFakeNode(t, srv)
	p := mustProber(t, srv)
	const n = maxEventsPerSample + 44
	for range n {
		f.pushXID(srv.Devices[0], 31)
	}
	if got := mustSample(t, p).Devices[0].XIDCount; got != maxEventsPerSample {
		t.Errorf("first sample counted %d XIDs; want %d", got, maxEventsPerSample)
	}
	if got := mustSample(t, p).Devices[0]; got.XIDCount != n || !got.Healthy {
		t.Errorf("second sample: XIDCount=%d Healthy=%v; want %d, healthy (31 is an application XID)", got.XIDCount, got.Healthy, n)
	}
}

// TestNoEventSupport: without an event set (EventSetCreate NOT_SUPPORTED, e.g. some
// virtualised GPUs) everything else is still read and healthy.
func TestNoEventSupport(t *testing.T) {
	srv := dgxa100.New()
	f := newFakeNode(t, srv)
	srv.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return nil, nvml.ERROR_NOT_SUPPORTED }
	p := mustProber(t, srv)
	snap := mustSample(t, p)
	for i, d := range snap.Devices {
		if diff := cmp.Diff(f.wantDevice(i), d); diff != "" {
			t.Errorf("device %d (-want +got):\n%s", i, diff)
		}
	}
	if len(f.registered) != 0 {
		t.Errorf("registered events without an event set: %v", f.registered)
	}
}

// ---------------------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------------------

// TestInitFailure: any nvml.Init failure gives an error wrapping ErrNVMLUnavailable and
// the nvml.Return, and no Prober.
func TestInitFailure(t *testing.T) {
	for _, ret := range []nvml.Return{
		nvml.ERROR_LIBRARY_NOT_FOUND, nvml.ERROR_DRIVER_NOT_LOADED, nvml.ERROR_NO_PERMISSION,
		nvml.ERROR_LIB_RM_VERSION_MISMATCH, nvml.ERROR_UNKNOWN,
	} {
		t.Run(ret.Error(), func(t *testing.T) {
			srv := dgxh100.New()
			srv.InitFunc = func() nvml.Return { return ret }
			p, err := NewWithInterface(srv)
			if p != nil || !errors.Is(err, ErrNVMLUnavailable) || !errors.Is(err, ret) {
				t.Fatalf("NewWithInterface = %v, %v; want nil and an error wrapping ErrNVMLUnavailable and %v", p, err, ret)
			}
			if n := len(srv.ShutdownCalls()); n != 0 {
				t.Errorf("Shutdown called %d times after a failed Init", n)
			}
		})
	}
	if p, err := NewWithInterface(nil); p != nil || !errors.Is(err, ErrNVMLUnavailable) {
		t.Errorf("NewWithInterface(nil) = %v, %v", p, err)
	}
}

// TestCloseAndContext: Close frees the event set and shuts NVML down once; Sample after
// Close fails with ErrNVMLUnavailable; a done context fails Sample.
func TestCloseAndContext(t *testing.T) {
	srv := dgxh100.New()
	f := newFakeNode(t, srv)
	p, err := NewWithInterface(srv)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Sample(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Sample(canceled) = %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if n, m := len(srv.ShutdownCalls()), len(f.events.FreeCalls()); n != 1 || m != 1 {
		t.Errorf("Shutdown called %d times, EventSet.Free %d times; want 1, 1", n, m)
	}
	if _, err := p.Sample(context.Background()); !errors.Is(err, ErrNVMLUnavailable) {
		t.Errorf("Sample after Close = %v", err)
	}
}

// TestOpenWithoutNVML runs the real go-nvml loader. On a machine without
// libnvidia-ml.so (like CI) Open must return an error wrapping ErrNVMLUnavailable and
// nvml.ERROR_LIBRARY_NOT_FOUND, with the loader's reason, and must not panic. On a machine
// with a driver, the default case instead samples the real GPUs.
func TestOpenWithoutNVML(t *testing.T) {
	cases := []struct {
		name     string
		opts     []Option
		mustFail bool
	}{
		{name: "default library", opts: nil},
		{name: "missing path", opts: []Option{WithLibraryPath("/nonexistent/libnvidia-ml.so.1")}, mustFail: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Open(tc.opts...)
			if err == nil {
				defer p.Close()
				if tc.mustFail {
					t.Fatal("Open succeeded with a library that does not exist")
				}
				snap, err := p.Sample(context.Background())
				if err != nil {
					t.Fatalf("NVML loaded but Sample failed: %v", err)
				}
				t.Logf("real NVML: driver %s CUDA %s, %d devices", snap.DriverVersion, snap.CUDADriverVersion, len(snap.Devices))
				for _, d := range snap.Devices {
					t.Logf("  %+v", d)
				}
				return
			}
			if p != nil {
				t.Errorf("Open returned a Prober with error %v", err)
			}
			if !errors.Is(err, ErrNVMLUnavailable) || !errors.Is(err, nvml.ERROR_LIBRARY_NOT_FOUND) {
				t.Errorf("Open() = %v; want errors wrapping ErrNVMLUnavailable and ERROR_LIBRARY_NOT_FOUND", err)
			}
			if !strings.Contains(err.Error(), "libnvidia-ml.so") {
				t.Errorf("error does not say which library: %v", err)
			}
			t.Logf("Open: %v", err)
		})
	}
}

// ---------------------------------------------------------------------------------------
// Pure helpers
// ---------------------------------------------------------------------------------------

func TestFormatCUDAVersion(t *testing.T) {
	for in, want := range map[int]string{12040: "12.4", 12060: "12.6", 11080: "11.8", 10010: "10.1", 13000: "13.0", 0: ""} {
		if got := formatCUDAVersion(in); got != want {
			t.Errorf("formatCUDAVersion(%d) = %q; want %q", in, got, want)
		}
	}
}

// TestMIGProfileName uses the memory sizes real drivers report (not the mocks' round
// numbers), where plain rounding would give wrong names.
func TestMIGProfileName(t *testing.T) {
	const mib = 1 << 20
	cases := []struct {
		totalMiB, profileMiB uint64
		ci, gi               uint32
		suffix, want         string
	}{
		{40960, 4864, 1, 1, "", "1g.5gb"},   // A100 40GB
		{40960, 19968, 3, 3, "", "3g.20gb"}, // A100 40GB
		{81559, 9856, 1, 1, "", "1g.10gb"},  // H100 80GB as the driver reports it
		{81559, 40192, 3, 3, "", "3g.40gb"}, // H100
		{81559, 80384, 7, 7, "", "7g.80gb"}, // H100
		{81559, 9856, 1, 1, "+me", "1g.10gb+me"},
		{81559, 40192, 1, 3, "", "1c.3g.40gb"},
		{0, 20480, 2, 2, "", "2g.20gb"}, // parent memory unknown
	}
	for _, tc := range cases {
		got := migProfileName(tc.ci, tc.gi, migMemorySizeGB(tc.totalMiB*mib, tc.profileMiB), tc.suffix)
		if got != tc.want {
			t.Errorf("total %d MiB, profile %d MiB, %dc/%dg: %q; want %q", tc.totalMiB, tc.profileMiB, tc.ci, tc.gi, got, tc.want)
		}
	}
}

// TestSampleAllocations: beyond the snapshot itself (the Devices slice, one MIGDevices
// slice per MIG GPU) a Sample allocates nothing once identities are cached.
func TestSampleAllocations(t *testing.T) {
	srv := dgxh100.New()
	f := newFakeNode(t, srv)
	p := mustProber(t, srv)
	mustSample(t, p)
	if n := testing.AllocsPerRun(200, func() { mustSample(t, p) }); n > 1 {
		t.Errorf("Sample without MIG: %v allocations; want 1 (the Devices slice)", n)
	}
	f.enableMIG(t, 0, migSpec{nvml.GPU_INSTANCE_PROFILE_3_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_3_SLICE})
	f.enableMIG(t, 1, migSpec{nvml.GPU_INSTANCE_PROFILE_7_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_7_SLICE})
	mustSample(t, p)
	if n := testing.AllocsPerRun(200, func() { mustSample(t, p) }); n > 3 {
		t.Errorf("Sample with 2 MIG GPUs: %v allocations; want 3", n)
	}
}
