// Package demo runs `make demo` as a newcomer would, twice, then `make demo-down`, and checks
// what the demo claims against the cluster itself: the models placed on their pools' nodes,
// the misfit refused with the reason it prints, a streamed completion through runtime serve,
// a 401 for a wrong key, the usage counted exactly once per request, the cluster reused by the
// second run, and no recorded process left running after demo-down.
package demo

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/scheme"
	"github.com/helixflow/helixflow/test/localcluster"
)

// What config/samples/demo and hack/demo.sh set up.
const (
	ns         = "demo"
	misfit     = "llama-3-1-70b"
	apiKeyName = "chat-app"
)

// modelNodes: each model that fits, and the prefix of its pool's node names (hack/local-cluster).
var modelNodes = map[string]string{"llama-3-1-8b": "gpu-h100-", "qwen-2-5-32b": "gpu-a100-"}

// makeTimeout bounds one make call, well inside go test's default 10 minutes, so that a hung
// demo still reaches the cleanup that stops its processes.
const makeTimeout = 4 * time.Minute

func TestMain(m *testing.M) {
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr)))
	os.Exit(m.Run())
}

func TestMakeDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a local cluster and the whole product")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	demoDir := filepath.Join(tmp, "demo")
	// The binaries go to the temporary folder, so the test leaves the working tree alone.
	env := append(os.Environ(), "DEMO_BIN_DIR="+filepath.Join(tmp, "bin"))
	downDone := false
	t.Cleanup(func() {
		if !downDone { // the test failed before demo-down: stop what the demo started anyway
			out, err := runMake(root, env, "demo-down", "DEMO_DIR="+demoDir)
			if err != nil {
				t.Logf("make demo-down: %v\n%s", err, out)
			}
		}
	})

	out1 := mustMake(t, root, env, "demo", "DEMO_DIR="+demoDir)
	c := clusterClient(t, filepath.Join(demoDir, "cluster", "kubeconfig"))
	clusterProcs := readProcs(t, filepath.Join(demoDir, "cluster", "pids"))
	firstRunProcs := readProcs(t, filepath.Join(demoDir, "pids"))
	if len(clusterProcs) != 5 || len(firstRunProcs) != 3 {
		t.Fatalf("recorded %v and %v, want the 5 cluster components and manager, test engine, runtime serve", clusterProcs, firstRunProcs)
	}

	checkPlacement(t, c, out1)
	checkStream(t, section(t, out1, "A streamed chat completion"))
	checkRefused(t, section(t, out1, "wrong key"))
	first := usage(t, c)
	if first.Requests != 1 || first.Tokens <= 0 {
		t.Errorf("usage after one request: %+v", first)
	}
	if s := section(t, out1, "Usage counted"); !strings.Contains(s, fmt.Sprint(first.Tokens)) {
		t.Errorf("usage section does not show the %d tokens counted:\n%s", first.Tokens, s)
	}
	if s := section(t, out1, "keeps running"); !strings.Contains(s, "export KUBECONFIG="+filepath.Join(demoDir, "cluster", "kubeconfig")) ||
		!strings.Contains(s, "make demo-down") {
		t.Errorf("the last section does not say how to use and stop the demo:\n%s", s)
	}

	// Idempotent: the second run reuses the cluster and replaces the HelixFlow processes.
	out2 := mustMake(t, root, env, "demo", "DEMO_DIR="+demoDir)
	if !strings.Contains(out2, "already up") {
		t.Errorf("second make demo did not reuse the cluster:\n%s", section(t, out2, "Starting the local cluster"))
	}
	if again := readProcs(t, filepath.Join(demoDir, "cluster", "pids")); fmt.Sprint(again) != fmt.Sprint(clusterProcs) {
		t.Errorf("cluster processes changed from %v to %v", clusterProcs, again)
	}
	for _, p := range firstRunProcs {
		if p.Running() {
			t.Errorf("%s of the first run still runs after the second", p)
		}
	}
	checkPlacement(t, c, out2)
	checkStream(t, section(t, out2, "A streamed chat completion"))
	checkRefused(t, section(t, out2, "wrong key"))
	// Exactly once: the same request again counts the same tokens again, across a restart of
	// the manager and of runtime serve.
	if second := usage(t, c); second.Requests != 2 || second.Tokens != 2*first.Tokens {
		t.Errorf("usage after two identical requests: %+v, want 2 requests and %d tokens", second, 2*first.Tokens)
	}

	recorded := append(readProcs(t, filepath.Join(demoDir, "cluster", "pids")), readProcs(t, filepath.Join(demoDir, "pids"))...)
	downDone = true
	mustMake(t, root, env, "demo-down", "DEMO_DIR="+demoDir)
	for _, p := range recorded {
		if p.Running() {
			t.Errorf("%s still runs after make demo-down", p)
		}
	}
	if _, err := os.Stat(demoDir); !os.IsNotExist(err) {
		t.Errorf("%s left behind (%v)", demoDir, err)
	}
}

