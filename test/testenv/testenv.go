// Package testenv starts a real kube-apiserver and etcd (controller-runtime envtest) with
// HelixFlow's CRDs and the cert-manager and Gateway API CRDs the operator writes to, taken
// from those projects' own Go modules. A test package starts it once, in TestMain.
//
// The binaries come from KUBEBUILDER_ASSETS when set (make test sets it), otherwise
// hack/testbin/build.sh is run, which builds them from Go modules once and then reuses them.
package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/helixflow/helixflow/internal/scheme"
)

// Module paths whose CRDs are installed beside ours, and the CRD files taken from each.
const (
	certManagerModule = "github.com/cert-manager/cert-manager"
	gatewayAPIModule  = "sigs.k8s.io/gateway-api"
)

var (
	certManagerCRDs = []string{
		"deploy/crds/cert-manager.io_certificates.yaml",
		"deploy/crds/cert-manager.io_certificaterequests.yaml",
		"deploy/crds/cert-manager.io_issuers.yaml",
		"deploy/crds/cert-manager.io_clusterissuers.yaml",
	}
	gatewayAPICRDs = []string{
		"config/crd/standard/gateway.networking.k8s.io_gatewayclasses.yaml",
		"config/crd/standard/gateway.networking.k8s.io_gateways.yaml",
		"config/crd/standard/gateway.networking.k8s.io_httproutes.yaml",
		"config/crd/standard/gateway.networking.k8s.io_grpcroutes.yaml",
		"config/crd/standard/gateway.networking.k8s.io_referencegrants.yaml",
	}
)

// Env is a running API server with the CRDs installed.
type Env struct {
	// Config reaches the API server as an admin.
	Config *rest.Config
	// Client is a direct (uncached) client with Scheme.
	Client client.Client
	// Scheme has client-go kinds, HelixFlow's, cert-manager's and Gateway API's.
	Scheme *k8sruntime.Scheme
	// BinDir holds etcd, kube-apiserver, kubectl and the other test binaries.
	BinDir string
	// RepoRoot is the repository's top folder.
	RepoRoot string
	// CRDs are the CustomResourceDefinitions that were installed.
	CRDs []*apiextensionsv1.CustomResourceDefinition

	env *envtest.Environment
}

// Scheme returns HelixFlow's scheme (which has cert-manager and Gateway API types) plus
// CustomResourceDefinitions, which tests install and remove.
func Scheme() *k8sruntime.Scheme {
	s := scheme.New()
	utilruntime.Must(apiextensionsv1.AddToScheme(s))
	return s
}

// Start builds (or reuses) the test binaries and starts etcd and kube-apiserver.
func Start() (*Env, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	binDir, err := binaryDir(root)
	if err != nil {
		return nil, err
	}
	var extra []string
	for mod, files := range map[string][]string{certManagerModule: certManagerCRDs, gatewayAPIModule: gatewayAPICRDs} {
		dir, err := moduleDir(root, mod)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			extra = append(extra, filepath.Join(dir, f))
		}
	}
	s := Scheme()
	env := &envtest.Environment{
		BinaryAssetsDirectory: binDir,
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		CRDInstallOptions:     envtest.CRDInstallOptions{Paths: extra, Scheme: s},
		ErrorIfCRDPathMissing: true,
		Scheme:                s,
	}
	// envtest's default Service range is a /24: 254 Services. Benchmarks create thousands.
	env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", "10.96.0.0/16")
	// /debug/pprof for the benchmarks' -apiserver-cpuprofile (envtest turns it off).
	env.ControlPlane.GetAPIServer().Configure().Set("profiling", "true")
	cfg, err := env.Start()
	if err != nil {
		// envtest leaves etcd and kube-apiserver running when a later step (installing the
		// CRDs) fails; stop them or they outlive the test binary.
		_ = env.Stop()
		return nil, fmt.Errorf("starting envtest (binaries in %s): %w", binDir, err)
	}
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		_ = env.Stop()
		return nil, fmt.Errorf("creating client: %w", err)
	}
	return &Env{Config: cfg, Client: c, Scheme: s, BinDir: binDir, RepoRoot: root, CRDs: env.CRDs, env: env}, nil
}

// Stop stops the API server and etcd.
func (e *Env) Stop() error { return e.env.Stop() }

// Run is the body of a TestMain: it starts the environment, stores it in *env, runs the
// tests and stops the environment. It returns the exit code for os.Exit.
func Run(m *testing.M, env **Env) int {
	e, err := Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
		return 1
	}
	*env = e
	code := m.Run()
	if err := e.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "testenv: stopping: %v\n", err)
	}
	return code
}

// Kubeconfig writes a kubeconfig for the admin user to dir and returns its path.
func (e *Env) Kubeconfig(dir string) (string, error) {
	user, err := e.env.AddUser(envtest.User{Name: "helixflow-test-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return "", fmt.Errorf("adding kubeconfig user: %w", err)
	}
	data, err := user.KubeConfig()
	if err != nil {
		return "", fmt.Errorf("rendering kubeconfig: %w", err)
	}
	path := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return "", err
	}
	return path, nil
}

// Kubectl runs the built kubectl against the environment and returns its combined output.
func (e *Env) Kubectl(ctx context.Context, kubeconfig string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(e.BinDir, "kubectl"), append([]string{"--kubeconfig", kubeconfig}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func repoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("cannot locate the testenv package source")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..")), nil
}

// binaryDir returns KUBEBUILDER_ASSETS, or builds the binaries with the project's script.
func binaryDir(root string) (string, error) {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir, nil
	}
	cmd := exec.Command("bash", filepath.Join(root, "hack", "testbin", "build.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("building test binaries with hack/testbin/build.sh: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// moduleDir finds a dependency's source folder in the module cache, downloading it if needed.
func moduleDir(root, module string) (string, error) {
	cmd := exec.Command("go", "mod", "download", "-json", module)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("locating module %s: %w: %s", module, err, stderr.String())
	}
	var info struct{ Dir string }
	if err := json.Unmarshal(out, &info); err != nil {
		return "", fmt.Errorf("locating module %s: parsing go mod download output: %w", module, err)
	}
	if info.Dir == "" {
		return "", fmt.Errorf("locating module %s: go mod download reported no folder", module)
	}
	return info.Dir, nil
}

// Lazy is an environment started on first use, for packages whose unit tests, benchmarks and
// fuzz workers (which run TestMain too) should not pay for an API server they do not use.
type Lazy struct {
	once sync.Once
	env  *Env
	err  error
}

// Get returns the environment, starting it on first use; it skips the test with -short.
func (l *Lazy) Get(t testing.TB) *Env {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a real API server (envtest)")
	}
	l.once.Do(func() { l.env, l.err = Start() })
	if l.err != nil {
		t.Fatalf("starting envtest: %v", l.err)
	}
	return l.env
}

// RunTests is the body of a TestMain: it runs the tests, then stops the environment if a
// test started it, and returns the exit code for os.Exit.
func (l *Lazy) RunTests(m *testing.M) int {
	code := m.Run()
	if l.env != nil {
		if err := l.env.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: stopping: %v\n", err)
		}
	}
	return code
}
