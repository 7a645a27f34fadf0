// Command local-cluster starts a local Kubernetes control plane with simulated GPU nodes
// (package test/localcluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler
// and kwok) that keeps running after the command returns, and stops it again. `make demo`
// uses it; it is also the quickest way to a cluster for trying HelixFlow by hand.
//
//	go run ./hack/local-cluster up --dir /tmp/hf     # prints export KUBECONFIG=/tmp/hf/kubeconfig
//	go run ./hack/local-cluster down --dir /tmp/hf
//
// up adds four GPU nodes labelled as NVIDIA GPU Feature Discovery labels real ones:
// gpu-h100-0 and gpu-h100-1 with 8 x H100 80GB each, gpu-a100-0 and gpu-a100-1 with
// 8 x A100 40GB each. Like every simulated node they carry the taint kwok.x-k8s.io/node=fake:
// NoSchedule, so only pods that tolerate it (a GPUPool's tolerations) land there.
//
// The folder holds the kubeconfig, etcd's data, certificates, logs/ and the file pids, which
// lists every process up started (name, PID, start time). up on a folder whose processes all
// still run and whose API server is healthy reuses that cluster; a folder left by a cluster
// that has since died is cleaned up first (by its recorded PIDs) and started anew. down ends
// exactly the recorded processes, nothing else, and removes the folder.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/helixflow/helixflow/test/localcluster"
)

// Files in the state folder besides the cluster's own.
const (
	pidsFile   = "pids"
	readyFile  = "ready"   // written once the nodes are Ready: a folder without it is a failed up
	binDirFile = "bin-dir" // the folder of the binaries, so that a reusing up can name kubectl
)

const (
	startTimeout = 5 * time.Minute
	stopGrace    = 20 * time.Second
)

// gpuNode is one simulated node and the labels GPU Feature Discovery would give it.
type gpuNode struct {
	name   string
	gpus   int
	labels map[string]string
}

// gfdLabels are the labels GPU Feature Discovery sets on a node with gpus GPUs of one kind.
func gfdLabels(product, memoryMiB, family, machine, computeMajor, computeMinor string, gpus int) map[string]string {
	return map[string]string{
		"nvidia.com/gpu.present":          "true",
		"nvidia.com/gpu.product":          product,
		"nvidia.com/gpu.memory":           memoryMiB,
		"nvidia.com/gpu.count":            fmt.Sprint(gpus),
		"nvidia.com/gpu.family":           family,
		"nvidia.com/gpu.machine":          machine,
		"nvidia.com/gpu.compute.major":    computeMajor,
		"nvidia.com/gpu.compute.minor":    computeMinor,
		"nvidia.com/gpu.replicas":         "1",
		"nvidia.com/gpu.sharing-strategy": "none",
		"nvidia.com/mig.capable":          "true",
		"nvidia.com/cuda.driver.major":    "550",
		"nvidia.com/cuda.driver.minor":    "54",
		"nvidia.com/cuda.driver.rev":      "15",
		"nvidia.com/cuda.runtime.major":   "12",
		"nvidia.com/cuda.runtime.minor":   "4",
	}
}

// demoNodes: two kinds, so that GPUPools can select by product and a model can be too big
// for the smaller GPUs.
func demoNodes() []gpuNode {
	var nodes []gpuNode
	for i := range 2 {
		nodes = append(nodes, gpuNode{
			name:   fmt.Sprintf("gpu-h100-%d", i),
			gpus:   8,
			labels: gfdLabels("NVIDIA-H100-80GB-HBM3", "81559", "hopper", "DGX-H100", "9", "0", 8),
		})
	}
	for i := range 2 {
		nodes = append(nodes, gpuNode{
			name:   fmt.Sprintf("gpu-a100-%d", i),
			gpus:   8,
			labels: gfdLabels("NVIDIA-A100-SXM4-40GB", "40960", "ampere", "DGX-A100", "8", "0", 8),
		})
	}
	return nodes
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "local-cluster:", err)
		os.Exit(1)
	}
}

const usage = `usage: local-cluster up|down --dir DIR [--bin-dir DIR]

  up    start the control plane and GPU nodes (or reuse the running one in DIR)
  down  stop every process up recorded in DIR, then remove DIR`

func run(args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return errors.New(usage)
	}
	cmd := args[0]
	fs := flag.NewFlagSet("local-cluster "+cmd, flag.ContinueOnError)
	dir := fs.String("dir", "", "state folder: kubeconfig, etcd data, certificates, logs, recorded PIDs (required)")
	binDir := fs.String("bin-dir", "", "folder with etcd, kube-apiserver, ..., kwok (default: KUBEBUILDER_ASSETS, else built by hack/testbin/build.sh)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *dir == "" || fs.NArg() > 0 {
		return errors.New(usage)
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch cmd {
	case "up":
		return up(ctx, abs, *binDir)
	case "down":
		return down(abs)
	}
	return errors.New(usage)
}

