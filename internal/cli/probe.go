package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/helixflow/helixflow/internal/gpu"
	"github.com/helixflow/helixflow/internal/probe"
	"github.com/helixflow/helixflow/internal/scheme"
)

type probeOptions struct {
	nodeName       string
	interval       time.Duration
	heartbeat      time.Duration
	metricsAddress string
	kubeconfig     string
}

// signalContext ends on SIGINT or SIGTERM, as a pod is stopped.
func signalContext() context.Context {
	ctx, _ := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	return ctx
}

func runProbe(ctx context.Context, o probeOptions) error {
	if o.nodeName == "" {
		return errors.New("--node-name (or $NODE_NAME) is required")
	}
	if o.interval < time.Second {
		return fmt.Errorf("--interval %s: must be at least 1s", o.interval)
	}
	logger := zap.New()
	ctrl.SetLogger(logger)
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		return fmt.Errorf("creating client: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	r := &probe.Reporter{
		Client: c, NodeName: o.nodeName, Heartbeat: o.heartbeat, Metrics: probe.NewMetrics(reg),
		Open: func() (gpu.Prober, error) { return gpu.Open() },
	}

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		// Unhealthy only when the sampling loop is stuck, not when NVML is missing: a
		// restart would not bring the driver back.
		if !r.Healthy(3*o.interval + 10*time.Second) {
			http.Error(w, "probe loop stalled", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, MaxHeaderBytes: 16 << 10}
	ln, err := net.Listen("tcp", o.metricsAddress)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", o.metricsAddress, err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer func() {
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	logger.Info("probe started", "node", o.nodeName, "interval", o.interval, "metrics", ln.Addr().String())
	return r.Run(ctrl.LoggerInto(ctx, logger), o.interval)
}
