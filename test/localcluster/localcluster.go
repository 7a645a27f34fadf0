// Package localcluster starts a real, local Kubernetes control plane for end-to-end tests:
// etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, all as child
// processes of the test. GPU nodes are Node objects that kwok keeps Ready and whose pods it
// marks Running, so the real scheduler places pods by their nvidia.com/gpu requests and the
// real controllers (Deployments, ReplicaSets, ServiceAccounts, garbage collection, ...) act
// on them, with no container runtime.
//
// Pods meant for the simulated nodes must tolerate the taint every such node carries
// (use FakeNodeToleration); without it they stay Pending, which keeps ordinary test pods off
// nodes that run nothing.
//
// The binaries come from Options.BinDir, else KUBEBUILDER_ASSETS, else hack/testbin/build.sh
// (which builds them once into a cache folder and then only prints that folder).
//
// Call Stop when done. If the test process dies first (a go test -timeout, a panic, os.Exit),
// a small watchdog child (bash) kills the five components and removes their temporary
// folders, so a crashed run leaves no API server or etcd behind on a shared machine.
//
// Options.Detached is the other mode, for hack/local-cluster and `make demo`: the cluster
// outlives the program that started it, which records Processes and later ends exactly those
// with StopProcesses.
package localcluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Files envtest writes into the API server's certificate folder. The controller-manager signs
// legacy service-account tokens with the key the API server verifies them with, and the
// components trust the CA that signed envtest's user certificates.
const (
	saSigningKeyFile = "sa-signer.key"
	clientCAFile     = "client-cert-auth-ca.crt"
)

// kwokStagesFile is the stage configuration hack/testbin/build.sh writes beside kwok.
const kwokStagesFile = "kwok-stages.yaml"

// Generous because the machines that run these tests are small and shared.
const (
	componentStartTimeout = 2 * time.Minute
	componentStopTimeout  = 30 * time.Second
	pollInterval          = 250 * time.Millisecond
	logTailLines          = 40
)

var requiredBinaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", kwokStagesFile}

// Options configure Start. The zero value is usable.
type Options struct {
	// BinDir holds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
	// kwok and kwok-stages.yaml. Empty: KUBEBUILDER_ASSETS, else hack/testbin/build.sh.
	BinDir string
	// LogDir receives one <component>.log per component (stdout and stderr together), so a
	// failing test can show them. Empty: a folder inside the cluster's folder, removed by Stop.
	LogDir string
	// Dir holds everything the cluster writes (kubeconfig, etcd's data, certificates, logs)
	// instead of a new temporary folder. It must not exist or be empty, since Stop removes it.
	Dir string
	// Detached leaves the components running after this process exits: no watchdog is
	// armed, and the components Start runs itself get their own session, so neither the end
	// of this process nor a terminal hangup reaches them (envtest already gives etcd and the
	// API server their own process group). The caller records Processes and ends them later
	// with StopProcesses. Requires Dir, so that the cluster's files are found again.
	Detached bool
}

// Cluster is a running local control plane. Its methods are safe for concurrent use.
type Cluster struct {
	binDir     string
	workDir    string
	detached   bool
	logDir     string
	kubeconfig string
	config     *rest.Config
	client     kubernetes.Interface

	env      *envtest.Environment
	envLogs  []*os.File     // etcd's and kube-apiserver's logs, written by envtest's processes
	envPIDs  map[string]int // etcd and kube-apiserver, which envtest started and stops
	children []*child       // started after the API server, in start order

	watchdog      *child
	watchdogStdin io.Closer

	stopOnce sync.Once
	stopErr  error
}

