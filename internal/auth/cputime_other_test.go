//go:build !linux

package auth

import "time"

// threadCPUTime is only measured on Linux.
func threadCPUTime() (time.Duration, bool) { return 0, false }
