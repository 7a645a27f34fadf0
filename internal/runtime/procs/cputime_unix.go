//go:build unix

package procs

import (
	"syscall"
	"time"
)

// processCPUTime is the user and system CPU time of the process so far.
var processCPUTime = func() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
