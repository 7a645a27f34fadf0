//go:build !cgo

package gpu

import "fmt"

// Open always fails in a binary built without cgo: go-nvml loads libnvidia-ml.so with
// dlopen through cgo, so there is no NVML to talk to. The error wraps ErrNVMLUnavailable
// like a missing library would. (NewWithInterface needs go-nvml, which needs cgo, so it
// only exists in cgo builds.)
func Open(opts ...Option) (Prober, error) {
	_ = buildOptions(opts)
	return nil, fmt.Errorf("%w: binary built without cgo (CGO_ENABLED=0), cannot load libnvidia-ml.so", ErrNVMLUnavailable)
}
