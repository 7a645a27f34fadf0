package manager

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crmanager "sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/helixflow/helixflow/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Run(m, &env)) }

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := testenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func waitHTTP200(t *testing.T, url string) {
	t.Helper()
	if err := testenv.WaitHTTP200(context.Background(), url, 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

// The manager starts against a real API server, serves health, readiness and metrics,
// takes the leader Lease in its own namespace, and stops cleanly, releasing it.
func TestManagerRunsAndLeads(t *testing.T) {
	ctx := context.Background()
	ns := "helixflow-manager-test"
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	opts := DefaultOptions()
	opts.Namespace = ns
	opts.LeaderElect = true
	opts.MetricsBindAddress = freeAddr(t)
	opts.HealthProbeBindAddress = freeAddr(t)
	// A runnable registered through Setup stands in for the reconcilers later issues add:
	// it must run, and only once this replica leads.
	led := make(chan struct{})
	opts.Setup = append(opts.Setup, func(mgr ctrl.Manager) error {
		return mgr.Add(crmanager.RunnableFunc(func(ctx context.Context) error {
			close(led)
			<-ctx.Done()
			return nil
		}))
	})

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- Run(runCtx, env.Config, opts) }()

	waitHTTP200(t, fmt.Sprintf("http://%s/healthz", opts.HealthProbeBindAddress))
	waitHTTP200(t, fmt.Sprintf("http://%s/readyz", opts.HealthProbeBindAddress))
	waitHTTP200(t, fmt.Sprintf("http://%s/metrics", opts.MetricsBindAddress))

	select {
	case <-led:
	case <-time.After(30 * time.Second):
		t.Fatal("the runnable registered through Setup never ran")
	}
	lease := &coordinationv1.Lease{}
	key := client.ObjectKey{Namespace: ns, Name: LeaderElectionID}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := env.Client.Get(ctx, key, lease)
		if err == nil && lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leader Lease %s: %v", key, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("manager returned an error on shutdown: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("manager did not stop within 30s of cancellation")
	}
	// LeaderElectionReleaseOnCancel: the next replica need not wait for the lease to expire.
	if err := env.Client.Get(ctx, key, lease); err != nil {
		t.Fatal(err)
	}
	if lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "" {
		t.Errorf("lease still held by %q after shutdown", *lease.Spec.HolderIdentity)
	}
}

func TestNewRejectsEmptyNamespace(t *testing.T) {
	opts := DefaultOptions()
	opts.Namespace = ""
	if _, err := New(env.Config, opts); err == nil {
		t.Fatal("want an error for an empty namespace")
	}
}
