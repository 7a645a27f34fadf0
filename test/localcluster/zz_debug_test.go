package localcluster

import (
	"context"
	"fmt"
	"io"
	"k8s.io/client-go/rest"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestZZDebugLongevity(t *testing.T) {
	if os.Getenv("LC_DEBUG") == "" {
		t.Skip()
	}
	ctx := context.Background()
	time.Sleep(60 * time.Second)
	metricsCheck(t)
	for pid := range childProcesses() {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		t.Logf("CMD %s", strings.ReplaceAll(string(b), "\x00", " "))
	}
	os.Exit(0)
	n, err := cluster.Client().CoreV1().Nodes().Get(ctx, "gpu-node-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("schedulable=%v conds=%v taints=%v", nodeSchedulable(n), n.Status.Conditions, n.Spec.Taints)
	out, _ := cluster.Kubectl(ctx, "get", "pods", "-A", "-o", "wide")
	t.Log(out)
	out, _ = cluster.Kubectl(ctx, "get", "leases", "-A")
	t.Log(out)
	out, _ = cluster.Kubectl(ctx, "get", "sa,secrets,cm", "-A")
	t.Log(out)
	exec.Command("cp", "-r", cluster.LogDir(), "/tmp/lc-debug-logs").Run()
}

func metricsCheck(t *testing.T) {
	cfg := cluster.Config()
	tr, err := rest.TransportFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: tr}
	for _, ch := range cluster.children {
		for _, a := range ch.args {
			if strings.HasPrefix(a, "--secure-port=") {
				u := "https://127.0.0.1:" + strings.TrimPrefix(a, "--secure-port=") + "/metrics"
				// serving cert is self-signed; use insecure with client cert
				cfg2 := rest.CopyConfig(cfg)
				cfg2.TLSClientConfig.CAData = nil
				cfg2.TLSClientConfig.Insecure = true
				tr2, _ := rest.TransportFor(cfg2)
				hc = &http.Client{Transport: tr2}
				resp, err := hc.Get(u)
				if err != nil {
					t.Errorf("%s: %v", u, err)
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				t.Logf("%s %s: %d %d bytes", ch.name, u, resp.StatusCode, len(b))
				resp, _ = http.Get(u)
				_ = resp
			}
		}
	}
}
