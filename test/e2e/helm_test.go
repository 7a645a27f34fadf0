package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/helixflow/helixflow/test/localcluster"
)

const (
	helmRelease   = "hf"
	helmNamespace = "helixflow-chart"
	// helmNode is the kwok node the chart's manager pods are pinned to: 0 GPUs and no GPU
	// labels, so no GPUPool of the other e2e tests selects it.
	helmNode = "helm-manager-node"
	// helmDeployment is "<fullname>-manager"; fullname is the release name when it already
	// contains the chart name, else "<release>-helixflow".
	helmDeployment = helmRelease + "-helixflow-manager"
	instanceLabel  = "app.kubernetes.io/instance=" + helmRelease
)

// helmValues gives the manager pods the kwok taint's toleration and pins them to helmNode:
// kwok plays their kubelet (marks them Running and Ready), nothing really runs.
var helmValues = fmt.Sprintf(`tolerations:
  - key: %s
    operator: Equal
    value: %s
    effect: NoSchedule
nodeSelector:
  kubernetes.io/hostname: %s
image:
  tag: e2e
runtimeImage: example.test/helixflow/runtime:e2e
`, localcluster.FakeNodeTaint.Key, localcluster.FakeNodeTaint.Value, helmNode)

// The chart installs onto a real control plane: the manager Deployment becomes Available
// (its pods simulated by kwok), an upgrade with changed values rolls out, and uninstall
// leaves nothing of the release behind but the CRDs (Helm never deletes crds/).
func TestHelmInstallUpgradeUninstall(t *testing.T) {
	ctx := context.Background()
	if err := cluster.AddGPUNode(ctx, helmNode, 0, nil); err != nil {
		t.Fatal(err)
	}
	values := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(values, []byte(helmValues), 0o600); err != nil {
		t.Fatal(err)
	}
	chart := filepath.Join(repoRoot, "charts", "helixflow")

	uninstalled := false
	t.Cleanup(func() {
		if !uninstalled {
			_, _ = helmRun(t, "uninstall", helmRelease, "-n", helmNamespace, "--ignore-not-found", "--wait", "--timeout=2m")
		}
		_, _ = cluster.Kubectl(context.Background(), "delete", "namespace", helmNamespace, "--ignore-not-found", "--wait=false")
		_ = cluster.Client().CoreV1().Nodes().Delete(context.Background(), helmNode, metav1.DeleteOptions{})
	})

	// The CRDs are already there (TestMain applied them): Helm skips existing crds/.
	helmMust(t, "install", helmRelease, chart, "-n", helmNamespace, "--create-namespace", "-f", values)
	waitAvailable(t, 2, func(d *appsv1.Deployment) error {
		if !slices.Contains(d.Spec.Template.Spec.Containers[0].Args, "--leader-elect") {
			return fmt.Errorf("args %v lack --leader-elect", d.Spec.Template.Spec.Containers[0].Args)
		}
		return nil
	})

	helmMust(t, "upgrade", helmRelease, chart, "-n", helmNamespace, "-f", values,
		"--set", "replicas=1", "--set", "leaderElection=false",
		"--set", "runtimeImage=example.test/helixflow/runtime:upgraded")
	waitAvailable(t, 1, func(d *appsv1.Deployment) error {
		args := d.Spec.Template.Spec.Containers[0].Args
		if slices.Contains(args, "--leader-elect") {
			return fmt.Errorf("args %v still have --leader-elect after the upgrade", args)
		}
		if !slices.Contains(args, "--runtime-image=example.test/helixflow/runtime:upgraded") {
			return fmt.Errorf("args %v lack the upgraded --runtime-image", args)
		}
		return nil
	})
	if out := helmMust(t, "status", helmRelease, "-n", helmNamespace); !strings.Contains(out, "REVISION: 2") {
		t.Errorf("helm status after the upgrade:\n%s", out)
	}

	// Everything labelled with the release, namespaced and cluster-scoped, before and after.
	before := releaseObjects(t)
	for _, want := range []string{
		"deployment.apps/" + helmDeployment,
		"clusterrole.rbac.authorization.k8s.io/",
		"clusterrolebinding.rbac.authorization.k8s.io/",
		"serviceaccount/",
	} {
		if !slices.ContainsFunc(before, func(o string) bool { return strings.HasPrefix(o, want) }) {
			t.Errorf("before uninstall, no %s* labelled %s among %v", want, instanceLabel, before)
		}
	}
	helmMust(t, "uninstall", helmRelease, "-n", helmNamespace, "--wait", "--timeout=2m")
	uninstalled = true
	eventually(t, "no object of the release left after helm uninstall", func() error {
		if left := releaseObjects(t); len(left) > 0 {
			return fmt.Errorf("left behind: %v", left)
		}
		return nil
	})
	for _, crd := range []string{"gpupools", "gpunodes", "inferencemodels", "apikeys"} {
		kubectl(t, "get", "crd", crd+".serving.helixflow.io")
	}
}

