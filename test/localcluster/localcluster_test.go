package localcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

var cluster *Cluster

func TestMain(m *testing.M) {
	if os.Getenv(crashHelperEnv) != "" {
		os.Exit(crashHelper())
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	c, err := Start(ctx, Options{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "localcluster: %v\n", err)
		return 1
	}
	fmt.Printf("localcluster: started in %s (binaries %s, kubeconfig %s)\n", time.Since(began).Round(time.Millisecond), c.BinDir(), c.KubeconfigPath())
	cluster = c
	code := m.Run()
	// Normally TestLocalCluster/stop has already stopped it; Stop is idempotent, and this
	// catches runs that filtered that subtest out.
	if err := c.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "localcluster: stopping: %v\n", err)
		code = 1
	}
	if left := childProcesses(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "localcluster: child processes still running after Stop: %v\n", left)
		code = 1
	}
	return code
}

// The subtests share one cluster and run in order; "stop" must come last.
func TestLocalCluster(t *testing.T) {
	t.Run("gpu-scheduling", testGPUScheduling)
	t.Run("stop", testStop)
}

func testGPUScheduling(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dumpLogsOnFailure(t)
	cs := cluster.Client()

	const node = "gpu-node-0"
	if err := cluster.AddGPUNode(ctx, node, 8, map[string]string{
		"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
		"nvidia.com/gpu.memory":  "81559",
	}); err != nil {
		t.Fatalf("AddGPUNode: %v", err)
	}
	n, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := n.Status.Allocatable[ResourceGPU]; got.Value() != 8 {
		t.Fatalf("node allocatable %s = %s, want 8", ResourceGPU, got.String())
	}
	if n.Labels["nvidia.com/gpu.product"] != "NVIDIA-H100-80GB-HBM3" {
		t.Fatalf("node labels %v lack the product label", n.Labels)
	}

	// A fresh namespace also exercises the ServiceAccount admission plugin: pods can only be
	// created once the controller-manager has made the namespace's default ServiceAccount.
	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "gpu-sched-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gpu4 := corev1.ResourceList{ResourceGPU: resource.MustParse("4")}
	labels := map[string]string{"app": "gpu-hog"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "gpu-hog", Namespace: ns.Name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](3),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Tolerations: []corev1.Toleration{FakeNodeToleration()},
					Containers: []corev1.Container{{
						Name:      "engine",
						Image:     "registry.k8s.io/pause:3.10",
						Resources: corev1.ResourceRequirements{Requests: gpu4, Limits: gpu4},
					}},
				},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments(ns.Name).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	var running, pending []corev1.Pod
	var summary string
	deadline := time.Now().Add(2 * time.Minute)
	for {
		pods, err := cs.CoreV1().Pods(ns.Name).List(ctx, metav1.ListOptions{LabelSelector: "app=gpu-hog"})
		if err != nil {
			t.Fatal(err)
		}
		running, pending = nil, nil
		var states []string
		for _, p := range pods.Items {
			states = append(states, fmt.Sprintf("%s:%s@%q", p.Name, p.Status.Phase, p.Spec.NodeName))
			switch {
			case p.Status.Phase == corev1.PodRunning && p.Spec.NodeName == node:
				running = append(running, p)
			case p.Status.Phase == corev1.PodPending && p.Spec.NodeName == "" && unschedulable(p):
				pending = append(pending, p)
			}
		}
		summary = strings.Join(states, " ")
		if len(pods.Items) == 3 && len(running) == 2 && len(pending) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("want 2 pods Running on %s and 1 Pending as Unschedulable; got %s", node, summary)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("pods: %s", summary)
	cond := podScheduledCondition(pending[0])
	if !strings.Contains(cond.Message, "Insufficient "+string(ResourceGPU)) {
		t.Errorf("pending pod's PodScheduled message %q does not name the GPU shortage", cond.Message)
	}

	// The scheduler also records why, as an event a person would see in kubectl describe.
	deadline = time.Now().Add(time.Minute)
	for {
		evs, err := cs.CoreV1().Events(ns.Name).List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.name=" + pending[0].Name + ",reason=FailedScheduling",
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs.Items) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no FailedScheduling event for pod %s", pending[0].Name)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// The kubeconfig file must work for a separate process, as a manager under test would be.
	out, err := cluster.Kubectl(ctx, "get", "pods", "-n", ns.Name, "--field-selector=status.phase=Running", "-o", "name")
	if err != nil {
		t.Fatalf("kubectl: %v\n%s", err, out)
	}
	if got := len(strings.Fields(out)); got != 2 {
		t.Fatalf("kubectl lists %d Running pods, want 2:\n%s", got, out)
	}
}

