package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// setParentDeathSignal makes the kernel send the child SIGTERM (a clean stop; nginx's master
// stops its workers) if the harness dies without stopping it (SIGKILL, a crash). The kernel
// ties it to the OS thread that started the child, so it is a backstop only: proc.stop, by
// PID, is the normal path, at the end of a run and on SIGINT or SIGTERM.
func setParentDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}

// selfCPU is the CPU time (user + system) this process (the harness: the load generator) has
// used, children not included.
func selfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// userHZ is the unit of the times in /proc/<pid>/stat (USER_HZ, 100 on every Linux port
// that Go supports).
const userHZ = 100

// treeCPU is the CPU time (user + system) used by process pid and its live children (nginx's
// master and workers; the engine and the runtime have none), from /proc, in 10 ms ticks.
func treeCPU(pid int) (time.Duration, error) {
	total, _, err := procCPU(strconv.Itoa(pid))
	if err != nil {
		return 0, err
	}
	for _, c := range childPIDs(pid) {
		if cpu, _, err := procCPU(strconv.Itoa(c)); err == nil {
			total += cpu
		}
	}
	return total, nil
}

// childPIDs lists the live children of pid, from /proc.
func childPIDs(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, ppid, err := procCPU(e.Name()); err == nil && ppid == pid {
			out = append(out, child)
		}
	}
	return out
}

// procCPU reads utime + stime and the parent of /proc/<pid>/stat.
func procCPU(pid string) (cpu time.Duration, ppid int, err error) {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces: fields count from
	// after its closing parenthesis, where field 3 (state) is index 0.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%s/stat: unexpected format", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/%s/stat: unexpected format", pid)
	}
	ppid, err = strconv.Atoi(f[1])
	if err != nil {
		return 0, 0, err
	}
	utime, err := strconv.ParseInt(f[11], 10, 64)
	if err != nil {
		return 0, 0, err
	}
	stime, err := strconv.ParseInt(f[12], 10, 64)
	if err != nil {
		return 0, 0, err
	}
	return time.Duration(utime+stime) * time.Second / userHZ, ppid, nil
}

// machineCPU is the time all CPUs together have spent busy, idle and stolen so far, from
// the cpu line of /proc/stat (in USER_HZ ticks: user nice system idle iowait irq softirq
// steal ...).
func machineCPU() (machineTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machineTimes{}, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return machineTimes{}, fmt.Errorf("/proc/stat: unexpected cpu line %q", line)
	}
	var t [8]time.Duration
	for i := range t {
		n, err := strconv.ParseInt(f[i+1], 10, 64)
		if err != nil {
			return machineTimes{}, fmt.Errorf("/proc/stat: %w", err)
		}
		t[i] = time.Duration(n) * time.Second / userHZ
	}
	return machineTimes{busy: t[0] + t[1] + t[2] + t[5] + t[6], idle: t[3] + t[4], steal: t[7]}, nil
}
