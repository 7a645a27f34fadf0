package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Binaries the harness builds and runs as child processes, as they run in production: each
// with its own Go scheduler, GOMAXPROCS and GC, none sharing the load generator's.
const (
	engineBinary  = "helixflow-test-engine"
	runtimeBinary = "runtime"
)

// buildBinaries builds the test engine and the runtime into dir (one `go build`, from the
// repository root) and returns their paths.
func buildBinaries(ctx context.Context, root, dir string) (engine, runtime string, err error) {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator),
		"./test/testengine/cmd/"+engineBinary, "./cmd/"+runtimeBinary)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("go build %s and %s: %w: %s", engineBinary, runtimeBinary, err, lastLines(string(out), 20))
	}
	return filepath.Join(dir, engineBinary), filepath.Join(dir, runtimeBinary), nil
}

// proc is a child process of the harness (the engine, runtime serve, nginx's master). Its
// stdout and stderr are kept (the last 64 KiB) for error messages.
type proc struct {
	name    string
	cmd     *exec.Cmd
	out     *tailBuffer
	waited  chan struct{}
	waitErr error
}

func startProc(name string, cmd *exec.Cmd) (*proc, error) {
	out := &tailBuffer{max: 64 << 10}
	cmd.Stdout, cmd.Stderr = out, out
	// A backstop: should the harness die without stopping it, the kernel sends the child
	// SIGTERM. The normal path is stop, by PID.
	setParentDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, out: out, waited: make(chan struct{})}
	go func() { p.waitErr = cmd.Wait(); close(p.waited) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited returns, once the process has exited, how it ended and its last output.
func (p *proc) exited() (bool, string) {
	select {
	case <-p.waited:
		status := "exit status 0"
		if p.waitErr != nil {
			status = p.waitErr.Error()
		}
		return true, fmt.Sprintf("%s (pid %d) exited (%s): %s", p.name, p.pid(), status, lastLines(p.out.String(), 20))
	default:
		return false, ""
	}
}

// waitFor polls check every 50 ms until it returns "" (ready), the process exits, ctx ends
// or timeout passes. check returns what it is still waiting for.
func (p *proc) waitFor(ctx context.Context, timeout time.Duration, what string, check func() string) error {
	deadline := time.Now().Add(timeout)
	for {
		if gone, why := p.exited(); gone {
			return errors.New(why)
		}
		last := check()
		if last == "" {
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%s (pid %d): no %s within %s (last: %s); output: %s", p.name, p.pid(), what, timeout, last,
				lastLines(p.out.String(), 20))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop ends the process by its PID: SIGTERM (each of the three shuts down cleanly on it:
// nginx's master stops its workers), then after grace SIGKILL to it and to the children it
// had (nginx's workers), so nothing outlives the harness. It returns how the process ended
// when that was not a clean exit.
func (p *proc) stop(grace time.Duration) error {
	if gone, why := p.exited(); gone {
		if p.waitErr != nil {
			return errors.New(why)
		}
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.waited:
		if p.waitErr != nil {
			return fmt.Errorf("%s (pid %d) ended with %w after SIGTERM: %s", p.name, p.pid(), p.waitErr, lastLines(p.out.String(), 10))
		}
		return nil
	case <-time.After(grace):
	}
	children := childPIDs(p.pid())
	_ = p.cmd.Process.Kill()
	for _, c := range children {
		if cp, err := os.FindProcess(c); err == nil {
			_ = cp.Kill()
		}
	}
	<-p.waited
	return fmt.Errorf("%s (pid %d) did not stop within %s of SIGTERM: killed it and %d children", p.name, p.pid(), grace, len(children))
}

// tailBuffer keeps the last max bytes written to it; safe for the command's writer
// goroutines and readers.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