// waitAvailable waits until the chart's Deployment has rolled out want replicas, reports
// Available=True and passes check.
func waitAvailable(t *testing.T, want int32, check func(*appsv1.Deployment) error) {
	t.Helper()
	deployments := cluster.Client().AppsV1().Deployments(helmNamespace)
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		// A failed Get is retried like an unfinished rollout; last keeps it for the message.
		if d, err := deployments.Get(ctx, helmDeployment, metav1.GetOptions{}); err != nil {
			last = err
		} else {
			last = deploymentAvailable(d, want, check)
		}
		return last == nil, nil
	})
	if err != nil {
		pods, _ := cluster.Kubectl(context.Background(), "get", "pods", "-n", helmNamespace, "-o", "wide")
		events, _ := cluster.Kubectl(context.Background(), "get", "events", "-n", helmNamespace)
		t.Fatalf("Deployment %s/%s not Available with %d replicas within 3m: %v\npods:\n%s\nevents:\n%s",
			helmNamespace, helmDeployment, want, last, pods, events)
	}
}

func deploymentAvailable(d *appsv1.Deployment, want int32, check func(*appsv1.Deployment) error) error {
	if d.Spec.Replicas == nil || *d.Spec.Replicas != want {
		return fmt.Errorf("spec.replicas %v, want %d", d.Spec.Replicas, want)
	}
	if err := check(d); err != nil {
		return err
	}
	s := d.Status
	if s.ObservedGeneration < d.Generation {
		return fmt.Errorf("observedGeneration %d < generation %d", s.ObservedGeneration, d.Generation)
	}
	if s.Replicas != want || s.UpdatedReplicas != want || s.AvailableReplicas != want {
		return fmt.Errorf("rollout not done: status %+v", s)
	}
	for _, cond := range s.Conditions {
		if cond.Type == appsv1.DeploymentAvailable {
			if cond.Status == corev1.ConditionTrue {
				return nil
			}
			return fmt.Errorf("Available=%s: %s", cond.Status, cond.Message)
		}
	}
	return fmt.Errorf("no Available condition: %+v", s.Conditions)
}

// releaseObjects lists, as kind/name (namespace-qualified for namespaced ones), every
// object of every listable resource, in any namespace or cluster-scoped, labelled with the
// release.
func releaseObjects(t *testing.T) []string {
	t.Helper()
	resources := strings.Fields(kubectl(t, "api-resources", "--verbs=list", "-o", "name"))
	// Events carry no labels; componentstatuses and (v1) endpoints are deprecated and would
	// only add warnings (endpointslices, which carry the Services' labels, are kept).
	resources = slices.DeleteFunc(resources, func(r string) bool {
		return r == "events" || r == "events.events.k8s.io" || r == "componentstatuses" || r == "endpoints"
	})
	out := kubectl(t, "get", strings.Join(resources, ","), "-A", "-l", instanceLabel,
		"-o", `jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name}{"\n"}{end}`)
	var objs []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" || strings.HasPrefix(strings.ToLower(line), "warning:") {
			continue
		}
		kind, rest, _ := strings.Cut(line, "/")
		ns, name, _ := strings.Cut(rest, "/")
		obj := strings.ToLower(kind)
		switch kind {
		case "Deployment", "ReplicaSet":
			obj += ".apps"
		case "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
			obj += ".rbac.authorization.k8s.io"
		}
		obj += "/" + name
		if ns != "" {
			obj += " (" + ns + ")"
		}
		objs = append(objs, obj)
	}
	return objs
}

// helmRun runs the helm pinned in hack/tools (built with `make -s helm-bin`) against the
// local cluster, with its home folders in a temporary directory.
func helmRun(t *testing.T, args ...string) (string, error) {
	t.Helper()
	bin, err := helmBinary()
	if err != nil {
		return "", err
	}
	home := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig", cluster.KubeconfigPath()}, args...)...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	return out.String(), err
}

func helmMust(t *testing.T, args ...string) string {
	t.Helper()
	out, err := helmRun(t, args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

var helmBin struct {
	path string
	err  error
	done bool
}

func helmBinary() (string, error) {
	if !helmBin.done {
		helmBin.done = true
		cmd := exec.Command("make", "-s", "helm-bin")
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			helmBin.err = fmt.Errorf("make helm-bin: %w\n%s", err, out)
		} else {
			helmBin.path, helmBin.err = filepath.Abs(filepath.Join(repoRoot, "hack", "tools", "bin", "helm"))
		}
	}
	return helmBin.path, helmBin.err
}
