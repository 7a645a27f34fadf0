package cli

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/internal/runtime/procs"
	"github.com/helixflow/helixflow/internal/runtime/serve"
	"github.com/helixflow/helixflow/internal/usage"
)

func newServeCommand() *cobra.Command {
	opts := serve.DefaultOptions()
	var kubeconfig string
	adaptiveProcs := true
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the OpenAI-compatible API in front of the engine",
		Long: `serve runs in every model pod in front of the engine. It authenticates every request
(API keys and JWTs of the model's namespace, per spec.auth.mode), enforces each key's rate
limits (divided among the model's ready replicas), forwards to the engine on localhost,
streams answers without buffering (SSE, WebSocket /v1/stream, gRPC), counts tokens from the
engine's usage and reports them to the manager, and serves Prometheus metrics.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServe(cmd.Context(), opts, kubeconfig, adaptiveProcs)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Model, "model", "", "Name of the InferenceModel this pod serves.")
	f.StringVar(&opts.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "Namespace of the InferenceModel (default $POD_NAMESPACE).")
	f.StringVar(&opts.Upstream, "upstream", opts.Upstream, "Base URL of the engine inside the pod.")
	f.StringVar(&opts.HTTPAddress, "http-address", opts.HTTPAddress, "Address of the HTTP API (OpenAI routes, WebSocket, /healthz, /readyz); 0 disables it.")
	f.StringVar(&opts.GRPCAddress, "grpc-address", opts.GRPCAddress, "Address of the gRPC Inference, health and reflection services; 0 disables it.")
	f.StringVar(&opts.MetricsAddress, "metrics-address", opts.MetricsAddress, "Address of the Prometheus metrics endpoint; 0 disables it.")
	f.StringVar(&opts.UsageEndpoint, "usage-endpoint", "", "gRPC address (host:port) of the manager's usage aggregator; empty disables usage reporting.")
	f.StringVar(&opts.UsageTokenFile, "usage-token-file", "", "ServiceAccount token (audience "+usage.TokenAudience+") sent with each usage report, read again for each: the projected token the manager mounts into model pods. Empty sends none, which the aggregator refuses unless run with --usage-allow-unauthenticated.")
	f.StringVar(&opts.UsageCAFile, "usage-ca-file", "", "CA certificates (PEM) to verify the usage aggregator's TLS certificate with, read again for each connection: the manager's CA it publishes as "+usage.CAConfigMapKey+" in the namespace's ConfigMap "+auth.JWKSConfigMapName+". Empty connects with plain gRPC, which the aggregator refuses unless run with --usage-allow-plaintext.")
	f.StringVar(&opts.UsageServerName, "usage-server-name", "", "Name the usage aggregator's certificate must be valid for (default: the host of --usage-endpoint).")
	f.Int64Var(&opts.MaxBodyBytes, "max-body-bytes", opts.MaxBodyBytes, "Largest request body accepted (413 beyond).")
	f.IntVar(&opts.MaxHeaderBytes, "max-header-bytes", opts.MaxHeaderBytes, "Largest request header block accepted (431 beyond).")
	f.DurationVar(&opts.RequestTimeout, "request-timeout", opts.RequestTimeout, "Longest engine call, streams included (504 when the engine has not answered by then).")
	f.DurationVar(&opts.BodyTimeout, "body-timeout", opts.BodyTimeout, "Longest time a client may take to send a request body (408, or the connection closed, beyond); 0 for no bound.")
	f.DurationVar(&opts.ShutdownTimeout, "shutdown-timeout", opts.ShutdownTimeout, "How long in-flight requests and streams may finish on SIGTERM.")
	f.StringVar(&opts.UpstreamHealthPath, "upstream-health-path", opts.UpstreamHealthPath, "The engine's health endpoint, checked by /readyz.")
	f.StringSliceVar(&opts.WebSocket.OriginPatterns, "websocket-origins", nil, "Browser origins allowed on the WebSocket stream and to call the HTTP API (CORS) besides the runtime's own host, and besides the InferenceModel's spec.auth.allowedOrigins (app.example.com, *.example.com, https://app.example.com).")
	f.DurationVar(&opts.WebSocket.PingInterval, "websocket-ping-interval", serve.DefaultWebSocketPingInterval, "How often the WebSocket stream pings; a connection whose pong is late by one interval is dropped.")
	f.DurationVar(&opts.WebSocket.IdleTimeout, "websocket-idle-timeout", serve.DefaultWebSocketIdleTimeout, "How long a WebSocket connection may stay without a request before it is closed (1000, idle timeout).")
	f.StringVar(&kubeconfig, "kubeconfig", "", "Path to a kubeconfig; default $KUBECONFIG, else in-cluster.")
	f.BoolVar(&adaptiveProcs, "adaptive-procs", adaptiveProcs, "Size GOMAXPROCS to the load, up to Go's default (one per CPU, or per CPU of the container's limit, read again every 30s); "+
		"false, or GOMAXPROCS set in the environment, keeps it fixed.")
	return cmd
}

func runServe(ctx context.Context, opts serve.Options, kubeconfig string, adaptiveProcs bool) error {
	if opts.Model == "" || opts.Namespace == "" {
		return errors.New("--model and --namespace (or $POD_NAMESPACE) are required")
	}
	logger := zap.New()
	ctrl.SetLogger(logger)
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	opts.Kube = cfg
	opts.Log = logger.WithName("serve")
	if adaptsProcs(adaptiveProcs) {
		// A process-wide setting, so here and not in the serve package: a data plane whose
		// load fits in fewer Ps than the node has CPUs spends less per request with fewer.
		plog := logger.WithName("procs")
		go procs.Run(ctx, procs.Config{Changed: func(from, to int, busy float64) {
			plog.V(1).Info("GOMAXPROCS changed", "from", from, "to", to, "busyCPUs", busy)
		}})
	}
	s, err := serve.New(opts)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

// adaptsProcs reports whether GOMAXPROCS follows the load: asked for by the flag, and not
// set in the environment (a fixed choice, kept as it is).
func adaptsProcs(flag bool) bool { return flag && os.Getenv("GOMAXPROCS") == "" }
