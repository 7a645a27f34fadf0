package localcluster

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Process names one running process across program runs: a PID alone may be reused once the
// process is gone, so the start time the kernel recorded for it travels with it, and a later
// StopProcesses signals only a process whose start time still matches.
type Process struct {
	// Name says what it is (etcd, kube-apiserver, ...); for messages only.
	Name string
	// PID is its process ID.
	PID int
	// StartTime is field 22 of /proc/PID/stat: clock ticks from boot to the process's start.
	StartTime uint64
}

// String is "NAME PID STARTTIME", the line format of a PID file (see ParseProcess).
func (p Process) String() string { return fmt.Sprintf("%s %d %d", p.Name, p.PID, p.StartTime) }

// ParseProcess reads a line written by Process.String.
func ParseProcess(line string) (Process, error) {
	f := strings.Fields(line)
	if len(f) != 3 {
		return Process{}, fmt.Errorf("want NAME PID STARTTIME, got %q", line)
	}
	pid, err := strconv.Atoi(f[1])
	if err != nil || pid <= 0 {
		return Process{}, fmt.Errorf("bad PID in %q", line)
	}
	start, err := strconv.ParseUint(f[2], 10, 64)
	if err != nil {
		return Process{}, fmt.Errorf("bad start time in %q", line)
	}
	return Process{Name: f[0], PID: pid, StartTime: start}, nil
}

// ReadPIDFile reads a file of Process.String lines (blank lines and # comments skipped), as
// hack/local-cluster and hack/demo.sh write them.
func ReadPIDFile(path string) ([]Process, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var procs []Process
	for line := range strings.Lines(string(data)) {
		if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p, err := ParseProcess(line)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		procs = append(procs, p)
	}
	return procs, nil
}

// ProcessOf identifies the running process pid.
func ProcessOf(name string, pid int) (Process, error) {
	start, state, err := procStat(pid)
	if err != nil {
		return Process{}, fmt.Errorf("%s (pid %d): %w", name, pid, err)
	}
	if exitedState(state) {
		return Process{}, fmt.Errorf("%s (pid %d) has exited", name, pid)
	}
	return Process{Name: name, PID: pid, StartTime: start}, nil
}

// Running reports whether the process still runs: its PID exists with the same start time
// and it is not a zombie (a process killed after its parent exited may stay one until its
// new parent reaps it).
func (p Process) Running() bool {
	start, state, err := procStat(p.PID)
	return err == nil && start == p.StartTime && !exitedState(state)
}

// Processes lists the cluster's components in start order: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, kwok.
func (c *Cluster) Processes() ([]Process, error) {
	type named struct {
		name string
		pid  int
	}
	list := []named{{"etcd", c.envPIDs["etcd"]}, {"kube-apiserver", c.envPIDs["kube-apiserver"]}}
	for _, ch := range c.children {
		list = append(list, named{ch.name, ch.pid()})
	}
	procs := make([]Process, 0, len(list))
	for _, n := range list {
		p, err := ProcessOf(n.name, n.pid)
		if err != nil {
			return nil, err
		}
		procs = append(procs, p)
	}
	return procs, nil
}

// StopProcesses ends the given processes in reverse order (the last started first, as Stop
// does): SIGTERM, then SIGKILL for one still running after grace. A process that no longer
// runs, or whose PID now belongs to another process, is skipped: nothing else is signalled.
// It returns once none of them runs, or with an error naming those that still do.
func StopProcesses(procs []Process, grace time.Duration) error {
	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		if !p.Running() {
			continue
		}
		if err := syscall.Kill(p.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("signalling %s (pid %d): %w", p.Name, p.PID, err))
			continue
		}
		if waitGone(p, grace) {
			continue
		}
		// Checked again right before the kill, which narrows the window for a reused PID to
		// the moment between the two calls.
		if p.Running() {
			if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				errs = append(errs, fmt.Errorf("killing %s (pid %d): %w", p.Name, p.PID, err))
				continue
			}
		}
		if !waitGone(p, 10*time.Second) {
			errs = append(errs, fmt.Errorf("%s (pid %d) still runs after SIGKILL", p.Name, p.PID))
		}
	}
	return errors.Join(errs...)
}

func waitGone(p Process, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for p.Running() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
	return true
}

// procStat returns the start time and state letter of a process from /proc/PID/stat.
func procStat(pid int) (start uint64, state string, err error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, "", err
	}
	// The command name is in parentheses and may itself contain spaces or parentheses.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, "", fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:]) // field 3 (state) onwards
	const startTimeIndex = 22 - 3
	if len(fields) <= startTimeIndex {
		return 0, "", fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	start, err = strconv.ParseUint(fields[startTimeIndex], 10, 64)
	return start, fields[0], err
}

// exitedState: Z (zombie) and X (dead) are processes that have ended but not been reaped.
func exitedState(state string) bool { return state == "Z" || state == "X" }
