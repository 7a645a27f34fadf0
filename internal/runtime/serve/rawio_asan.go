//go:build linux && asan

package serve

import (
	"runtime"
	"unsafe"
)

// The address sanitizer learns what the kernel wrote and read, as from syscall.Read and
// syscall.Write (see rawio_race.go).

func rawReadDone(p []byte) {
	if len(p) > 0 {
		runtime.ASanWrite(unsafe.Pointer(unsafe.SliceData(p)), len(p))
	}
}

func rawWriteStart() {}

func rawWriteDone(p []byte) {
	if len(p) > 0 {
		runtime.ASanRead(unsafe.Pointer(unsafe.SliceData(p)), len(p))
	}
}
