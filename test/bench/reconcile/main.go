// Command reconcile measures the InferenceModel reconciler against a real API server.
//
// It starts etcd and kube-apiserver (envtest), creates a GPUPool with enough simulated
// nodes, then:
//
//  1. baseline: a plain client creates, for N models, the same child objects the reconciler
//     applies (controllers.DesiredObjects: ServiceAccount, Service, Deployment, Role,
//     RoleBinding), with the same number of workers;
//  2. manager: the real bin/manager process runs, the harness creates N InferenceModels,
//     and waits until every model has its children and Scheduled=True.
//
// It prints seconds to converge, models per second, the ratio manager/baseline (the
// reconcile overhead), and the manager's heap (from its metrics) and RSS (from /proc).
//
//	go run ./test/bench/reconcile -models 200
//	go run ./test/bench/reconcile -models 1000
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/controllers"
	"github.com/helixflow/helixflow/test/testenv"
)

func main() {
	models := flag.Int("models", 200, "number of InferenceModels")
	workers := flag.Int("workers", 4, "concurrent creating clients, for the baseline and for the models")
	reconcilers := flag.Int("max-concurrent-reconciles", controllers.DefaultConfig().MaxConcurrentReconciles, "the manager's --max-concurrent-reconciles")
	flag.StringVar(&apiserverProfile, "apiserver-cpuprofile", "", "write a CPU profile of kube-apiserver, taken while the manager converges, to this file")
	flag.StringVar(&managerProfile, "manager-cpuprofile", "", "write a CPU profile of the manager, taken while it converges, to this file")
	flag.Parse()
	// Interrupted (Ctrl-C, a timeout's SIGTERM): the waits end, and run's deferred calls stop
	// the manager, kube-apiserver and etcd instead of leaving them running.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *models, *workers, *reconcilers)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// apiserverProfile and managerProfile, when set, are where the API server's and the
// manager's CPU profiles of the manager phase go.
var apiserverProfile, managerProfile string

func run(ctx context.Context, n, workers, reconcilers int) error {
	env, err := testenv.Start()
	if err != nil {
		return err
	}
	defer func() { _ = env.Stop() }()
	tmp, err := os.MkdirTemp("", "helixflow-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	kubeconfig, err := env.Kubeconfig(tmp)
	if err != nil {
		return err
	}
	managerBin := filepath.Join(tmp, "manager")
	build := exec.Command("go", "build", "-o", managerBin, "./cmd/manager")
	build.Dir, build.Stdout, build.Stderr = env.RepoRoot, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building the manager: %w", err)
	}

	c := env.Client
	pool, err := setupPool(ctx, c, n)
	if err != nil {
		return err
	}
	for _, ns := range []string{"baseline", "baseline-models", "bench", "helixflow-system"} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return err
		}
	}

	fmt.Fprintf(os.Stderr, "bench: baseline: creating the children of %d models with a plain client\n", n)
	cpu0 := controlPlaneCPU()
	baseline, err := runBaseline(ctx, c, pool, n, workers)
	cpu1 := controlPlaneCPU()
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: baseline took %s; creating %d models and their status by hand\n", baseline, n)
	byHand, err := runModelsByHand(ctx, c, n, workers)
	if err != nil {
		return err
	}
	cpu2 := controlPlaneCPU()
	fmt.Fprintf(os.Stderr, "bench: models by hand took %s; starting the manager\n", byHand)

	metricsAddr, err := testenv.FreeAddr()
	if err != nil {
		return err
	}
	probeAddr, err := testenv.FreeAddr()
	if err != nil {
		return err
	}
	pprofAddr, err := testenv.FreeAddr()
	if err != nil {
		return err
	}
	mgr := exec.Command(managerBin, "--kubeconfig", kubeconfig, "--metrics-bind-address", metricsAddr,
		"--health-probe-bind-address", probeAddr, "--pprof-bind-address", pprofAddr, "--max-concurrent-reconciles", strconv.Itoa(reconcilers),
		"--token-service-bind-address", "0", "--usage-bind-address", "0",
		// The same client-side rate limit as the baseline's client (envtest's config), so the
		// ratio measures the reconciler, not two different limiter settings.
		"--kube-api-qps", fmt.Sprint(env.Config.QPS), "--kube-api-burst", fmt.Sprint(env.Config.Burst))
	logFile, err := os.Create(filepath.Join(tmp, "manager.log"))
	if err != nil {
		return err
	}
	mgr.Stdout, mgr.Stderr = logFile, logFile
	if err := mgr.Start(); err != nil {
		return fmt.Errorf("starting the manager: %w", err)
	}
	defer func() { _ = mgr.Process.Kill(); _ = mgr.Wait() }()
	if err := testenv.WaitHTTP200(ctx, "http://"+probeAddr+"/readyz", time.Minute); err != nil {
		return fmt.Errorf("manager not ready: %w", err)
	}

	scheduled, err := watchScheduled(ctx, env.Config, n)
	if err != nil {
		return err
	}
	apiserverHTTP, err := rest.HTTPClientFor(env.Config)
	if err != nil {
		return err
	}
	profiled := []<-chan error{
		cpuProfile(ctx, apiserverHTTP, strings.TrimSuffix(env.Config.Host, "/"), apiserverProfile),
		cpuProfile(ctx, http.DefaultClient, "http://"+pprofAddr, managerProfile),
	}
	cpu3 := controlPlaneCPU()
	start := time.Now()
	if err := parallel(n, workers, func(i int) error { return c.Create(ctx, benchModel("bench", i)) }); err != nil {
		return fmt.Errorf("creating models: %w", err)
	}
	createdIn := time.Since(start)
	if err := waitConverged(ctx, c, scheduled, n, 5*time.Minute); err != nil {
		if tail, rerr := os.ReadFile(logFile.Name()); rerr == nil {
			lines := strings.Split(string(tail), "\n")
			fmt.Fprintln(os.Stderr, strings.Join(lines[max(0, len(lines)-30):], "\n"))
		}
		return err
	}
	converged := time.Since(start)
	cpu4 := controlPlaneCPU()
	for _, p := range profiled {
		if err := <-p; err != nil {
			return err
		}
	}
	// Let the last writes' echoes settle before reading memory.
	time.Sleep(2 * time.Second)
	heap, inuse, err := heapBytes("http://" + metricsAddr + "/metrics")
	if err != nil {
		return err
	}
	// What the heap holds once the garbage is collected (pprof's heap endpoint runs a GC
	// first with gc=1): the figure that grows with the models, not with GC timing.
	if err := getDiscard("http://" + pprofAddr + "/debug/pprof/heap?gc=1"); err != nil {
		return err
	}
	liveHeap, _, err := heapBytes("http://" + metricsAddr + "/metrics")
	if err != nil {
		return err
	}
	rss, err := rssBytes(mgr.Process.Pid)
	if err != nil {
		return err
	}
	cpu, err := cpuSeconds(mgr.Process.Pid)
	if err != nil {
		return err
	}

	fmt.Printf("reconcile benchmark: %d InferenceModels, %d creating workers, %d concurrent reconciles, client QPS %g burst %d (both sides)\n",
		n, workers, reconcilers, env.Config.QPS, env.Config.Burst)
	fmt.Printf("  baseline (plain client creates the same children):      %8.2f s  %7.1f models/s\n", baseline.Seconds(), float64(n)/baseline.Seconds())
	fmt.Printf("  models by hand (plain client creates the InferenceModels\n")
	fmt.Printf("    and writes the status the manager writes):             %8.2f s\n", byHand.Seconds())
	fmt.Printf("  manager  (create models -> children + Scheduled=True):  %8.2f s  %7.1f models/s  (models created in %.2f s)\n", converged.Seconds(), float64(n)/converged.Seconds(), createdIn.Seconds())
	fmt.Printf("  overhead ratio manager/baseline: %.2f (target <= 1.5)\n", converged.Seconds()/baseline.Seconds())
	fmt.Printf("  manager/(baseline + models by hand): %.2f (what the reconciler adds over doing all of its writes by hand)\n", converged.Seconds()/(baseline+byHand).Seconds())
	fmt.Printf("  control plane CPU s (kube-apiserver + etcd): baseline %.2f + %.2f, models by hand %.2f + %.2f, manager phase %.2f + %.2f\n",
		cpu1["kube-apiserver"]-cpu0["kube-apiserver"], cpu1["etcd"]-cpu0["etcd"],
		cpu2["kube-apiserver"]-cpu1["kube-apiserver"], cpu2["etcd"]-cpu1["etcd"],
		cpu4["kube-apiserver"]-cpu3["kube-apiserver"], cpu4["etcd"]-cpu3["etcd"])
	fmt.Printf("  manager CPU time %.2f s (user+system, whole run incl. start-up)\n", cpu)
	fmt.Printf("  manager heap alloc %.1f MiB (%.1f MiB after a forced GC), heap in use %.1f MiB, RSS %.1f MiB (target heap <= 60 MiB at 1000 models)\n",
		float64(heap)/(1<<20), float64(liveHeap)/(1<<20), float64(inuse)/(1<<20), float64(rss)/(1<<20))
	return nil
}

