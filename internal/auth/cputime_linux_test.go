package auth

import (
	"syscall"
	"time"
)

// rusageThread is Linux's RUSAGE_THREAD, which the syscall package does not name.
const rusageThread = 1

// threadCPUTime is the CPU time the calling OS thread has used. Benchmarks report it beside
// wall time because on a shared, loaded machine wall time also counts the time the thread
// waited for a core.
func threadCPUTime() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
