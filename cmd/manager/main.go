// Command manager is the HelixFlow controller manager. It parses flags and hands over to
// internal/manager; all behaviour lives there.
package main

import (
	"flag"
	"os"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/helixflow/helixflow/internal/manager"
)

func main() {
	opts := manager.DefaultOptions()
	flag.StringVar(&opts.MetricsBindAddress, "metrics-bind-address", opts.MetricsBindAddress,
		"Address the Prometheus metrics endpoint binds to; 0 disables it.")
	flag.StringVar(&opts.HealthProbeBindAddress, "health-probe-bind-address", opts.HealthProbeBindAddress,
		"Address the /healthz and /readyz endpoints bind to; 0 disables them.")
	flag.BoolVar(&opts.LeaderElect, "leader-elect", false,
		"Elect a leader among manager replicas so only one reconciles at a time.")
	flag.StringVar(&opts.Namespace, "namespace", opts.Namespace,
		"The manager's own namespace (default from POD_NAMESPACE, else "+manager.DefaultNamespace+").")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	// --kubeconfig is registered on flag.CommandLine by controller-runtime; KUBECONFIG and
	// in-cluster configuration are the fallbacks, as in every controller-runtime manager.
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))

	cfg, err := ctrl.GetConfig()
	if err != nil {
		ctrl.Log.Error(err, "loading kubeconfig")
		os.Exit(1)
	}
	if err := manager.Run(ctrl.SetupSignalHandler(), cfg, opts); err != nil {
		ctrl.Log.Error(err, "manager exited")
		os.Exit(1)
	}
}
