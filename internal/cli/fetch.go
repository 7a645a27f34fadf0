package cli

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/helixflow/helixflow/internal/fetch"
)

// terminationMessageLimit is what the kubelet keeps of a termination message.
const terminationMessageLimit = 4096

type fetchOptions struct {
	fetch.Options
	format         string
	credentialsDir string
	chunkMiB       int64
	terminationLog string
}

func newFetchCommand() *cobra.Command {
	var o fetchOptions
	cmd := &cobra.Command{
		Use:   "fetch",
		Short: "Download model weights (hf://, s3://, gs://, https://, oci://)",
		Long: `fetch runs as the model pod's init container and downloads the weights into --dest.

Files, and ranges of large files, download in parallel; a restarted fetch continues where
the last one stopped; every checksum the source publishes is verified; the directory is
marked complete only when every file is in place, and a fetch into a complete directory
returns at once. Progress (bytes, rate, ETA) is logged every few seconds. The outcome (a
summary, or the error) is written to --termination-log, where the InferenceModel's
WeightsReady condition reads it.

Credentials come from --credentials-dir (the Secret named by spec.model.credentialsSecretRef)
and the usual variables: HF_TOKEN, HF_ENDPOINT; AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION, AWS_ENDPOINT_URL; GOOGLE_APPLICATION_CREDENTIALS; Docker config for OCI.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runFetch(cmd.Context(), o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.URI, "uri", "", "Where the weights are, as in spec.model.uri.")
	f.StringVar(&o.Revision, "revision", "", "Branch, tag or commit to fetch (hf://).")
	f.StringVar(&o.Dest, "dest", "", "Directory to write the weights to, for example /models/<name>.")
	f.StringVar(&o.format, "format", string(fetch.FormatAll), "Weights to keep when a model has several formats: all, safetensors or gguf.")
	f.StringVar(&o.credentialsDir, "credentials-dir", "", "Directory of the mounted credentials Secret.")
	f.IntVar(&o.Concurrency, "concurrency", 8, "Parallel connections.")
	f.Int64Var(&o.chunkMiB, "chunk-size-mib", 64, "Size in MiB of the ranges large files are fetched in.")
	f.DurationVar(&o.ProgressInterval, "progress-interval", 5*time.Second, "How often progress is logged.")
	f.StringVar(&o.terminationLog, "termination-log", "/dev/termination-log", "File the outcome is written to for the kubelet; empty for none.")
	return cmd
}

func runFetch(ctx context.Context, o fetchOptions) error {
	if o.URI == "" || o.Dest == "" {
		return fmt.Errorf("--uri and --dest are required")
	}
	switch fetch.Format(o.format) {
	case fetch.FormatAll, fetch.FormatSafetensors, fetch.FormatGGUF:
		o.Format = fetch.Format(o.format)
	default:
		return fmt.Errorf("--format %q: want all, safetensors or gguf", o.format)
	}
	if o.Concurrency < 1 || o.Concurrency > 256 || o.chunkMiB < 1 || o.ProgressInterval < time.Second {
		return fmt.Errorf("--concurrency must be 1..256, --chunk-size-mib at least 1 and --progress-interval at least 1s")
	}
	o.ChunkSize = o.chunkMiB << 20
	o.Credentials = fetch.Credentials{Dir: o.credentialsDir}
	o.Log = zap.New().WithName("fetch")
	sum, err := fetch.Run(ctx, o.Options)
	if err != nil {
		writeTerminationMessage(o.terminationLog, fmt.Sprintf("%s: %v", fetch.KindOf(err), err))
		return err
	}
	o.Log.Info(sum.String())
	writeTerminationMessage(o.terminationLog, sum.String())
	return nil
}

// writeTerminationMessage leaves the outcome where the kubelet reads it. The kubelet creates
// the file; out of a pod it does not exist and nothing is written (never created: the
// default path is under /dev).
func writeTerminationMessage(path, msg string) {
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return
	}
	defer f.Close()
	if len(msg) > terminationMessageLimit {
		msg = msg[:terminationMessageLimit-3] + "..."
	}
	_, _ = f.WriteString(strings.TrimSpace(msg) + "\n")
}
