// Package e2e runs HelixFlow end to end on a local cluster: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler and kwok-simulated GPU nodes, with the manager
// as a real process installed the way a user would (kubectl apply of the CRDs). Pods are
// really scheduled by kube-scheduler; kwok plays the kubelet and reports them Running.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/helixflow/helixflow/internal/scheme"
	"github.com/helixflow/helixflow/test/localcluster"
	"github.com/helixflow/helixflow/test/testenv"
)

var (
	cluster    *localcluster.Cluster
	c          client.Client
	managerLog string
	repoRoot   = filepath.Join("..", "..")
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var err error
	cluster, err = localcluster.Start(ctx, localcluster.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer func() { _ = cluster.Stop() }()
	if c, err = client.New(cluster.Config(), client.Options{Scheme: scheme.New()}); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	stopManager, err := installAndStartManager(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	code := m.Run()
	stopManager()
	if code != 0 {
		if data, err := os.ReadFile(managerLog); err == nil {
			lines := strings.Split(string(data), "\n")
			fmt.Fprintf(os.Stderr, "--- manager log (last 60 lines)\n%s\n", strings.Join(lines[max(0, len(lines)-60):], "\n"))
		}
		fmt.Fprintln(os.Stderr, cluster.Logs())
	}
	return code
}

// installAndStartManager applies the CRDs with kubectl, builds bin/manager and runs it as
// its own process against the cluster, with leader election on.
func installAndStartManager(ctx context.Context) (stop func(), err error) {
	if out, err := cluster.Kubectl(ctx, "apply", "--server-side", "-f", filepath.Join(repoRoot, "config", "crd", "bases")); err != nil {
		return nil, fmt.Errorf("installing CRDs: %w: %s", err, out)
	}
	if out, err := cluster.Kubectl(ctx, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"); err != nil {
		return nil, fmt.Errorf("waiting for CRDs: %w: %s", err, out)
	}
	if out, err := cluster.Kubectl(ctx, "create", "namespace", "helixflow-system"); err != nil {
		return nil, fmt.Errorf("creating namespace: %w: %s", err, out)
	}
	dir, err := os.MkdirTemp("", "helixflow-e2e-")
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(dir, "manager")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/manager")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building the manager: %w: %s", err, out)
	}
	probe, err := testenv.FreeAddr()
	if err != nil {
		return nil, err
	}
	metrics, err := testenv.FreeAddr()
	if err != nil {
		return nil, err
	}
	managerLog = filepath.Join(dir, "manager.log")
	logFile, err := os.Create(managerLog)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--kubeconfig", cluster.KubeconfigPath(), "--leader-elect",
		"--metrics-bind-address", metrics, "--health-probe-bind-address", probe,
		"--token-service-bind-address", "0", "--usage-bind-address", "0",
		"--runtime-image", "example.test/helixflow/runtime:e2e")
	cmd.Env = append(os.Environ(), "POD_NAMESPACE=helixflow-system")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop = func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		_ = logFile.Close()
	}
	err = testenv.WaitHTTP200(ctx, "http://"+probe+"/readyz", time.Minute)
	if err != nil {
		stop()
		return nil, fmt.Errorf("manager never became ready (log in %s): %w", managerLog, err)
	}
	return stop, nil
}

// eventually polls cond for up to two minutes (the machine has two cores shared by a
// whole control plane); the last error explains a failure.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, 2*time.Minute, true, func(context.Context) (bool, error) {
		last = cond()
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("%s: %v", what, last)
	}
}

func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := cluster.Kubectl(ctx, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func podsOf(t *testing.T, ns, model string) []corev1.Pod {
	t.Helper()
	var pods corev1.PodList
	if err := c.List(context.Background(), &pods, client.InNamespace(ns), client.MatchingLabels{"serving.helixflow.io/inference-model": model}); err != nil {
		t.Fatal(err)
	}
	return pods.Items
}
