package localcluster

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// childStopTimeout is how long a component gets to exit after SIGTERM before it is killed.
const childStopTimeout = 20 * time.Second

// child is one component started by this package, so Stop only ever signals processes
// it created itself, by the PID it got from starting them.
type child struct {
	name    string
	args    []string
	cmd     *exec.Cmd
	logPath string
	log     *os.File
	done    chan struct{} // closed once Wait has returned and the process is reaped
	waitErr error
}

// startChild starts a component; detached puts it in a session of its own (see
// Options.Detached).
func startChild(name, path, logDir string, args []string, detached bool) (*child, error) {
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening log for %s: %w", name, err)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if detached {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, args: args, cmd: cmd, logPath: logPath, log: f, done: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		_ = f.Close()
		close(c.done)
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// watchdogScript kills the components and removes the cluster's folders if the test process
// ends without calling Stop (a test timeout, a panic, os.Exit). Its stdin is a pipe whose
// only writer is the test process, so read sees EOF exactly when that process is gone. A
// PID is killed only while it still runs the binary it was started from, which an orphan
// that has not exited does.
// Arguments: PID binary PID binary ... -- folder ...
const watchdogScript = `while read -r _; do :; done
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  if [ "/proc/$1/exe" -ef "$2" ]; then kill -KILL "$1" 2>/dev/null; fi
  shift 2
done
shift
rm -rf -- "$@"
`

// startWatchdog starts watchdogScript for the given PIDs (keyed by binary path) and folders.
// The returned child's stop (SIGTERM, which bash in the read builtin does not survive)
// disarms it; the pipe's write end stays open, unwritten, until then.
func startWatchdog(logDir string, pids map[int]string, dirs []string) (*child, io.Closer, error) {
	args := []string{"-c", watchdogScript, "localcluster-watchdog"}
	for pid, bin := range pids {
		args = append(args, strconv.Itoa(pid), bin)
	}
	args = append(args, "--")
	args = append(args, dirs...)
	logPath := filepath.Join(logDir, "watchdog.log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command("bash", args...)
	cmd.Stdout, cmd.Stderr = f, f
	stdin, err := cmd.StdinPipe()
	if err != nil {
		_ = f.Close()
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return nil, nil, fmt.Errorf("starting watchdog: %w", err)
	}
	c := &child{name: "watchdog", args: args, cmd: cmd, logPath: logPath, log: f, done: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		_ = f.Close()
		close(c.done)
	}()
	return c, stdin, nil
}

// findChild returns the PID of this process's child that runs binary with arg among its
// arguments: envtest starts etcd and kube-apiserver without telling their PIDs.
func findChild(binary, arg string) (int, error) {
	self := os.Getpid()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		return 0, err
	}
	for _, path := range stats {
		ppid, ok := parentPID(path)
		if !ok || ppid != self {
			continue
		}
		dir := filepath.Dir(path)
		cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
		if err != nil {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if len(argv) == 0 || filepath.Base(argv[0]) != filepath.Base(binary) || !slices.Contains(argv[1:], arg) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(dir))
		if err != nil {
			continue
		}
		return pid, nil
	}
	return 0, fmt.Errorf("no child process runs %s with %s", filepath.Base(binary), arg)
}

// parentPID reads the parent PID from a /proc/<pid>/stat file.
func parentPID(statPath string) (int, bool) {
	data, err := os.ReadFile(statPath)
	if err != nil {
		return 0, false
	}
	// The command name is in parentheses and may itself contain spaces or parentheses.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	fields := strings.Fields(s[i+1:]) // state, ppid, ...
	if len(fields) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(fields[1])
	return ppid, err == nil
}

// exited reports whether the process has ended, and how.
func (c *child) exited() (bool, error) {
	select {
	case <-c.done:
		return true, c.waitErr
	default:
		return false, nil
	}
}

// stop sends SIGTERM, then SIGKILL after childStopTimeout, and waits until the process is
// reaped. Signalling only a process whose Wait has not returned avoids hitting a reused PID.
func (c *child) stop() error {
	if done, _ := c.exited(); done {
		return nil
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signalling %s (pid %d): %w", c.name, c.pid(), err)
	}
	select {
	case <-c.done:
		return nil
	case <-time.After(childStopTimeout):
	}
	if err := c.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing %s (pid %d): %w", c.name, c.pid(), err)
	}
	<-c.done
	return fmt.Errorf("%s (pid %d) ignored SIGTERM for %s and was killed", c.name, c.pid(), childStopTimeout)
}

// exitError describes how a component ended, including the unexpected clean exit.
func exitError(waitErr error) error {
	if waitErr == nil {
		return errors.New("exit status 0")
	}
	return waitErr
}

// tailFile returns the last n lines of a file, or a note saying why it cannot.
func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)\n", path, err)
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	if len(lines) == 0 {
		return "(empty)\n"
	}
	return strings.Join(lines, "\n") + "\n"
}
