package localcluster

import (
	"context"
	"fmt"
	"os"
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
	t.Run("zz", TestZZDebugLongevity)
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
	if len(pids) != 3 {
		t.Fatalf("PIDs() = %v, want kube-controller-manager, kube-scheduler and kwok", pids)
	}
	before := childProcesses()
	for name, pid := range pids {
		if _, ok := before[pid]; !ok {
			t.Errorf("%s (pid %d) is not a running child before Stop; children: %v", name, pid, before)
		}
	}
	// etcd and kube-apiserver are children too, started by envtest.
	if len(before) != 5 {
		t.Errorf("want 5 child processes before Stop, got %v", before)
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
// command name, read from /proc.
func childProcesses() map[int]string {
	self := os.Getpid()
	out := map[int]string{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		data, err := os.ReadFile(path)
		if err != nil {
			continue // exited while we looked
		}
		// Fields after the parenthesised command: state, ppid, ...
		s := string(data)
		open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closing < open {
			continue
		}
		fields := strings.Fields(s[closing+1:])
		if len(fields) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(fields[1]); ppid != self {
			continue
		}
		pid, _ := strconv.Atoi(strings.Fields(s)[0])
		out[pid] = s[open+1:closing] + " (" + fields[0] + ")"
	}
	return out
}