// setupPool creates a pool with enough 8-GPU nodes for n one-GPU models.
func setupPool(ctx context.Context, c client.Client, n int) (*servingv1alpha1.GPUPool, error) {
	pool := &servingv1alpha1.GPUPool{
		ObjectMeta: metav1.ObjectMeta{Name: "bench"},
		Spec:       servingv1alpha1.GPUPoolSpec{NodeSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pool": "bench"}}},
	}
	if err := c.Create(ctx, pool); err != nil {
		return nil, err
	}
	res := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("64"), corev1.ResourceMemory: resource.MustParse("512Gi"), "nvidia.com/gpu": resource.MustParse("8")}
	for i := 0; i < n/8+1; i++ {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("gpu-%04d", i), Labels: map[string]string{
			"pool": "bench", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "81559"}}}
		if err := c.Create(ctx, node); err != nil {
			return nil, err
		}
		node.Status = corev1.NodeStatus{Capacity: res, Allocatable: res, Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}
		if err := c.Status().Update(ctx, node); err != nil {
			return nil, err
		}
	}
	return pool, nil
}

func benchModel(ns string, i int) *servingv1alpha1.InferenceModel {
	return &servingv1alpha1.InferenceModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("model-%04d", i)},
		Spec: servingv1alpha1.InferenceModelSpec{
			Model: servingv1alpha1.ModelSource{URI: "hf://meta-llama/Llama-3.1-8B-Instruct", Parameters: "8B", DType: servingv1alpha1.DTypeBF16},
			GPU:   servingv1alpha1.GPURequirements{Pool: "bench", Count: 1},
			// What the API server's defaulting fills in; the baseline builds from this object
			// directly, so it must carry the defaults itself.
			Engine: servingv1alpha1.EngineSpec{Type: servingv1alpha1.EngineVLLM, Port: 8000},
			Auth:   servingv1alpha1.AuthSpec{Mode: servingv1alpha1.AuthModeAPIKeyOrJWT},
		},
	}
}