func testStop(t *testing.T) {
	pids := cluster.PIDs()
	components := []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
	if len(pids) != len(components) {
		t.Errorf("PIDs() = %v, want one for each of %v", pids, components)
	}
	before := childProcesses()
	for _, name := range components {
		if _, ok := before[pids[name]]; !ok {
			t.Errorf("%s (pid %d) is not a running child before Stop; children: %v", name, pids[name], before)
		}
	}
	began := time.Now()
	if err := cluster.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Logf("Stop took %s", time.Since(began).Round(time.Millisecond))
	// Stop waits for every child, so nothing may be left, not even a zombie.
	if left := childProcesses(); len(left) > 0 {
		t.Fatalf("child processes left after Stop: %v", left)
	}
	if _, err := os.Stat(cluster.KubeconfigPath()); !os.IsNotExist(err) {
		t.Errorf("kubeconfig %s still there after Stop (err %v)", cluster.KubeconfigPath(), err)
	}
}

// crashHelperEnv makes the test binary start a cluster, report it, and exit without Stop.
const crashHelperEnv = "LOCALCLUSTER_CRASH_HELPER"

type crashReport struct {
	PIDs       map[string]int
	Kubeconfig string
}

// crashHelper is the child side of TestWatchdogCleansUpAfterCrash.
func crashHelper() int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "crash helper: %v\n", err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(crashReport{PIDs: c.PIDs(), Kubeconfig: c.KubeconfigPath()}); err != nil {
		return 1
	}
	return 3 // no Stop: the watchdog must clean up
}

func TestWatchdogCleansUpAfterCrash(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashHelperEnv+"=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("crash helper: %v, want exit status 3\nstdout: %s\nstderr: %s", err, out, stderr.String())
	}
	var report crashReport
	if err := json.Unmarshal(out, &report); err != nil {
		t.Fatalf("crash helper output %q: %v", out, err)
	}
	if len(report.PIDs) != 5 {
		t.Fatalf("crash helper reported PIDs %v, want 5", report.PIDs)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		alive := map[string]int{}
		for name, pid := range report.PIDs {
			if processAlive(pid) {
				alive[name] = pid
			}
		}
		_, statErr := os.Stat(report.Kubeconfig)
		if len(alive) == 0 && os.IsNotExist(statErr) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a minute after the helper exited: still running %v; kubeconfig stat: %v", alive, statErr)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// processAlive reports whether pid exists and is not a zombie. A reused PID would read as
// alive, which can only make the test fail, never pass wrongly.
func processAlive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) > 0 && fields[0] != "Z"
}

func unschedulable(p corev1.Pod) bool {
	c := podScheduledCondition(p)
	return c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable
}

func podScheduledCondition(p corev1.Pod) corev1.PodCondition {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled {
			return c
		}
	}
	return corev1.PodCondition{}
}

func dumpLogsOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("component logs:\n%s", cluster.Logs())
		}
	})
}

// childProcesses maps the PID of every process whose parent is this test binary to its
// command line, read from /proc.
func childProcesses() map[int]string {
	self := os.Getpid()
	out := map[int]string{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		if ppid, ok := parentPID(path); !ok || ppid != self {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
		cmdline, _ := os.ReadFile(filepath.Join(filepath.Dir(path), "cmdline"))
		out[pid] = strings.ReplaceAll(strings.TrimRight(string(cmdline), "\x00"), "\x00", " ")
	}
	return out
}
