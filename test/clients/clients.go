// Package clients gives tests the real clients the data plane is tested with: the official
// `openai` npm SDK, installed into test/clients/node by hack/npm-install.sh, Debian's chromium
// (a real browser, for pages that call the runtime), installed by hack/install-chromium.sh,
// and Debian's nginx, installed by hack/install-nginx.sh. Each install runs at most once per
// test process and is a fast no-op when already done.
//
// A test skips (t.Skipf, with the error) only when an install failed for lack of network;
// any other failure fails the test, so a broken setup is never mistaken for a skip.
package clients

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// RepoRoot returns the repository root: found from this source file's location, or (when
// built with -trimpath) by walking up from the working directory to the go.mod of module
// github.com/helixflow/helixflow. It returns "" when neither works.
func RepoRoot() string {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		root := filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
		if _, err := os.Stat(filepath.Join(root, "hack", "npm-install.sh")); err == nil {
			return root
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			bytes.HasPrefix(b, []byte("module github.com/helixflow/helixflow\n")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

type install struct {
	once   sync.Once
	script string
	out    string // stdout, trimmed: the path the script prints
	log    string // stderr
	err    error
}

func (in *install) run() {
	in.once.Do(func() {
		root := RepoRoot()
		if root == "" {
			in.err = errors.New("cannot find the repository root")
			return
		}
		cmd := exec.Command("bash", filepath.Join(root, "hack", in.script))
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		in.err = cmd.Run()
		in.out, in.log = strings.TrimSpace(stdout.String()), stderr.String()
		if in.err == nil && in.out == "" {
			in.err = fmt.Errorf("hack/%s printed no path", in.script)
		}
	})
}

// get returns the installed path, or skips (network) or fails (anything else) tb.
func (in *install) get(tb testing.TB, what string) string {
	tb.Helper()
	in.run()
	if in.err == nil {
		return in.out
	}
	if isNetworkFailure(in.log) {
		tb.Skipf("skipping: installing %s failed for lack of network (hack/%s): %v\n%s", what, in.script, in.err, tail(in.log))
	}
	tb.Fatalf("installing %s failed (hack/%s): %v\n%s", what, in.script, in.err, tail(in.log))
	return ""
}

var (
	npmInstall      = &install{script: "npm-install.sh"}
	nginxInstall    = &install{script: "install-nginx.sh"}
	chromiumInstall = &install{script: "install-chromium.sh"}
)

// NodeSDKDir installs the pinned `openai` npm SDK (once per process, no-op when present) and
// returns test/clients/node, the folder whose node_modules holds it. Node scripts that import
// "openai" must live in that folder (module resolution starts at the script), or run with
// that folder as working directory for `node --input-type=module`.
func NodeSDKDir(tb testing.TB) string {
	tb.Helper()
	return npmInstall.get(tb, "the openai npm SDK")
}

// NginxPath makes sure Debian's nginx is installed (once per process, no-op when present)
// and returns the path of its binary.
func NginxPath(tb testing.TB) string {
	tb.Helper()
	return nginxInstall.get(tb, "nginx")
}

// ChromiumPath makes sure Debian's chromium is installed (once per process, no-op when
// present) and returns the path of its binary.
func ChromiumPath(tb testing.TB) string {
	tb.Helper()
	return chromiumInstall.get(tb, "chromium")
}

// OpenPage opens url in a headless chromium of its own (a fresh profile) that runs until ctx
// ends or the test does. exited is closed when chromium has ended (killed, or dead on its
// own); its output goes to the test log when the test fails.
func OpenPage(ctx context.Context, tb testing.TB, url string) (exited <-chan struct{}) {
	tb.Helper()
	bin := ChromiumPath(tb)
	ctx, cancel := context.WithCancel(ctx)
	args := []string{"--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
		"--disable-extensions", "--disable-dev-shm-usage", "--disable-crash-reporter", "--disable-breakpad",
		"--user-data-dir=" + tb.TempDir()}
	if os.Geteuid() == 0 {
		args = append(args, "--no-sandbox") // chromium refuses to run as root otherwise
	}
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	killTree(cmd) // chromium's helpers (zygote, renderers) go with it
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		tb.Fatalf("starting chromium: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	tb.Cleanup(func() {
		cancel()
		<-done
		if tb.Failed() {
			tb.Logf("chromium's output:\n%s", tail(out.String()))
		}
	})
	return done
}

// NodeCommand returns a command running `node <script> args...` in NodeSDKDir, where script is
// a path relative to that folder (for example "smoke.mjs"). The caller sets Env (append to
// os.Environ() for PATH) and runs it.
func NodeCommand(ctx context.Context, tb testing.TB, script string, args ...string) *exec.Cmd {
	tb.Helper()
	dir := NodeSDKDir(tb)
	cmd := exec.CommandContext(ctx, "node", append([]string{script}, args...)...)
	cmd.Dir = dir
	return cmd
}

// networkErrors are what npm and apt print when a registry cannot be reached.
var networkErrors = []string{
	"ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH",
	"EHOSTUNREACH", "network request", "getaddrinfo",
	"Temporary failure resolving", "Could not resolve", "Failed to fetch", "Unable to fetch",
	"Could not connect", "Connection timed out", "Network is unreachable",
}

func isNetworkFailure(log string) bool {
	for _, s := range networkErrors {
		if strings.Contains(log, s) {
			return true
		}
	}
	return false
}

func tail(s string) string {
	const max = 4000
	if len(s) > max {
		return "..." + s[len(s)-max:]
	}
	return s
}
