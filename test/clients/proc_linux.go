package clients

import (
	"os/exec"
	"syscall"
)

// killTree makes cmd the leader of a process group of its own, and its cancellation kill
// the whole group: a browser's helper processes would otherwise outlive it.
func killTree(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
}