// runBaseline creates the reconciler's children directly. They are relabelled so the
// manager, started afterwards, does not cache them.
func runBaseline(ctx context.Context, c client.Client, pool *servingv1alpha1.GPUPool, n, workers int) (time.Duration, error) {
	cfg := controllers.DefaultConfig()
	start := time.Now()
	err := parallel(n, workers, func(i int) error {
		objs, err := controllers.DesiredObjects(benchModel("baseline", i), pool, 1, cfg)
		if err != nil {
			return err
		}
		for _, obj := range objs {
			obj.GetLabels()[servingv1alpha1.LabelManagedBy] = "benchmark-baseline"
			if err := c.Create(ctx, obj); err != nil {
				return fmt.Errorf("baseline create: %w", err)
			}
		}
		return nil
	})
	return time.Since(start), err
}

// runModelsByHand is the other half of doing the manager's work by hand: a plain client
// creates n InferenceModels and writes on each the status the manager writes once it has
// placed the model. The models are deleted afterwards (not timed) so the manager, started
// next, has nothing of theirs to do.
func runModelsByHand(ctx context.Context, c client.Client, n, workers int) (time.Duration, error) {
	const ns = "baseline-models"
	start := time.Now()
	err := parallel(n, workers, func(i int) error {
		m := benchModel(ns, i)
		if err := c.Create(ctx, m); err != nil {
			return fmt.Errorf("creating model by hand: %w", err)
		}
		now, mem := metav1.Now(), resource.MustParse("19Gi")
		cond := func(typ, status, reason, msg string) metav1.Condition {
			return metav1.Condition{Type: typ, Status: metav1.ConditionStatus(status), Reason: reason, Message: msg, ObservedGeneration: m.Generation, LastTransitionTime: now}
		}
		m.Status = servingv1alpha1.InferenceModelStatus{
			ObservedGeneration: m.Generation,
			ModelName:          m.ServedModelName(),
			Selector:           "app.kubernetes.io/instance=" + m.Name,
			URL:                fmt.Sprintf("http://%s.%s.svc.cluster.local:8080/v1", m.Name, ns),
			Placement:          &servingv1alpha1.Placement{Pool: "bench", GPUsPerReplica: 1, GPUMemoryPerGPU: &mem, EligibleNodes: 25, FittingReplicas: 200},
			Conditions: []metav1.Condition{
				cond(servingv1alpha1.InferenceModelConditionScheduled, "True", "Placed", "fits on 25 of 25 nodes of pool bench"),
				cond(servingv1alpha1.InferenceModelConditionAvailable, "False", servingv1alpha1.InferenceModelReasonReplicasNotReady, "0 of 1 replicas ready"),
				cond(servingv1alpha1.InferenceModelConditionWeightsReady, "Unknown", servingv1alpha1.InferenceModelReasonWeightsPending, "no pod has started fetching the weights yet"),
				cond(servingv1alpha1.ConditionReady, "False", servingv1alpha1.InferenceModelReasonReplicasNotReady, "0 of 1 replicas ready"),
			},
		}
		if err := c.Status().Update(ctx, m); err != nil {
			return fmt.Errorf("writing model status by hand: %w", err)
		}
		return nil
	})
	took := time.Since(start)
	if err != nil {
		return took, err
	}
	return took, c.DeleteAllOf(ctx, &servingv1alpha1.InferenceModel{}, client.InNamespace(ns))
}