// checkPlacement: the models that fit are Ready with their pods Running on their pool's
// nodes, as the output lists them; the misfit has no pods and the output gives its reason.
func checkPlacement(t *testing.T, c client.Client, out string) {
	t.Helper()
	ctx := context.Background()
	table := section(t, out, "kubectl get gpool,im,ak")
	for _, name := range []string{"gpupool.serving.helixflow.io/h100", "gpupool.serving.helixflow.io/a100",
		"inferencemodel.serving.helixflow.io/" + misfit, "apikey.serving.helixflow.io/" + apiKeyName} {
		if !strings.Contains(table, name) {
			t.Errorf("kubectl get output lacks %s:\n%s", name, table)
		}
	}
	landed := section(t, out, "Where each model's pods landed")
	for model, nodePrefix := range modelNodes {
		m := &servingv1alpha1.InferenceModel{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: model}, m); err != nil {
			t.Fatal(err)
		}
		if !meta.IsStatusConditionTrue(m.Status.Conditions, servingv1alpha1.ConditionReady) {
			t.Errorf("%s not Ready: %v", model, m.Status.Conditions)
		}
		pods := podsOf(t, c, model)
		if int32(len(pods)) != *m.Spec.Replicas {
			t.Errorf("%s has %d pods, want %d", model, len(pods), *m.Spec.Replicas)
		}
		for _, p := range pods {
			if !strings.HasPrefix(p.Spec.NodeName, nodePrefix) || p.Status.Phase != corev1.PodRunning {
				t.Errorf("pod %s is %s on %q, want Running on a %s* node", p.Name, p.Status.Phase, p.Spec.NodeName, nodePrefix)
			}
			if !strings.Contains(landed, p.Name) || !strings.Contains(landed, p.Spec.NodeName) {
				t.Errorf("the output does not show pod %s on %s:\n%s", p.Name, p.Spec.NodeName, landed)
			}
		}
	}
	m := &servingv1alpha1.InferenceModel{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: misfit}, m); err != nil {
		t.Fatal(err)
	}
	cond := meta.FindStatusCondition(m.Status.Conditions, servingv1alpha1.InferenceModelConditionScheduled)
	if cond == nil || cond.Status != metav1.ConditionFalse || cond.Reason != servingv1alpha1.InferenceModelReasonInsufficientGPUMemory {
		t.Errorf("%s: Scheduled = %+v, want False/%s", misfit, cond, servingv1alpha1.InferenceModelReasonInsufficientGPUMemory)
	} else if why := section(t, out, "Why "+misfit); !strings.Contains(why, cond.Reason) || !strings.Contains(why, cond.Message) {
		t.Errorf("the output does not give the reason %s: %s:\n%s", cond.Reason, cond.Message, why)
	}
	if pods := podsOf(t, c, misfit); len(pods) != 0 {
		t.Errorf("%d pods for %s, which cannot fit", len(pods), misfit)
	}
}

// checkStream: the section holds a whole SSE stream: content chunks, a finish reason, [DONE].
func checkStream(t *testing.T, s string) {
	t.Helper()
	var text strings.Builder
	chunks, finished, done := 0, false, false
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			done = true
			continue
		}
		var chunk struct {
			Object  string `json:"object"`
			Choices []struct {
				Delta        struct{ Content string } `json:"delta"`
				FinishReason *string                  `json:"finish_reason"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			t.Errorf("stream chunk %q: %v", data, err)
			continue
		}
		for _, ch := range chunk.Choices {
			if ch.Delta.Content != "" {
				chunks++
				text.WriteString(ch.Delta.Content)
			}
			finished = finished || ch.FinishReason != nil
		}
	}
	if chunks < 2 || !finished || !done {
		t.Errorf("no whole stream (%d content chunks %q, finish reason %t, [DONE] %t):\n%s", chunks, text.String(), finished, done, s)
	}
}

// checkRefused: the wrong key got the OpenAI-shaped 401.
func checkRefused(t *testing.T, s string) {
	t.Helper()
	if !strings.Contains(s, "HTTP 401") || !strings.Contains(s, `"code":"invalid_api_key"`) || !strings.Contains(s, `"type":"authentication_error"`) {
		t.Errorf("no 401 invalid_api_key:\n%s", s)
	}
}

func usage(t *testing.T, c client.Client) servingv1alpha1.KeyUsage {
	t.Helper()
	ak := &servingv1alpha1.ApiKey{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: apiKeyName}, ak); err != nil {
		t.Fatal(err)
	}
	if ak.Status.Usage == nil {
		t.Fatalf("ApiKey %s has no usage: %+v", apiKeyName, ak.Status)
	}
	return *ak.Status.Usage
}

func podsOf(t *testing.T, c client.Client, model string) []corev1.Pod {
	t.Helper()
	var pods corev1.PodList
	if err := c.List(context.Background(), &pods, client.InNamespace(ns), client.MatchingLabels{"serving.helixflow.io/inference-model": model}); err != nil {
		t.Fatal(err)
	}
	return pods.Items
}

// section returns the output of the demo step whose "==> " heading contains title, up to the
// next heading.
func section(t *testing.T, out, title string) string {
	t.Helper()
	for _, s := range strings.Split(out, "\n==> ")[1:] {
		if heading, _, _ := strings.Cut(s, "\n"); strings.Contains(heading, title) {
			return s
		}
	}
	t.Fatalf("no step %q in the demo's output:\n%s", title, out)
	return ""
}

func clusterClient(t *testing.T, kubeconfig string) client.Client {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// readProcs reads a PID file of hack/local-cluster or hack/demo.sh (NAME PID STARTTIME lines).
func readProcs(t *testing.T, path string) []localcluster.Process {
	t.Helper()
	procs, err := localcluster.ReadPIDFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return procs
}

func mustMake(t *testing.T, root string, env []string, args ...string) string {
	t.Helper()
	began := time.Now()
	out, err := runMake(root, env, args...)
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("make %s: %s", args[0], time.Since(began).Round(time.Second))
	return out
}

// runMake runs make in its own process group, killed as a whole at makeTimeout. What the
// demo starts runs in sessions of its own and is not killed with it: demo-down stops that.
func runMake(root string, env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), makeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", append([]string{"--no-print-directory", "-C", root}, args...)...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.CombinedOutput()
	return string(out), err
}