// Start starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, and
// returns once the API server is healthy, the controller-manager has created the default
// ServiceAccount in namespace default, and the scheduler and kwok report ready. ctx bounds
// the waits (envtest's start of etcd and the API server has its own two-minute limit); the
// components run until Stop. On error everything started is stopped and the error carries
// the tail of each component's log.
func Start(ctx context.Context, opts Options) (cl *Cluster, retErr error) {
	binDir, err := resolveBinDir(opts.BinDir)
	if err != nil {
		return nil, err
	}
	for _, b := range requiredBinaries {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			return nil, fmt.Errorf("localcluster: %s missing from %s: %w", b, binDir, err)
		}
	}
	if opts.Detached && opts.Dir == "" {
		return nil, errors.New("localcluster: Detached needs Dir")
	}
	workDir, err := makeWorkDir(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("localcluster: %w", err)
	}
	c := &Cluster{binDir: binDir, workDir: workDir, logDir: opts.LogDir, detached: opts.Detached}
	if c.logDir == "" {
		c.logDir = filepath.Join(workDir, "logs")
	}
	defer func() {
		if retErr != nil {
			logs := c.Logs()
			_ = c.Stop()
			cl, retErr = nil, fmt.Errorf("localcluster: %w\n%s", retErr, logs)
		}
	}()
	if err := os.MkdirAll(c.logDir, 0o755); err != nil {
		return c, err
	}
	if err := c.startAPIServer(); err != nil {
		return c, err
	}
	cs, err := kubernetes.NewForConfig(c.config)
	if err != nil {
		return c, err
	}
	c.client = cs
	if err := c.startComponents(ctx); err != nil {
		return c, err
	}
	return c, nil
}

