package helm_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// fieldManager names this test's server-side dry-run applies.
const fieldManager = "helixflow-helm-test"

var (
	helmOnce sync.Once
	helmPath string
	helmErr  error

	kubeconfigOnce sync.Once
	kubeconfigPath string
	kubeconfigErr  error
)

// chartDir is the chart under test.
func chartDir() string { return filepath.Join(env.RepoRoot, "charts", "helixflow") }

// helmBinary builds the helm pinned in hack/tools/go.mod with the Makefile's own rule (a
// no-op when hack/tools/bin/helm is up to date) and returns its path.
func helmBinary(t *testing.T) string {
	t.Helper()
	helmOnce.Do(func() {
		cmd := exec.Command("make", "-s", "helm-bin")
		cmd.Dir = env.RepoRoot
		out, err := cmd.CombinedOutput()
		if err != nil {
			helmErr = fmt.Errorf("make helm-bin: %w\n%s", err, out)
			return
		}
		helmPath = filepath.Join(env.RepoRoot, "hack", "tools", "bin", "helm")
	})
	if helmErr != nil {
		t.Fatal(helmErr)
	}
	return helmPath
}

// helm runs the pinned helm with its home folders in a temporary directory, so nothing of
// the user's helm configuration (repositories, plugins) takes part, and returns stdout.
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	bin := helmBinary(t)
	home := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = env.RepoRoot
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String() + stderr.String(), fmt.Errorf("helm %s: %w\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// mustHelm is helm that fails the test on error.
func mustHelm(t *testing.T, args ...string) string {
	t.Helper()
	out, err := helm(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// kubeconfig returns a kubeconfig for the test API server, written once per test binary.
func kubeconfig(t *testing.T) string {
	t.Helper()
	kubeconfigOnce.Do(func() {
		dir, err := os.MkdirTemp("", "helixflow-helm-test-")
		if err != nil {
			kubeconfigErr = err
			return
		}
		kubeconfigPath, kubeconfigErr = env.Kubeconfig(dir)
	})
	if kubeconfigErr != nil {
		t.Fatal(kubeconfigErr)
	}
	return kubeconfigPath
}

// decode splits a multi-document YAML stream into objects, skipping empty documents.
// Numbers come out as int64 (or float64), as the API machinery reads them.
func decode(t *testing.T, manifests string) []*unstructured.Unstructured {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(manifests)))
	var objs []*unstructured.Unstructured
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("reading rendered manifests: %v", err)
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			t.Fatalf("decoding rendered manifests: %v\n%s", err, doc)
		}
		if s := strings.TrimSpace(string(js)); s == "null" || s == "{}" {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(js); err != nil {
			t.Fatalf("decoding rendered manifests: %v\n%s", err, doc)
		}
		objs = append(objs, u)
	}
}

// find returns the object of that kind and name, failing the test when there is none.
func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %q among the rendered objects: %v", kind, name, names(objs))
	return nil
}

// names lists objects as Kind/name, for messages.
func names(objs []*unstructured.Unstructured) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.GetKind()+"/"+o.GetName())
	}
	return out
}

// applyDryRun applies manifests with a server-side dry run, so the API server runs
// admission and schema validation on every object without persisting any, and checks that
// kubectl reported each object as applied.
func applyDryRun(t *testing.T, manifests string) {
	t.Helper()
	objs := decode(t, manifests)
	if len(objs) == 0 {
		t.Fatal("nothing to apply")
	}
	file := filepath.Join(t.TempDir(), "manifests.yaml")
	if err := os.WriteFile(file, []byte(manifests), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Server-side apply: the CRDs are too large for client-side apply's last-applied annotation.
	out, err := env.Kubectl(ctx, kubeconfig(t), "apply", "--server-side", "--force-conflicts",
		"--field-manager="+fieldManager, "--dry-run=server", "-f", file)
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=server: %v\n%s", err, out)
	}
	if strings.Contains(out, "Warning") {
		t.Errorf("kubectl apply warned:\n%s", out)
	}
	if got := strings.Count(out, "(server dry run)"); got != len(objs) {
		t.Errorf("kubectl applied %d objects, want %d (%v):\n%s", got, len(objs), names(objs), out)
	}
}

// createNamespace creates a namespace (for real: namespaced objects need it to exist for a
// dry run), enforcing the "restricted" Pod Security Standard, and deletes it at the end.
func createNamespace(t *testing.T, name string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		"pod-security.kubernetes.io/enforce": "restricted",
		"pod-security.kubernetes.io/warn":    "restricted",
	}}}
	ctx := context.Background()
	if err := env.Client.Create(ctx, ns); err != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), ns) })
}

// nested reads a nested field, failing the test when it is missing.
func nested(t *testing.T, obj map[string]any, fields ...string) any {
	t.Helper()
	v, ok, err := unstructured.NestedFieldNoCopy(obj, fields...)
	if err != nil || !ok {
		t.Fatalf("field %s missing (err %v)", strings.Join(fields, "."), err)
	}
	return v
}

// managerContainer returns the Deployment's manager container.
func managerContainer(t *testing.T, deploy *unstructured.Unstructured) map[string]any {
	t.Helper()
	containers, _ := nested(t, deploy.Object, "spec", "template", "spec", "containers").([]any)
	for _, c := range containers {
		if m, ok := c.(map[string]any); ok && m["name"] == "manager" {
			return m
		}
	}
	t.Fatalf("Deployment %s has no manager container", deploy.GetName())
	return nil
}

// args returns the manager container's args.
func args(t *testing.T, deploy *unstructured.Unstructured) []string {
	t.Helper()
	raw, _ := managerContainer(t, deploy)["args"].([]any)
	out := make([]string, 0, len(raw))
	for _, a := range raw {
		s, _ := a.(string)
		out = append(out, s)
	}
	return out
}
