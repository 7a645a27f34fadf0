package cli

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Run(m, &env)) }

// `runtime probe` on this machine, which has no NVIDIA driver: it keeps running, reports
// NVMLUnavailable in its GPUNode, serves /healthz and says nvml_up 0 in its metrics.
func TestProbeWithoutNVML(t *testing.T) {
	kubeconfig, err := env.Kubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	addr, err := testenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runProbe(ctx, probeOptions{nodeName: "no-driver", interval: time.Second, heartbeat: time.Minute, metricsAddress: addr, kubeconfig: kubeconfig})
	}()
	node := &servingv1alpha1.GPUNode{}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := env.Client.Get(context.Background(), client.ObjectKey{Name: "no-driver"}, node)
		if c := meta.FindStatusCondition(node.Status.Conditions, servingv1alpha1.ConditionReady); err == nil && c != nil {
			if c.Reason != servingv1alpha1.GPUNodeReasonNVMLUnavailable || c.Status != "False" {
				t.Fatalf("ready = %+v", c)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no GPUNode report: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := testenv.WaitHTTP200(context.Background(), "http://"+addr+"/healthz", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "helixflow_gpu_nvml_up 0") {
		t.Errorf("metrics lack helixflow_gpu_nvml_up 0:\n%.2000s", body)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("probe returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("probe did not stop on cancel")
	}
}
