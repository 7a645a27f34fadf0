// Package cli defines the command tree of the runtime binary. Each subcommand's flags are
// declared here so `runtime <cmd> --help` documents the contract even before the subcommand
// is implemented; an unimplemented subcommand says so and exits non-zero.
package cli

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
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

func newServeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the OpenAI-compatible API in front of the engine",
		Args:  cobra.NoArgs,
		RunE:  notImplemented("serve", "runtime serve"),
	}
	f := cmd.Flags()
	f.String("model", "", "Namespace/name of the InferenceModel this pod serves.")
	f.String("upstream", "http://127.0.0.1:8000", "Base URL of the engine inside the pod.")
	f.String("http-address", ":8080", "Address of the HTTP API (OpenAI routes, WebSocket, /readyz).")
	f.String("grpc-address", ":9090", "Address of the gRPC Inference and health services.")
	f.String("metrics-address", ":9100", "Address of the Prometheus metrics endpoint.")
	f.String("usage-endpoint", "", "gRPC address of the manager's usage aggregator.")
	return cmd
}

func newProbeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "probe",
		Short: "Report this node's GPUs (NVML) as a GPUNode and serve GPU metrics",
		Args:  cobra.NoArgs,
		RunE:  notImplemented("probe", "GPU probing with NVML"),
	}
	f := cmd.Flags()
	f.String("node-name", "", "Name of the node this probe runs on (from the downward API).")
	f.Duration("interval", 0, "Sampling interval; defaults to the pool's spec.probe.interval.")
	f.String("metrics-address", ":9400", "Address of the Prometheus GPU metrics endpoint and /healthz.")
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
