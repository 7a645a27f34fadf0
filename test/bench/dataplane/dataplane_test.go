package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestHarness runs the harness's core briefly (about 1 s per path, 2 clients, one round) and
// checks only that it works: every path measured, no errors, the runtime's accounting
// consistent. No timing is asserted: that is what the figures are for.
func TestHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("runs load for a few seconds")
	}
	cfg := config{Clients: 2, Duration: time.Second, Warmup: 200 * time.Millisecond, Rounds: 1, NginxWorkers: "1", Nginx: true}
	// The test does not run apt-get: without an installed nginx, that path is left out.
	if _, ok := installedNginx(); !ok {
		t.Log("nginx is not installed: the nginx path is not measured")
		cfg.Nginx = false
	}
	var log bytes.Buffer
	cfg.Log = &log
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := runBench(ctx, cfg)
	if err != nil {
		t.Fatalf("harness: %v\n%s", err, log.String())
	}
	var out bytes.Buffer
	rep.Print(&out)
	t.Log(out.String())

	want := []string{pathDirect, pathRuntime}
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
	if !strings.Contains(out.String(), "runtime RPS >= nginx RPS") {
		t.Errorf("report has no target lines:\n%s", out.String())
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
