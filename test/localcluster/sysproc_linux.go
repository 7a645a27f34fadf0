//go:build linux

package localcluster

import "syscall"

// childSysProcAttr asks the kernel to SIGTERM a component if the test process dies without
// calling Stop (a panic, a timeout kill), so no orphaned control plane outlives a test run.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
