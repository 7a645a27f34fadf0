// Package cli defines the command tree of the runtime binary: serve, probe and fetch.
package cli

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/helixflow/helixflow/internal/probe"
)

// Exit codes of the runtime binary.
const (
	ExitOK    = 0
	ExitError = 1
)

// Execute runs the runtime command line and returns the process exit code.
func Execute(args []string, stdout, stderr io.Writer) int {
	root := NewRootCommand()
	root.SetArgs(args)
	root.SetContext(signalContext())
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err != nil {
		fmt.Fprintf(stderr, "runtime: %v\n", err)
		return ExitError
	}
	return ExitOK
}

// NewRootCommand returns the `runtime` command with its subcommands.
func NewRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "runtime",
		Short: "HelixFlow data plane: serve models, probe GPUs, fetch weights",
		Long: `runtime is the HelixFlow data-plane binary.

  serve  runs in every model pod in front of the engine: an OpenAI-compatible,
         authenticated, rate-limited and metered HTTP, WebSocket and gRPC front.
  probe  runs in the per-pool DaemonSet: reads the node's GPUs with NVML and
         reports them as a GPUNode, with Prometheus GPU metrics.
  fetch  runs as the model pod's init container: downloads the weights.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCommand(), newProbeCommand(), newFetchCommand())
	return root
}

func newProbeCommand() *cobra.Command {
	opts := probeOptions{}
	cmd := &cobra.Command{
		Use:   "probe",
		Short: "Report this node's GPUs (NVML) as a GPUNode and serve GPU metrics",
		Long: `probe samples the node's GPUs with NVML every --interval, keeps the GPUNode named
after the node current (written only when something changed, plus a heartbeat), and serves
Prometheus GPU metrics and /healthz on --metrics-address. Without libnvidia-ml.so it reports
NVMLUnavailable and keeps running, so the DaemonSet does not crash-loop.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runProbe(cmd.Context(), opts) },
	}
	f := cmd.Flags()
	f.StringVar(&opts.nodeName, "node-name", os.Getenv("NODE_NAME"), "Name of the node this probe runs on (default $NODE_NAME, from the downward API).")
	f.DurationVar(&opts.interval, "interval", time.Minute, "Sampling interval (at least 1s).")
	f.DurationVar(&opts.heartbeat, "heartbeat", probe.DefaultHeartbeat, "Longest time an unchanged GPUNode report goes without a write.")
	f.StringVar(&opts.metricsAddress, "metrics-address", ":9400", "Address of the Prometheus GPU metrics endpoint and /healthz.")
	f.StringVar(&opts.kubeconfig, "kubeconfig", "", "Path to a kubeconfig; default $KUBECONFIG, else in-cluster.")
	return cmd
}
