package controllers

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/manager"
	"github.com/helixflow/helixflow/test/testenv"
)

// The integration tests run the real manager (caches, watches, SSA) against a real API
// server. envtest has no kube-controller-manager: no Deployment controller makes pods and no
// garbage collector deletes children. Tests play the Deployment controller's part where a
// status is needed; pods, scheduling and garbage collection are covered end to end in
// test/e2e on the local cluster.
var env *testenv.Env

func TestMain(m *testing.M) {
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr)))
	os.Exit(testenv.Run(m, &env))
}

var testConfig = func() Config {
	c := DefaultConfig()
	c.RuntimeImage = "example.test/helixflow/runtime:test"
	// Several managers run in one test binary, and other packages' tests run beside it.
	c.TokenServiceBindAddress, c.UsageBindAddress = "0", "0"
	return c
}()

// startManager runs a manager with the reconcilers until the returned func is called.
func startManager(t *testing.T) (stop func()) {
	t.Helper()
	return startManagerWith(t, testConfig, nil)
}

// startManagerWith runs a manager with cfg; tune, when set, changes the manager's options.
func startManagerWith(t *testing.T, cfg Config, tune func(*manager.Options)) (stop func()) {
	t.Helper()
	opts := manager.DefaultOptions()
	opts.MetricsBindAddress, opts.HealthProbeBindAddress = "0", "0"
	opts.SkipControllerNameValidation = true
	opts.Setup = []func(ctrl.Manager) error{func(mgr ctrl.Manager) error { return Setup(mgr, cfg) }}
	if tune != nil {
		tune(&opts)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- manager.Run(ctx, env.Config, opts) }()
	var once bool
	stop = func() {
		if once {
			return
		}
		once = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func newNamespace(t *testing.T, lbls map[string]string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "im-", Labels: lbls}}
	if err := env.Client.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// gpuNode creates a Ready node with GPUs and GPU Feature Discovery labels, as a node with
// the NVIDIA device plugin looks to the API.
func gpuNode(t *testing.T, name string, gpus int64, memMiB int64, extra map[string]string) *corev1.Node {
	t.Helper()
	ctx := context.Background()
	lbls := map[string]string{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": fmt.Sprint(memMiB)}
	for k, v := range extra {
		lbls[k] = v
	}
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}
	if err := env.Client.Create(ctx, n); err != nil {
		t.Fatal(err)
	}
	res := corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("64"), corev1.ResourceMemory: resource.MustParse("512Gi"),
		"nvidia.com/gpu": *resource.NewQuantity(gpus, resource.DecimalSI),
	}
	n.Status = corev1.NodeStatus{
		Capacity: res, Allocatable: res,
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}},
	}
	if err := env.Client.Status().Update(ctx, n); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), n) })
	return n
}

func gpuPool(t *testing.T, name string, mutate func(*servingv1alpha1.GPUPool)) {
	t.Helper()
	p := &servingv1alpha1.GPUPool{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: servingv1alpha1.GPUPoolSpec{
			NodeSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pool": name}},
			Tolerations:  []corev1.Toleration{{Key: "nvidia.com/gpu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
		},
	}
	if mutate != nil {
		mutate(p)
	}
	if err := env.Client.Create(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), p) })
}

// eventually polls cond until it returns true or the deadline passes; the last error
// explains a failure.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		last = cond()
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("%s: %v", what, last)
	}
}

func get(obj client.Object, ns, name string) error {
	return env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, obj)
}

// patchObject reads name into obj, applies mutate and merge-patches the difference.
func patchObject[T client.Object](t *testing.T, obj T, ns, name string, mutate func(T)) {
	t.Helper()
	if err := get(obj, ns, name); err != nil {
		t.Fatal(err)
	}
	before := obj.DeepCopyObject().(client.Object)
	mutate(obj)
	if err := env.Client.Patch(context.Background(), obj, client.MergeFrom(before)); err != nil {
		t.Fatal(err)
	}
}
