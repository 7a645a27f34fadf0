// Package cli defines the command tree of the runtime binary. Each subcommand's flags are
// declared here so `runtime <cmd> --help` documents the contract even before the subcommand
// is implemented; an unimplemented subcommand says so and exits non-zero.
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/helixflow/helixflow/internal/probe"
)

// ErrNotImplemented is returned by subcommands whose issue has not landed yet.
var ErrNotImplemented = errors.New("not implemented yet")

// Exit codes of the runtime binary.
const (
	ExitOK             = 0
	ExitError          = 1
	ExitNotImplemented = 3
)

// Execute runs the runtime command line and returns the process exit code.
func Execute(args []string, stdout, stderr io.Writer) int {
	root := NewRootCommand()
	root.SetArgs(args)
	root.SetContext(signalContext())
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, ErrNotImplemented):
		fmt.Fprintf(stderr, "runtime: %v\n", err)
		return ExitNotImplemented
	default:
		fmt.Fprintf(stderr, "runtime: %v\n", err)
		return ExitError
	}
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

func notImplemented(name, issue string) func(*cobra.Command, []string) error {
	return func(*cobra.Command, []string) error {
		return fmt.Errorf("%s: %w (tracked by the %s issue)", name, ErrNotImplemented, issue)
	}
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

func newFetchCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fetch",
		Short: "Download model weights (hf://, s3://, gs://, https://, oci://, pvc://)",
		Args:  cobra.NoArgs,
		RunE:  notImplemented("fetch", "model weights"),
	}
	f := cmd.Flags()
	f.String("uri", "", "Where the weights are, as in spec.model.uri.")
	f.String("revision", "", "Branch, tag or commit to fetch.")
	f.String("dest", "", "Directory to write the weights to, for example /models/<name>.")
	return cmd
}
