package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/helixflow/helixflow/test/clients"
)

// TestHarness runs the harness's core briefly (about 1 s per path, 2 clients, one round) and
// checks only that it works: every path measured, no errors, the runtime's accounting
// consistent, every child process gone afterwards. No timing is asserted: that is what the
// figures are for. It builds the engine and the runtime and starts an API server (envtest).
func TestHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds the engine and the runtime, starts an API server and runs load for a few seconds")
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Skip("KUBEBUILDER_ASSETS is not set: runtime serve needs an API server (envtest); " +
			"run `make test`, or KUBEBUILDER_ASSETS=$(hack/testbin/build.sh) go test ./test/bench/dataplane")
	}
	cfg := config{Clients: 2, Duration: time.Second, Warmup: 200 * time.Millisecond, Rounds: 1, NginxWorkers: "1", Nginx: true}
	// The test does not run apt-get: without an installed nginx, that path is left out.
	if _, ok := installedNginx(); !ok {
		t.Log("nginx is not installed: the nginx path is not measured")
		cfg.Nginx = false
	}
	var log bytes.Buffer
	cfg.Log = &log
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The same runtime once more as the baseline path (in use, another commit's build).
	cfg.BaselineRuntime = filepath.Join(t.TempDir(), runtimeBinary)
	build := exec.CommandContext(ctx, "go", "build", "-o", cfg.BaselineRuntime, "./cmd/"+runtimeBinary)
	build.Dir = clients.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the baseline runtime: %v\n%s", err, out)
	}
	rep, err := runBench(ctx, cfg)
	if err != nil {
		t.Fatalf("harness: %v\n%s", err, log.String())
	}
	var out bytes.Buffer
	rep.Print(&out)
	t.Log(out.String())

	want := []string{pathDirect, pathRuntime, pathBaseline}
	if cfg.Nginx {
		want = append(want, pathNginx)
	}
	for _, name := range want {
		p := rep.path(name)
		switch {
		case p == nil || !p.measured():
			t.Errorf("%s: not measured", name)
		case p.errors() != 0:
			t.Errorf("%s: %d errors: %v", name, p.errors(), p.errorSamples())
		case p.requests() == 0 || p.rps() <= 0 || p.p50() <= 0 || p.p99() < p.p50():
			t.Errorf("%s: implausible figures: %d requests, %.0f RPS, p50 %s, p99 %s", name, p.requests(), p.rps(), p.p50(), p.p99())
		}
	}
	rt := rep.path(pathRuntime)
	if len(rt.Notes) != 2 {
		t.Errorf("runtime notes = %q, want the enforcement and accounting checks", rt.Notes)
	}
	for _, n := range rt.Notes {
		if strings.HasPrefix(n, "MISMATCH") {
			t.Error(n)
		}
	}
	for _, line := range []string{"runtime RPS >= nginx RPS", "against the baseline runtime"} {
		if !strings.Contains(out.String(), line) {
			t.Errorf("report has no %q line:\n%s", line, out.String())
		}
	}
	// Every component was its own process, with its CPU measured, and is stopped by now.
	for _, name := range want {
		p := rep.path(name)
		for i, r := range p.Rounds {
			if r.CPUErr != nil {
				t.Errorf("%s round %d: CPU unknown: %v", name, i+1, r.CPUErr)
			}
		}
	}
	if got := childPIDs(os.Getpid()); len(got) != 0 {
		t.Errorf("child processes left after the run: %v", got)
	}
}

func TestMetricLinesSum(t *testing.T) {
	m := metricLines{
		`helixflow_runtime_requests_total{code="200",key_id="a",model="m",route="chat"} 7`,
		`helixflow_runtime_requests_total{code="200",key_id="a",model="m",route="models"} 1`,
		`helixflow_runtime_requests_total{code="429",key_id="a",model="m",route="chat"} 2`,
		`helixflow_runtime_requests_total{code="200",key_id="b",model="m",route="chat"} 5`,
		`helixflow_runtime_requests_total_other{code="200",key_id="a"} 100`,
		`go_sched_gomaxprocs_threads 4`,
	}
	if got := m.sum("helixflow_runtime_requests_total", `code="200"`, `key_id="a"`); got != 8 {
		t.Errorf("sum = %v, want 8", got)
	}
	if got := m.sum("go_sched_gomaxprocs_threads"); got != 4 {
		t.Errorf("unlabelled = %v, want 4", got)
	}
}

func TestTailBuffer(t *testing.T) {
	b := &tailBuffer{max: 8}
	for _, s := range []string{"abc", "defgh", "ijk"} {
		if _, err := b.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	if got := b.String(); got != "defghijk" {
		t.Errorf("tail = %q, want %q", got, "defghijk")
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	if got := percentile(d, 0.5); got != 50 {
		t.Errorf("p50 = %d, want 50", got)
	}
	if got := percentile(d, 0.99); got != 99 {
		t.Errorf("p99 = %d, want 99", got)
	}
	if got := percentile(d[:1], 0.99); got != 1 {
		t.Errorf("p99 of one = %d, want 1", got)
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("p50 of none = %d, want 0", got)
	}
}

func TestMedian(t *testing.T) {
	rs := []loadResult{{RPS: 3}, {RPS: 1}, {RPS: 2}}
	if got := median(rs, func(r loadResult) float64 { return r.RPS }); got != 2 {
		t.Errorf("median of 3 = %v, want 2", got)
	}
	if got := median(rs[:2], func(r loadResult) float64 { return r.RPS }); got != 2 {
		t.Errorf("median of 2 = %v, want 2", got)
	}
}

func TestPairRounds(t *testing.T) {
	rt := &pathResult{Name: pathRuntime, Rounds: []loadResult{{RPS: 110, P50: 900}, {RPS: 90, P50: 1200}, {RPS: 100, P50: 1000}}}
	ngx := &pathResult{Name: pathNginx, Rounds: []loadResult{{RPS: 100, P50: 1000}, {RPS: 100, P50: 1000}, {RPS: 100, P50: 1000}}}
	pr := pairRounds(rt, ngx)
	want := "runtime serve RPS / nginx RPS 1.10x, 0.90x, 1.00x; runtime serve ahead in 2 of 3 rounds"
	if got := pr.describe(rt, ngx); got != want {
		t.Errorf("describe = %q, want %q", got, want)
	}
	if pr.rpsRatio != 1 || pr.p50Diff != 0 {
		t.Errorf("medians of the pairs: %vx, %v; want 1x, 0", pr.rpsRatio, pr.p50Diff)
	}

	// A slow spell (half speed) over round 2 and the runtime's turn in round 3: the paths'
	// own medians put nginx ahead, the pairs' medians do not.
	rt.Rounds = []loadResult{{RPS: 105, P50: 950}, {RPS: 52, P50: 1900}, {RPS: 53, P50: 1880}}
	ngx.Rounds = []loadResult{{RPS: 100, P50: 1000}, {RPS: 50, P50: 2000}, {RPS: 100, P50: 1000}}
	if rt.rps() >= ngx.rps() {
		t.Fatalf("unpaired medians %v vs %v: the case does not show what it is for", rt.rps(), ngx.rps())
	}
	pr = pairRounds(rt, ngx)
	if pr.rpsRatio < 1 || pr.ahead != 2 || pr.p50Diff != -50 {
		t.Errorf("pairs of a slow spell: %vx, ahead in %d, p50 %v; want >= 1x, 2, -50ns", pr.rpsRatio, pr.ahead, pr.p50Diff)
	}
}
