//go:build !linux

package clients

import "os/exec"

// killTree leaves cmd's cancellation as it is (killing the process only) where process
// groups are not set up this way.
func killTree(*exec.Cmd) {}