func (c *Cluster) startAPIServer() error {
	etcdLog, err := os.Create(filepath.Join(c.logDir, "etcd.log"))
	if err != nil {
		return err
	}
	apiLog, err := os.Create(filepath.Join(c.logDir, "kube-apiserver.log"))
	if err != nil {
		_ = etcdLog.Close()
		return err
	}
	c.envLogs = []*os.File{etcdLog, apiLog}
	api := &envtest.APIServer{Path: filepath.Join(c.binDir, "kube-apiserver"), Out: apiLog, Err: apiLog}
	etcd := &envtest.Etcd{Path: filepath.Join(c.binDir, "etcd"), Out: etcdLog, Err: etcdLog}
	// In the cluster's own folder rather than envtest's temporary ones, so that everything a
	// detached cluster leaves is in one place and removed with it.
	api.CertDir, etcd.DataDir = filepath.Join(c.workDir, "certs"), filepath.Join(c.workDir, "etcd")
	for _, d := range []string{api.CertDir, etcd.DataDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	args := api.Configure()
	// envtest turns the ServiceAccount admission plugin off because it runs no
	// controller-manager; this cluster runs one, so pods get the admission real clusters apply.
	args.Disable("disable-admission-plugins")
	// The API server listens on 127.0.0.1 only, yet would publish the host's address in the
	// "kubernetes" Service's endpoints; better none than ones where nothing answers.
	args.Set("endpoint-reconciler-type", "none")
	c.env = &envtest.Environment{
		// Paths are set explicitly so that KUBEBUILDER_ASSETS cannot override Options.BinDir.
		ControlPlane: envtest.ControlPlane{
			APIServer:   api,
			Etcd:        etcd,
			KubectlPath: filepath.Join(c.binDir, "kubectl"),
		},
		ControlPlaneStartTimeout: componentStartTimeout,
		ControlPlaneStopTimeout:  componentStopTimeout,
	}
	cfg, err := c.env.Start()
	if err != nil {
		return fmt.Errorf("starting etcd and kube-apiserver: %w", err)
	}
	c.config = cfg
	c.kubeconfig = filepath.Join(c.workDir, "kubeconfig")
	if err := os.WriteFile(c.kubeconfig, c.env.KubeConfig, 0o600); err != nil {
		return err
	}
	return nil
}

func (c *Cluster) startComponents(ctx context.Context) error {
	certDir := c.env.ControlPlane.APIServer.CertDir
	rootCA := filepath.Join(c.workDir, "apiserver-ca.crt")
	if err := os.WriteFile(rootCA, c.config.CAData, 0o644); err != nil {
		return err
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	kcmPort, schedPort, kwokPort := ports[0], ports[1], ports[2]
	// The secure ports of the controller-manager and scheduler accept the admin client
	// certificate (for /metrics) and ask the API server about tokens. The CA is given as a file
	// and the in-cluster lookup skipped because envtest's API server has no front-proxy CA,
	// and looking for one logs an error every few seconds.
	servingAuth := []string{
		"--authentication-kubeconfig=" + c.kubeconfig,
		"--authorization-kubeconfig=" + c.kubeconfig,
		"--authentication-skip-lookup",
		"--client-ca-file=" + filepath.Join(certDir, clientCAFile),
	}
	kcm := []string{
		"--kubeconfig=" + c.kubeconfig,
		"--leader-elect=false",
		"--controllers=*",
		"--service-account-private-key-file=" + filepath.Join(certDir, saSigningKeyFile),
		"--root-ca-file=" + rootCA,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(kcmPort),
		"--cert-dir=" + filepath.Join(c.workDir, "kube-controller-manager"),
	}
	kcm = append(kcm, servingAuth...)
	sched := []string{
		"--kubeconfig=" + c.kubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(schedPort),
		"--cert-dir=" + filepath.Join(c.workDir, "kube-scheduler"),
	}
	sched = append(sched, servingAuth...)
	kwok := []string{
		"--kubeconfig=" + c.kubeconfig,
		"--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector=" + FakeNodeAnnotation + "=" + FakeNodeValue,
		"--config=" + filepath.Join(c.binDir, kwokStagesFile),
		// The stages set a node's Ready condition once and never refresh it; a renewed Lease is
		// the heartbeat the node lifecycle controller accepts instead, so fake nodes do not go
		// NotReady (and get their pods evicted) 50 s after they appear.
		"--node-lease-duration-seconds=40",
		// Kept clear of the API server's service range (10.0.0.0/24), which is kwok's default.
		"--cidr=10.244.0.0/16",
		"--server-address=127.0.0.1:" + strconv.Itoa(kwokPort),
	}
	specs := []struct {
		name string
		args []string
		url  string
	}{
		{"kube-controller-manager", kcm, fmt.Sprintf("https://127.0.0.1:%d/healthz", kcmPort)},
		{"kube-scheduler", sched, fmt.Sprintf("https://127.0.0.1:%d/readyz", schedPort)},
		{"kwok", kwok, fmt.Sprintf("http://127.0.0.1:%d/healthz", kwokPort)},
	}
	for _, s := range specs {
		ch, err := startChild(s.name, filepath.Join(c.binDir, s.name), c.logDir, s.args, c.detached)
		if err != nil {
			return err
		}
		c.children = append(c.children, ch)
	}
	if err := c.findEnvPIDs(); err != nil {
		return err
	}
	if !c.detached {
		if err := c.startWatchdog(); err != nil {
			return err
		}
	}

	ctx, cancel := context.WithTimeout(ctx, componentStartTimeout)
	defer cancel()
	for i, s := range specs {
		if err := c.waitHealthy(ctx, c.children[i], s.url); err != nil {
			return err
		}
	}
	// The ServiceAccount controller creating "default" proves the controller-manager is
	// reconciling, not only serving /healthz.
	return c.poll(ctx, "the default ServiceAccount in namespace default", func() (bool, error) {
		_, err := c.client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
}

// findEnvPIDs learns the PIDs of etcd and kube-apiserver, which envtest does not tell.
func (c *Cluster) findEnvPIDs() error {
	cp := c.env.ControlPlane
	etcdPID, err := findChild(cp.Etcd.Path, "--data-dir="+cp.Etcd.DataDir)
	if err != nil {
		return err
	}
	apiPID, err := findChild(cp.APIServer.Path, "--cert-dir="+cp.APIServer.CertDir)
	if err != nil {
		return err
	}
	c.envPIDs = map[string]int{"etcd": etcdPID, "kube-apiserver": apiPID}
	return nil
}

// startWatchdog arms the clean-up that runs if this process dies without calling Stop.
func (c *Cluster) startWatchdog() error {
	cp := c.env.ControlPlane
	pids := map[int]string{c.envPIDs["etcd"]: cp.Etcd.Path, c.envPIDs["kube-apiserver"]: cp.APIServer.Path}
	for _, ch := range c.children {
		pids[ch.pid()] = ch.cmd.Path
	}
	var err error
	c.watchdog, c.watchdogStdin, err = startWatchdog(c.logDir, pids, []string{c.workDir, cp.Etcd.DataDir, cp.APIServer.CertDir})
	return err
}

// waitHealthy polls a component's health URL. Components serve HTTPS with a self-signed
// certificate on loopback, so it is not verified.
func (c *Cluster) waitHealthy(ctx context.Context, ch *child, url string) error {
	hc := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // loopback health check of a self-signed child
	}
	defer hc.CloseIdleConnections()
	return c.poll(ctx, ch.name+" at "+url, func() (bool, error) {
		if done, err := ch.exited(); done {
			return false, fmt.Errorf("%s exited during start: %w", ch.name, exitError(err))
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return false, nil //nolint:nilerr // not listening yet; the exit check above catches a crash
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}

// poll calls cond until it reports done, returns an error, a started component dies, or ctx
// ends.
func (c *Cluster) poll(ctx context.Context, what string, cond func() (bool, error)) error {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		done, err := cond()
		if err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if done {
			return nil
		}
		for _, ch := range c.children {
			if exited, err := ch.exited(); exited {
				return fmt.Errorf("waiting for %s: %s exited: %w", what, ch.name, exitError(err))
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
}

// Config reaches the API server as a member of system:masters. Callers may modify the copy.
func (c *Cluster) Config() *rest.Config { return rest.CopyConfig(c.config) }

// KubeconfigPath is a kubeconfig file for the same admin user, for kubectl or for a manager
// started as a separate process with --kubeconfig. It is removed by Stop.
func (c *Cluster) KubeconfigPath() string { return c.kubeconfig }

// BinDir is the folder the binaries were taken from (it also holds kubectl).
func (c *Cluster) BinDir() string { return c.binDir }

// LogDir is the folder holding each component's log.
func (c *Cluster) LogDir() string { return c.logDir }

// Client is a client-go clientset for the admin user.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// PIDs maps each component (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
// kwok) to its process ID.
func (c *Cluster) PIDs() map[string]int {
	pids := maps.Clone(c.envPIDs)
	for _, ch := range c.children {
		pids[ch.name] = ch.pid()
	}
	return pids
}

// Kubectl runs the cluster's kubectl with its kubeconfig and returns the combined output.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, "kubectl"), append([]string{"--kubeconfig=" + c.kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Logs returns the last lines of every component's log, for a failing test to print. Call
// it before Stop when LogDir was left empty, since Stop removes the default log folder.
func (c *Cluster) Logs() string {
	var b strings.Builder
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"} {
		path := filepath.Join(c.logDir, name+".log")
		if _, err := os.Stat(path); err != nil {
			continue
		}
		fmt.Fprintf(&b, "===== %s (last %d lines of %s) =====\n", name, logTailLines, path)
		b.WriteString(tailFile(path, logTailLines))
	}
	return b.String()
}

// Stop disarms the watchdog, stops kwok, the scheduler and the controller-manager (reverse
// start order, each by the PID it was started with: SIGTERM, then SIGKILL after 20 s), waits
// for them to exit, then has envtest stop the API server and etcd, and removes the temporary
// folder. It touches no process it did not start. Calling it again returns the first result.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		var errs []error
		// Disarmed first, so that it cannot act on PIDs that Stop is about to free.
		if c.watchdog != nil {
			errs = append(errs, c.watchdog.stop())
			_ = c.watchdogStdin.Close()
		}
		for i := len(c.children) - 1; i >= 0; i-- {
			errs = append(errs, c.children[i].stop())
		}
		if c.env != nil {
			if err := c.env.Stop(); err != nil {
				errs = append(errs, fmt.Errorf("stopping kube-apiserver and etcd: %w", err))
			}
		}
		for _, f := range c.envLogs {
			_ = f.Close()
		}
		if c.workDir != "" {
			errs = append(errs, os.RemoveAll(c.workDir))
		}
		c.stopErr = errors.Join(errs...)
	})
	return c.stopErr
}

// makeWorkDir creates dir, which must not exist or be empty (Stop removes it), or a
// temporary folder when dir is empty.
func makeWorkDir(dir string) (string, error) {
	if dir == "" {
		return os.MkdirTemp("", "helixflow-localcluster-")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	entries, err := os.ReadDir(abs)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return "", err
	case len(entries) > 0:
		return "", fmt.Errorf("%s is not empty", abs)
	}
	return abs, os.MkdirAll(abs, 0o700)
}

// resolveBinDir picks the binary folder: explicit, KUBEBUILDER_ASSETS, or the build script.
func resolveBinDir(dir string) (string, error) {
	if dir != "" {
		return dir, nil
	}
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir, nil
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("localcluster: cannot locate the package source to find hack/testbin/build.sh")
	}
	script := filepath.Join(filepath.Dir(file), "..", "..", "hack", "testbin", "build.sh")
	cmd := exec.Command("bash", script)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("localcluster: building test binaries with %s: %w", script, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// freePorts asks the kernel for n distinct free loopback ports. Another process could take
// one before the component binds it; the component then exits and Start reports it.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
