//go:build cgo

package gpu

import (
	"context"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
)

// BenchmarkSample8GPU is one full Sample over the 8-GPU DGX H100 mock (no MIG, no
// pending events). Note that the mock itself records every call it receives (moq call
// logs), so some of the bytes/op are the mock's, not the prober's.
func BenchmarkSample8GPU(b *testing.B) {
	srv := dgxh100.New()
	newFakeNode(b, srv)
	p := mustProber(b, srv)
	ctx := context.Background()
	if _, err := p.Sample(ctx); err != nil { // warm the identity cache
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Sample(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSample8GPUWithMIG is the same with two GPUs split into MIG devices
// (2 x 3g.40gb and 7 x 1g.10gb).
func BenchmarkSample8GPUWithMIG(b *testing.B) {
	srv := dgxh100.New()
	f := newFakeNode(b, srv)
	f.enableMIG(b, 0,
		migSpec{nvml.GPU_INSTANCE_PROFILE_3_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_3_SLICE},
		migSpec{nvml.GPU_INSTANCE_PROFILE_3_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_3_SLICE})
	var ones []migSpec
	for range 7 {
		ones = append(ones, migSpec{nvml.GPU_INSTANCE_PROFILE_1_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE})
	}
	f.enableMIG(b, 1, ones...)
	p := mustProber(b, srv)
	ctx := context.Background()
	if _, err := p.Sample(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Sample(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