func up(ctx context.Context, dir, binDir string) error {
	procs, err := readPIDs(dir)
	switch {
	case err == nil:
		if healthy(ctx, dir, procs) {
			fmt.Printf("local-cluster: already up in %s (%s)\n", dir, describe(procs))
			printEnv(dir)
			if b, err := os.ReadFile(filepath.Join(dir, binDirFile)); err == nil {
				printKubectl(string(b))
			}
			return nil
		}
		// A cluster that died (a reboot, a killed process) or an up that failed half-way:
		// end whatever of it still runs, by its recorded PIDs, and start afresh.
		fmt.Printf("local-cluster: the cluster in %s is not healthy; stopping its recorded processes and starting a new one\n", dir)
		if err := localcluster.StopProcesses(procs, stopGrace); err != nil {
			return err
		}
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	case !errors.Is(err, os.ErrNotExist):
		return err
	default:
		// No PID file: the folder must be new or empty, never someone's files that Stop or
		// down would then remove.
		if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
			return fmt.Errorf("%s is not empty and holds no %s file: not a local-cluster folder (remove it, or pick another --dir)", dir, pidsFile)
		}
	}

	began := time.Now()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	cl, err := localcluster.Start(ctx, localcluster.Options{BinDir: binDir, Dir: dir, Detached: true})
	if err != nil {
		return err
	}
	fail := func(err error) error {
		logs := cl.Logs()
		if stopErr := cl.Stop(); stopErr != nil {
			err = errors.Join(err, stopErr)
		}
		return fmt.Errorf("%w\n%s", err, logs)
	}
	procs, err = cl.Processes()
	if err != nil {
		return fail(err)
	}
	// Recorded before anything else can fail, so that down finds every process.
	if err := writePIDs(dir, procs); err != nil {
		return fail(err)
	}
	if err := addNodes(ctx, cl, demoNodes()); err != nil {
		return fail(err)
	}
	if err := os.WriteFile(filepath.Join(dir, binDirFile), []byte(cl.BinDir()), 0o600); err != nil {
		return fail(err)
	}
	if err := os.WriteFile(filepath.Join(dir, readyFile), nil, 0o600); err != nil {
		return fail(err)
	}
	fmt.Printf("local-cluster: up in %s after %s (%s)\n", dir, time.Since(began).Round(time.Second), describe(procs))
	for _, n := range demoNodes() {
		fmt.Printf("  node %s: %d x %s (%s MiB each)\n", n.name, n.gpus, n.labels["nvidia.com/gpu.product"], n.labels["nvidia.com/gpu.memory"])
	}
	fmt.Printf("  logs in %s\n", cl.LogDir())
	printEnv(dir)
	printKubectl(cl.BinDir())
	return nil
}

// addNodes creates the nodes at once and waits until all are schedulable.
func addNodes(ctx context.Context, cl *localcluster.Cluster, nodes []gpuNode) error {
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	for i, n := range nodes {
		wg.Go(func() { errs[i] = cl.AddGPUNode(ctx, n.name, n.gpus, n.labels) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func down(dir string) error {
	procs, err := readPIDs(dir)
	if errors.Is(err, os.ErrNotExist) {
		if _, statErr := os.Stat(dir); errors.Is(statErr, os.ErrNotExist) {
			fmt.Printf("local-cluster: nothing in %s to stop\n", dir)
			return nil
		}
		return fmt.Errorf("%s holds no %s file: not a local-cluster folder, leaving it alone", dir, pidsFile)
	}
	if err != nil {
		return err
	}
	if err := localcluster.StopProcesses(procs, stopGrace); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	fmt.Printf("local-cluster: stopped %s; removed %s\n", describe(procs), dir)
	return nil
}

// healthy: every recorded process runs, up finished, and the API server answers /readyz.
func healthy(ctx context.Context, dir string, procs []localcluster.Process) bool {
	for _, p := range procs {
		if !p.Running() {
			return false
		}
	}
	if _, err := os.Stat(filepath.Join(dir, readyFile)); err != nil {
		return false
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(dir, "kubeconfig"))
	if err != nil {
		return false
	}
	cfg.Timeout = 5 * time.Second
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return false
	}
	_, err = cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	return err == nil
}

func readPIDs(dir string) ([]localcluster.Process, error) {
	return localcluster.ReadPIDFile(filepath.Join(dir, pidsFile))
}

// writePIDs writes the PID file through a rename, so that a reader never sees half of it.
func writePIDs(dir string, procs []localcluster.Process) error {
	var b strings.Builder
	b.WriteString("# NAME PID STARTTIME (clock ticks after boot, /proc/PID/stat field 22), in start order\n")
	for _, p := range procs {
		b.WriteString(p.String() + "\n")
	}
	tmp := filepath.Join(dir, pidsFile+".tmp")
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, pidsFile))
}

func describe(procs []localcluster.Process) string {
	parts := make([]string, len(procs))
	for i, p := range procs {
		parts[i] = fmt.Sprintf("%s pid %d", p.Name, p.PID)
	}
	return strings.Join(parts, ", ")
}

func printEnv(dir string) {
	fmt.Printf("  export KUBECONFIG=%s\n", filepath.Join(dir, "kubeconfig"))
}

func printKubectl(binDir string) {
	fmt.Printf("  kubectl is %s\n", filepath.Join(binDir, "kubectl"))
}
