//go:build linux && race

package serve

import (
	"runtime"
	"unsafe"
)

// The race detector does not see a system call write into memory or read from it, and the
// raw path's system calls bypass package syscall, which tells it. So, as syscall.Read and
// syscall.Write do: a read reports the bytes the kernel wrote as written, a write reports
// the bytes it sent as read, and a write happens before a read that follows it (a message
// handed from one goroutine to another through a socket).

var rawIOSync byte

// rawReadDone reports that the kernel wrote p (the bytes read).
func rawReadDone(p []byte) {
	if len(p) > 0 {
		runtime.RaceWriteRange(unsafe.Pointer(unsafe.SliceData(p)), len(p))
	}
	runtime.RaceAcquire(unsafe.Pointer(&rawIOSync))
}

func rawWriteStart() { runtime.RaceReleaseMerge(unsafe.Pointer(&rawIOSync)) }

// rawWriteDone reports that the kernel read p (the bytes written).
func rawWriteDone(p []byte) {
	if len(p) > 0 {
		runtime.RaceReadRange(unsafe.Pointer(unsafe.SliceData(p)), len(p))
	}
}