// watchScheduled watches the bench namespace's InferenceModels and closes the returned
// channel once n of them have Scheduled=True. A watch, not a polling List: listing a
// thousand models every few hundred milliseconds would load the API server under test.
func watchScheduled(ctx context.Context, cfg *rest.Config, n int) (<-chan struct{}, error) {
	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: testenv.Scheme()})
	if err != nil {
		return nil, err
	}
	w, err := wc.Watch(ctx, &servingv1alpha1.InferenceModelList{}, client.InNamespace("bench"))
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer w.Stop()
		scheduled := map[string]bool{}
		count := 0
		for ev := range w.ResultChan() {
			m, ok := ev.Object.(*servingv1alpha1.InferenceModel)
			if !ok || scheduled[m.Name] {
				continue
			}
			if meta.IsStatusConditionTrue(m.Status.Conditions, servingv1alpha1.InferenceModelConditionScheduled) {
				scheduled[m.Name] = true
				if count++; count == n {
					close(done)
					return
				}
			}
		}
	}()
	return done, nil
}

// waitConverged waits for every model to be Scheduled (the manager writes that status after
// it applied the children), then confirms the children exist.
func waitConverged(ctx context.Context, c client.Client, scheduled <-chan struct{}, n int, timeout time.Duration) error {
	deadline := time.After(timeout)
	select {
	case <-scheduled:
	case <-deadline:
		return fmt.Errorf("not all %d models Scheduled after %s", n, timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
	for {
		counts, err := childCounts(ctx, c)
		if err != nil {
			return err
		}
		if counts[0] == n && counts[1] == n && counts[2] == n {
			return nil
		}
		select {
		case <-deadline:
			return fmt.Errorf("not converged after %s: children %v", timeout, counts)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func childCounts(ctx context.Context, c client.Client) ([3]int, error) {
	var out [3]int
	kinds := []schema.GroupVersionKind{
		{Group: "apps", Version: "v1", Kind: "DeploymentList"},
		{Version: "v1", Kind: "ServiceList"},
		{Version: "v1", Kind: "ServiceAccountList"},
	}
	for i, gvk := range kinds {
		list := &metav1.PartialObjectMetadataList{}
		list.SetGroupVersionKind(gvk)
		if err := c.List(ctx, list, client.InNamespace("bench"), client.MatchingLabels{servingv1alpha1.LabelManagedBy: servingv1alpha1.ManagedByValue}); err != nil {
			return out, err
		}
		out[i] = len(list.Items)
	}
	return out, nil
}

// parallel runs f(0..n-1) on workers goroutines and returns the first error. The work is
// queued up front, so a failing worker cannot leave the feeder blocked.
func parallel(n, workers int, f func(i int) error) error {
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// heapBytes reads go_memstats_heap_alloc_bytes and go_memstats_heap_inuse_bytes.
// getDiscard GETs url and drops the body.
func getDiscard(url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return err
}

func heapBytes(url string) (alloc, inuse float64, err error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(fields[1], 64)
		if reportedMetric(fields[0]) {
			fmt.Fprintf(os.Stderr, "bench: manager %s %s\n", fields[0], fields[1])
		}
		switch fields[0] {
		case "go_memstats_heap_alloc_bytes":
			alloc = v
		case "go_memstats_heap_inuse_bytes":
			inuse = v
		}
	}
	return alloc, inuse, sc.Err()
}

func rssBytes(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// cpuSeconds is the process's user+system CPU time, from /proc/<pid>/stat.
func cpuSeconds(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may contain spaces) start after the last ')'.
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	if len(fields) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	const clockTicks = 100 // USER_HZ on Linux
	return (utime + stime) / clockTicks, nil
}

// cpuProfile takes a 5-second CPU profile from url (a Go /debug/pprof/profile endpoint)
// into file, in the background; the channel says how it went. No file, no profile.
func cpuProfile(ctx context.Context, hc *http.Client, url, file string) <-chan error {
	done := make(chan error, 1)
	if file == "" {
		done <- nil
		return done
	}
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/debug/pprof/profile?seconds=5", nil)
		if err != nil {
			done <- err
			return
		}
		resp, err := hc.Do(req)
		if err != nil {
			done <- fmt.Errorf("profiling %s: %w", url, err)
			return
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("profiling %s: %s: %s", url, resp.Status, data)
		}
		if err == nil {
			err = os.WriteFile(file, data, 0o644)
		}
		done <- err
	}()
	return done
}

// controlPlaneCPU is the CPU time, in seconds, that this process's kube-apiserver and etcd
// children have used so far: the load each phase puts on the control plane.
func controlPlaneCPU() map[string]float64 {
	out := map[string]float64{}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		data, err := os.ReadFile(d + "/stat")
		if err != nil {
			continue
		}
		text := string(data)
		open, end := strings.IndexByte(text, '('), strings.LastIndexByte(text, ')')
		if open < 0 || end < open {
			continue
		}
		name := text[open+1 : end]
		fields := strings.Fields(text[end+1:])
		if len(fields) < 2 || fields[1] != strconv.Itoa(os.Getpid()) || (name != "kube-apiserver" && name != "etcd") {
			continue
		}
		if cpu, err := cpuSeconds(pid); err == nil {
			out[name] += cpu
		}
	}
	return out
}

// reportedMetric says which of the manager's metrics the harness prints (to stderr).
func reportedMetric(name string) bool {
	for _, prefix := range []string{"rest_client_requests_total", "controller_runtime_reconcile_total", "controller_runtime_reconcile_time_seconds_sum", "workqueue_adds_total"} {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}
