//go:build !cgo

package gpu

import (
	"errors"
	"testing"
)

func TestOpenWithoutCgo(t *testing.T) {
	p, err := Open()
	if !errors.Is(err, ErrNVMLUnavailable) || p != nil {
		t.Fatalf("Open() = %v, %v; want nil, error wrapping ErrNVMLUnavailable", p, err)
	}
}
