//go:build !unix

package procs

import "time"

// processCPUTime is nil where getrusage is not available: Run leaves GOMAXPROCS alone.
var processCPUTime func() (time.Duration, bool)
