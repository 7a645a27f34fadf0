package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"time"

	"github.com/helixflow/helixflow/test/clients"
)

// nginxUnavailable means nginx is not installed and could not be installed: the path is
// skipped with this reason.
type nginxUnavailable struct{ reason string }

func (e *nginxUnavailable) Error() string { return e.reason }

// findNginx returns Debian's nginx binary: on PATH, in /usr/sbin, or installed by
// hack/install-nginx.sh (apt-get).
func findNginx(logf func(string, ...any)) (string, error) {
	if p, ok := installedNginx(); ok {
		return p, nil
	}
	root := clients.RepoRoot()
	if root == "" {
		return "", &nginxUnavailable{"nginx is not installed, and the repository root (for hack/install-nginx.sh) was not found"}
	}
	if logf != nil {
		logf("nginx not found; running hack/install-nginx.sh")
	}
	cmd := exec.Command("bash", filepath.Join(root, "hack", "install-nginx.sh"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", &nginxUnavailable{fmt.Sprintf("nginx is not installed and hack/install-nginx.sh failed (%v): %s", err, lastLines(stderr.String(), 5))}
	}
	return strings.TrimSpace(stdout.String()), nil
}

// installedNginx finds an installed nginx (PATH, then /usr/sbin) without installing one.
func installedNginx() (string, bool) {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p, true
	}
	if st, err := os.Stat("/usr/sbin/nginx"); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
		return "/usr/sbin/nginx", true
	}
	return "", false
}

// nginxProxy is nginx running as a plain reverse proxy in front of the engine, its own
// processes (master and workers).
type nginxProxy struct {
	proc    *proc
	dir     string
	url     string
	version string
	workers int
}

// nginxConf is a plain reverse proxy, tuned the way one would for an upstream on loopback:
// keep-alive to the engine (upstream keepalive, HTTP/1.1, no "Connection: close"), no access
// log, no response buffering (the runtime does not buffer either, and streams need it off).
// keepalive_requests is raised on both sides so nginx does not close a client or engine
// connection every 1000 requests (its default) when Go's servers and clients never do:
// reconnects would count against nginx, not measure it. Every path nginx writes is in dir,
// so it runs as any user.
func nginxConf(dir, listen, upstream, workers, runAs string) string {
	var b strings.Builder
	if runAs != "" {
		// Only as root: the workers would otherwise switch to "nobody", which cannot write dir.
		fmt.Fprintf(&b, "user %s;\n", runAs)
	}
	fmt.Fprintf(&b, `worker_processes %s;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    client_body_temp_path %[2]s/client_body;
    proxy_temp_path %[2]s/proxy;
    fastcgi_temp_path %[2]s/fastcgi;
    uwsgi_temp_path %[2]s/uwsgi;
    scgi_temp_path %[2]s/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;

    upstream engine {
        server %[3]s;
        keepalive 64;
        keepalive_requests 1000000;
    }

    server {
        listen %[4]s;
        location / {
            proxy_pass http://engine;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
`, workers, dir, upstream, listen)
	return b.String()
}

func startNginx(ctx context.Context, engineURL, workers string, logf func(string, ...any)) (*nginxProxy, error) {
	bin, err := findNginx(logf)
	if err != nil {
		return nil, err
	}
	var version string
	if out, err := exec.Command(bin, "-v").CombinedOutput(); err == nil {
		version = strings.TrimPrefix(strings.TrimSpace(string(out)), "nginx version: ")
	} else {
		return nil, &nginxUnavailable{fmt.Sprintf("%s -v failed: %v: %s", bin, err, out)}
	}
	// nginx is given a port found free a moment before (it cannot report one the kernel
	// picked); should another process take it in between, nginx fails to bind and is
	// started again on another.
	for attempt := 1; ; attempt++ {
		n, err := launchNginx(ctx, bin, engineURL, workers)
		if err == nil {
			n.version = version
			return n, nil
		}
		if attempt == 3 || !strings.Contains(err.Error(), "Address already in use") {
			return nil, err
		}
		if logf != nil {
			logf("nginx could not bind its port, taken in the meantime; starting it on another")
		}
	}
}

// launchNginx starts nginx with its configuration in a new folder, listening on a free
// loopback port, and waits until it proxies.
func launchNginx(ctx context.Context, bin, engineURL, workers string) (*nginxProxy, error) {
	dir, err := os.MkdirTemp("", "helixflow-bench-nginx-")
	if err != nil {
		return nil, err
	}
	listen, err := freeAddr()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	runAs := ""
	if os.Geteuid() == 0 {
		if u, err := user.Current(); err == nil {
			runAs = u.Username
			if g, err := user.LookupGroupId(u.Gid); err == nil {
				runAs += " " + g.Name
			}
		}
	}
	conf := nginxConf(dir, listen, strings.TrimPrefix(engineURL, "http://"), workers, runAs)
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cmd := exec.Command(bin, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-g", "daemon off;")
	p, err := startProc("nginx", cmd)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	n := &nginxProxy{proc: p, dir: dir, url: "http://" + listen}
	if err := n.waitReady(ctx); err != nil {
		_ = n.close()
		return nil, err
	}
	n.workers = len(childPIDs(p.pid()))
	return n, nil
}

// waitReady waits until nginx proxies the engine's /health.
func (n *nginxProxy) waitReady(ctx context.Context) error {
	err := n.proc.waitFor(ctx, 10*time.Second, "proxied /health", func() string {
		resp, err := http.Get(n.url + "/health")
		if err != nil {
			return err.Error()
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return resp.Status
		}
		return ""
	})
	if err != nil {
		return fmt.Errorf("%w%s", err, n.errorLog())
	}
	return nil
}

func (n *nginxProxy) errorLog() string {
	b, err := os.ReadFile(filepath.Join(n.dir, "error.log"))
	if err != nil || len(b) == 0 {
		return ""
	}
	return "\nerror.log: " + lastLines(string(b), 10)
}

// close stops nginx by its master's PID (SIGTERM: fast shutdown of the master and its
// workers; SIGKILL to the master and the workers after 5 s) and removes its folder.
func (n *nginxProxy) close() error {
	err := n.proc.stop(5 * time.Second)
	_ = os.RemoveAll(n.dir)
	return err
}
