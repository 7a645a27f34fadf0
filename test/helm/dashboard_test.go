package helm_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// metricName matches the HelixFlow metric names a PromQL expression uses.
var metricName = regexp.MustCompile(`helixflow_[a-z_]+`)

// TestGrafanaDashboard: the dashboard is valid JSON, every HelixFlow metric it queries is one
// the code exports (so a renamed metric breaks this test, not the dashboard), and the chart
// ships it as a ConfigMap the API server admits only when asked to.
func TestGrafanaDashboard(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chartDir(), "dashboards", "helixflow.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	exported := exportedMetrics(t)
	used := map[string]bool{}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			for _, m := range metricName.FindAllString(q.Expr, -1) {
				base := strings.TrimSuffix(m, "_bucket")
				used[base] = true
				if !exported[base] {
					t.Errorf("panel %q queries %s, which no HelixFlow code exports", p.Title, m)
				}
			}
		}
	}
	for _, want := range []string{"helixflow_runtime_requests_total", "helixflow_runtime_time_to_first_token_seconds",
		"helixflow_runtime_tokens_total", "helixflow_runtime_rejections_total", "helixflow_gpu_memory_used_bytes", "helixflow_gpu_utilization_ratio",
		"helixflow_usage_reports_total"} {
		if !used[want] {
			t.Errorf("the dashboard does not show %s", want)
		}
	}

	for _, o := range decode(t, mustHelm(t, "template", "helixflow", chartDir(), "-n", "x", "--skip-crds")) {
		if o.GetKind() == "ConfigMap" {
			t.Fatal("dashboard ConfigMap rendered although grafanaDashboard.enabled is false")
		}
	}
	createNamespace(t, "hf-dashboard")
	manifests := mustHelm(t, "template", "helixflow", chartDir(), "-n", "hf-dashboard", "--skip-crds", "--set", "grafanaDashboard.enabled=true")
	cm := find(t, decode(t, manifests), "ConfigMap", "helixflow-dashboard")
	if cm.GetLabels()["grafana_dashboard"] != "1" {
		t.Errorf("dashboard labels %v lack the sidecar label", cm.GetLabels())
	}
	data := nested(t, cm.Object, "data", "helixflow.json").(string)
	if !json.Valid([]byte(data)) {
		t.Error("the ConfigMap's dashboard is not valid JSON")
	}
	applyDryRun(t, manifests)
}

// exportedMetrics are the metric names the code registers: the runtime's and the usage
// aggregator's full names, and the probe's helixflow_gpu_<name> gauges.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, file := range [][]string{{"runtime", "serve", "metrics.go"}, {"usage", "metrics.go"}} {
		src, err := os.ReadFile(filepath.Join(append([]string{filepath.Dir(chartDir()), "..", "internal"}, file...)...))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range metricName.FindAllString(string(src), -1) {
			out[m] = true
		}
	}
	probe, err := os.ReadFile(filepath.Join(filepath.Dir(chartDir()), "..", "internal", "probe", "metrics.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`gauge\("([a-z_]+)"`).FindAllStringSubmatch(string(probe), -1) {
		out["helixflow_gpu_"+m[1]] = true
	}
	if len(out) < 8 {
		t.Fatalf("found only %d exported metrics: the source layout changed", len(out))
	}
	return out
}
