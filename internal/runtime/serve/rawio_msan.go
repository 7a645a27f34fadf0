//go:build linux && msan

package serve

import (
	"runtime"
	"unsafe"
)

// The memory sanitizer learns what the kernel wrote and read, as from syscall.Read and
// syscall.Write (see rawio_race.go).

func rawReadDone(p []byte) {
	if len(p) > 0 {
		runtime.MSanWrite(unsafe.Pointer(unsafe.SliceData(p)), len(p))
	}
}

func rawWriteStart() {}

func rawWriteDone(p []byte) {
	if len(p) > 0 {
		runtime.MSanRead(unsafe.Pointer(unsafe.SliceData(p)), len(p))
	}
}
