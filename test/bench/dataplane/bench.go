package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/helixflow/helixflow/test/clients"
	"github.com/helixflow/helixflow/test/testenv"
)

// config is one benchmark run.
type config struct {
	Clients  int
	Duration time.Duration
	Warmup   time.Duration
	Rounds   int
	// NginxWorkers is nginx's worker_processes.
	NginxWorkers string
	// Nginx measures the nginx path; when nginx cannot be found or installed the path is
	// skipped with the reason (never a made-up figure).
	Nginx bool
	// BaselineRuntime is a second runtime binary (another commit's build, or a script that
	// execs one with other settings), measured as its own path, interleaved with the others,
	// so a change and its baseline are compared in one run. Empty leaves the path out.
	BaselineRuntime string
	// Paths limits the measured paths (pathDirect, pathRuntime, pathNginx, pathBaseline);
	// empty is all.
	// Setup and checks run for all of them; only the load is limited (for profiling one path).
	Paths []string
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

func (c config) runs(name string) bool { return len(c.Paths) == 0 || slices.Contains(c.Paths, name) }

func defaultConfig() config {
	// 27 rounds of 5 s (about 10 minutes): on the 2-core development VM, fewer leave the
	// verdict to the VM's noise (docs/runtime.md, "Reading a run").
	return config{Clients: 16, Duration: 5 * time.Second, Warmup: 2 * time.Second, Rounds: 27, NginxWorkers: "auto", Nginx: true}
}

// Path names, in table order.
const (
	pathDirect   = "direct"
	pathRuntime  = "runtime serve"
	pathNginx    = "nginx"
	pathBaseline = "runtime base" // -baseline-runtime
)

// pathResult is one path over all rounds.
type pathResult struct {
	Name   string
	Rounds []loadResult
	// Skipped says why the path was not measured ("" when it was).
	Skipped string
	// Notes are checks made on the path besides the load (auth and limits enforced,
	// metrics and usage counted).
	Notes []string
}

func (p *pathResult) measured() bool { return p.Skipped == "" && len(p.Rounds) > 0 }

// Medians over rounds; errors and requests are summed.
func (p *pathResult) rps() float64 {
	return median(p.Rounds, func(r loadResult) float64 { return r.RPS })
}

func (p *pathResult) p50() time.Duration {
	return time.Duration(median(p.Rounds, func(r loadResult) float64 { return float64(r.P50) }))
}

func (p *pathResult) p99() time.Duration {
	return time.Duration(median(p.Rounds, func(r loadResult) float64 { return float64(r.P99) }))
}

// CPU per request: all the path's processes, and each alone.
func (p *pathResult) cpuPerRequest() time.Duration {
	return time.Duration(median(p.Rounds, func(r loadResult) float64 { return float64(r.CPUPerRequest()) }))
}

func (p *pathResult) harnessCPU() time.Duration {
	return time.Duration(median(p.Rounds, func(r loadResult) float64 { return float64(r.perRequest(r.HarnessCPU)) }))
}

func (p *pathResult) engineCPU() time.Duration {
	return time.Duration(median(p.Rounds, func(r loadResult) float64 { return float64(r.perRequest(r.EngineCPU)) }))
}

func (p *pathResult) proxyCPU() time.Duration {
	return time.Duration(median(p.Rounds, func(r loadResult) float64 { return float64(r.perRequest(r.ProxyCPU)) }))
}

func (p *pathResult) errors() int64 {
	var n int64
	for _, r := range p.Rounds {
		n += r.Errors
	}
	return n
}

func (p *pathResult) requests() int64 {
	var n int64
	for _, r := range p.Rounds {
		n += r.Requests
	}
	return n
}

// errorSamples merges the error messages of every round.
func (p *pathResult) errorSamples() map[string]int64 {
	out := map[string]int64{}
	for _, r := range p.Rounds {
		for k, v := range r.ErrorSamples {
			out[k] += v
		}
	}
	return out
}

func median(rs []loadResult, f func(loadResult) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	return medianOf(v)
}

// medianOf sorts v and returns its median (0 for none).
func medianOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// report is the outcome of a run.
type report struct {
	Config  config
	Machine string
	// LoadBefore and LoadAfter are the system's load averages around the run ("" unknown):
	// other work on the machine competes with the paths for the same CPUs.
	LoadBefore, LoadAfter string
	// Processes describe the processes measured: the harness and each child.
	Processes []string
	Paths     []*pathResult
}

// loadAverage is /proc/loadavg's 1, 5 and 15 minute averages, or "" where there is none.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func (r *report) path(name string) *pathResult {
	for _, p := range r.Paths {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// runBench builds the engine and the runtime, starts an API server (envtest) and every
// component as its own process (engine, runtime serve, nginx), then measures the paths
// interleaved. Every child is stopped, by PID, before it returns, also when ctx ends
// (SIGINT, SIGTERM).
func runBench(ctx context.Context, cfg config) (*report, error) {
	if cfg.Clients < 1 || cfg.Rounds < 1 || cfg.Duration <= 0 || cfg.Warmup < 0 {
		return nil, errors.New("need -clients >= 1, -rounds >= 1, -duration > 0 and -warmup >= 0")
	}
	logf := func(format string, args ...any) {
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, "bench-dataplane: "+format+"\n", args...)
		}
	}
	// stopping runs a child's stop and logs how it went.
	stopping := func(what string, stop func() error) {
		if err := stop(); err != nil {
			logf("stopping %s: %v", what, err)
		}
	}
	rep := &report{Config: cfg, Machine: machine(), LoadBefore: loadAverage()}
	defer func() { rep.LoadAfter = loadAverage() }()

	root := clients.RepoRoot()
	if root == "" {
		return nil, errors.New("the repository root was not found (run from inside the repository)")
	}
	tmp, err := os.MkdirTemp("", "helixflow-bench-dataplane-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	// One after the other: on a small machine a build beside kube-apiserver's start can
	// delay it past envtest's start timeout.
	logf("building %s and %s", engineBinary, runtimeBinary)
	engineBin, runtimeBin, err := buildBinaries(ctx, root, tmp)
	if err != nil {
		return nil, err
	}
	logf("starting the API server (envtest)")
	// envtest logs through controller-runtime's logger; its error, returned, says enough.
	ctrllog.SetLogger(logr.Discard())
	env, err := testenv.Start()
	if err != nil {
		return nil, fmt.Errorf("starting the API server: %w", err)
	}
	defer stopping("the API server (envtest)", env.Stop)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	kubeconfig, err := env.Kubeconfig(tmp)
	if err != nil {
		return nil, err
	}

	eng, err := startEngine(ctx, engineBin)
	if err != nil {
		return nil, fmt.Errorf("starting the test engine: %w", err)
	}
	defer stopping("the test engine", eng.close)
	logf("test engine on %s (pid %d)", eng.url, eng.proc.pid())
	rep.Processes = append(rep.Processes, fmt.Sprintf("harness (load generator) pid %d, GOMAXPROCS %d", os.Getpid(), runtime.GOMAXPROCS(0)),
		fmt.Sprintf("test engine pid %d (%s, built from ./test/testengine/cmd/%s)", eng.proc.pid(), engineBinary, engineBinary))

	direct := &pathResult{Name: pathDirect}
	rt := &pathResult{Name: pathRuntime}
	ngx := &pathResult{Name: pathNginx}
	rep.Paths = []*pathResult{direct, rt, ngx}
	targets := map[*pathResult]target{}

	targets[direct] = target{url: eng.url, enginePID: eng.proc.pid()}

	key, keyID, limitedKey, err := benchObjects(ctx, env.Client)
	if err != nil {
		return nil, err
	}
	rs, err := startRuntime(ctx, runtimeBin, eng.url, kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("starting runtime serve: %w", err)
	}
	defer stopping("runtime serve", rs.close)
	rs.key, rs.keyID, rs.limitedKey = key, keyID, limitedKey
	logf("runtime serve on %s (pid %d, metrics on %s)", rs.url, rs.proc.pid(), rs.metricsURL)
	// The runtime sizes its GOMAXPROCS to its load (--adaptive-procs): the line says what it
	// had at the start and, once the load has run, at the end.
	procsAtStart := rs.gomaxprocs(ctx)
	rtProcess := len(rep.Processes)
	describeRuntime := func(procs string) string {
		return fmt.Sprintf("runtime serve pid %d, GOMAXPROCS %s (%s serve, built from ./cmd/runtime, against a kube-apiserver: envtest)",
			rs.proc.pid(), procs, runtimeBinary)
	}
	rep.Processes = append(rep.Processes, describeRuntime(procsAtStart))
	targets[rt] = target{url: rs.url, authorization: "Bearer " + rs.key, enginePID: eng.proc.pid(), proxyPID: rs.proc.pid()}
	if cfg.BaselineRuntime != "" {
		base := &pathResult{Name: pathBaseline}
		rep.Paths = append(rep.Paths, base)
		bs, err := startRuntime(ctx, cfg.BaselineRuntime, eng.url, kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("starting the baseline runtime %s: %w", cfg.BaselineRuntime, err)
		}
		defer stopping("the baseline runtime", bs.close)
		logf("baseline runtime (%s) on %s (pid %d)", cfg.BaselineRuntime, bs.url, bs.proc.pid())
		rep.Processes = append(rep.Processes, fmt.Sprintf("baseline runtime pid %d (%s)", bs.proc.pid(), cfg.BaselineRuntime))
		targets[base] = target{url: bs.url, authorization: "Bearer " + rs.key, enginePID: eng.proc.pid(), proxyPID: bs.proc.pid()}
	}
	notes, err := rs.checkEnforcement(ctx)
	if err != nil {
		return nil, fmt.Errorf("runtime serve: %w", err)
	}
	rt.Notes = append(rt.Notes, notes...)

	switch {
	case !cfg.Nginx:
		ngx.Skipped = "disabled with -nginx=false"
	default:
		nx, err := startNginx(ctx, eng.url, cfg.NginxWorkers, logf)
		if err != nil {
			var unavailable *nginxUnavailable
			if !errors.As(err, &unavailable) {
				return nil, fmt.Errorf("starting nginx: %w", err)
			}
			ngx.Skipped = unavailable.Error()
			logf("skipping the nginx path: %s", ngx.Skipped)
			break
		}
		defer stopping("nginx", nx.close)
		logf("nginx %s on %s (master pid %d, %d worker(s))", nx.version, nx.url, nx.proc.pid(), nx.workers)
		rep.Processes = append(rep.Processes, fmt.Sprintf("nginx master pid %d + %d worker(s) (worker_processes %s)", nx.proc.pid(), nx.workers, cfg.NginxWorkers))
		targets[ngx] = target{url: nx.url, enginePID: eng.proc.pid(), proxyPID: nx.proc.pid()}
		ngx.Notes = append(ngx.Notes, "nginx "+nx.version+", worker_processes "+cfg.NginxWorkers)
	}

	var order []*pathResult
	for _, p := range rep.Paths {
		if _, ok := targets[p]; !ok {
			continue
		}
		if !cfg.runs(p.Name) {
			p.Skipped = "left out with -paths"
			continue
		}
		order = append(order, p)
	}
	// Each path answers one request correctly before any load.
	for p, t := range targets {
		if err := probe(ctx, t); err != nil {
			return nil, fmt.Errorf("%s: correctness probe: %w", p.Name, err)
		}
	}
	for round := range cfg.Rounds {
		for i := range order {
			// The starting path rotates, so no path always runs first (or after the same one).
			p := order[(i+round)%len(order)]
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			res := runLoad(ctx, targets[p], cfg.Clients, cfg.Warmup, cfg.Duration)
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			logf("round %d/%d %-13s %8.0f req/s  p50 %s  p99 %s  errors %d", round+1, cfg.Rounds, p.Name, res.RPS, fmtMS(res.P50), fmtMS(res.P99), res.Errors)
			p.Rounds = append(p.Rounds, res)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rep.Processes[rtProcess] = describeRuntime(procsAtStart + " at the start, " + rs.gomaxprocs(ctx) +
		" at the end (sized to its load, up to Go's default)")
	okThroughRuntime := int64(1) // the probe
	for _, r := range rt.Rounds {
		okThroughRuntime += r.Sent
	}
	notes, err = rs.checkAccounting(ctx, okThroughRuntime)
	if err != nil {
		return nil, fmt.Errorf("runtime serve: %w", err)
	}
	rt.Notes = append(rt.Notes, notes...)
	return rep, nil
}

func machine() string {
	s := fmt.Sprintf("%s/%s, %d CPUs (runtime.NumCPU), GOMAXPROCS %d in the harness, %s", runtime.GOOS, runtime.GOARCH,
		runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		s += ", kernel " + strings.TrimSpace(string(out))
	}
	return s
}

func fmtCPU(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

func fmtMS(d time.Duration) string {
	return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond))
}

// Print writes the table and the targets.
func (r *report) Print(w io.Writer) {
	c := r.Config
	fmt.Fprintf(w, "\nData-plane benchmark: POST /v1/chat/completions (non-stream, max_tokens 8), test engine with no delays\n")
	fmt.Fprintf(w, "machine: %s\n", r.Machine)
	if r.LoadBefore != "" {
		fmt.Fprintf(w, "load average (1/5/15 min): %s before the run, %s after (a figure above the CPU count means other work competed for the CPUs)\n",
			r.LoadBefore, r.LoadAfter)
	}
	fmt.Fprintf(w, "load: %d clients over keep-alive connections, %s measured after %s warm-up, per path and round; %d rounds interleaved; medians over rounds\n\n",
		c.Clients, c.Duration, c.Warmup, c.Rounds)

	if len(r.Processes) > 0 {
		fmt.Fprintln(w, "processes (each its own Go runtime or nginx processes, as in production):")
		for _, p := range r.Processes {
			fmt.Fprintf(w, "  %s\n", p)
		}
		fmt.Fprintln(w)
	}

	direct := r.path(pathDirect)
	fmt.Fprintf(w, "%-14s %9s %10s %10s %10s %7s %11s %11s %10s %10s\n", "path", "RPS", "p50", "p99", "requests", "errors", "RPS/direct", "added p50", "CPU/req", "proxy CPU")
	for _, p := range r.Paths {
		if !p.measured() {
			fmt.Fprintf(w, "%-14s %s\n", p.Name, "not measured: "+p.Skipped)
			continue
		}
		ratio, added, proxy := "-", "-", "-"
		if p != direct && direct.measured() {
			ratio = fmt.Sprintf("%.2f", p.rps()/direct.rps())
			added = fmt.Sprintf("%+.3f ms", float64(p.p50()-direct.p50())/float64(time.Millisecond))
		}
		if p != direct {
			proxy = fmtCPU(p.proxyCPU())
		}
		fmt.Fprintf(w, "%-14s %9.0f %10s %10s %10d %7d %11s %11s %10s %10s\n", p.Name, p.rps(), fmtMS(p.p50()), fmtMS(p.p99()),
			p.requests(), p.errors(), ratio, added, fmtCPU(p.cpuPerRequest()), proxy)
	}
	fmt.Fprintln(w, "(RPS, p50, p99, CPU: medians over rounds; requests, errors: all rounds. CPU/req: CPU time per request of every"+
		" process on the path: the harness (load generator only, getrusage) + the engine process + the proxy process (/proc, 10 ms ticks);"+
		" proxy CPU: runtime serve's process, or nginx's master + workers, alone)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "CPU per request by process (medians over rounds):")
	for _, p := range r.Paths {
		if !p.measured() {
			continue
		}
		line := fmt.Sprintf("load generator %s + engine %s", fmtCPU(p.harnessCPU()), fmtCPU(p.engineCPU()))
		if p != direct {
			line += fmt.Sprintf(" + %s %s", p.Name, fmtCPU(p.proxyCPU()))
		}
		fmt.Fprintf(w, "  %-13s %s\n", p.Name, line)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "the machine's CPU time in the measured windows, all CPUs (medians over rounds): busy (the path's processes) / idle / stolen by the hypervisor:")
	for _, p := range r.Paths {
		if !p.measured() {
			continue
		}
		share := func(f func(loadResult) time.Duration) float64 {
			return 100 * median(p.Rounds, func(r loadResult) float64 { return r.machineShare(f) })
		}
		fmt.Fprintf(w, "  %-13s %.0f%% (%.0f%%) / %.0f%% / %.0f%%\n", p.Name,
			share(func(r loadResult) time.Duration { return r.Machine.busy }), share(loadResult.pathCPU),
			share(func(r loadResult) time.Duration { return r.Machine.idle }),
			share(func(r loadResult) time.Duration { return r.Machine.steal }))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "per round (RPS / p50 / p99 / CPU per request: load generator + engine [+ proxy]):")
	for _, p := range r.Paths {
		if !p.measured() {
			continue
		}
		var parts []string
		for _, rr := range p.Rounds {
			cpu := "CPU unknown"
			if rr.CPUErr == nil && rr.Requests > 0 {
				cpu = fmtCPU(rr.perRequest(rr.HarnessCPU)) + " + " + fmtCPU(rr.perRequest(rr.EngineCPU))
				if p != direct {
					cpu += " + " + fmtCPU(rr.perRequest(rr.ProxyCPU))
				}
			}
			parts = append(parts, fmt.Sprintf("%.0f / %s / %s / %s", rr.RPS, fmtMS(rr.P50), fmtMS(rr.P99), cpu))
		}
		fmt.Fprintf(w, "  %-13s %s\n", p.Name, strings.Join(parts, "  |  "))
	}
	for _, p := range r.Paths {
		for _, n := range p.Notes {
			fmt.Fprintf(w, "note (%s): %s\n", p.Name, n)
		}
		samples := p.errorSamples()
		if len(samples) == 0 {
			continue
		}
		keys := make([]string, 0, len(samples))
		for k := range samples {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return samples[keys[i]] > samples[keys[j]] })
		for _, k := range keys {
			fmt.Fprintf(w, "errors (%s): %d x %s\n", p.Name, samples[k], k)
		}
	}

	fmt.Fprintln(w, "\ntargets (issue 9, from this run):")
	rt, ngx := r.path(pathRuntime), r.path(pathNginx)
	switch {
	case !rt.measured() || !direct.measured():
		fmt.Fprintln(w, "  SKIP  runtime or direct path not measured")
	case !ngx.measured():
		fmt.Fprintf(w, "  SKIP  runtime RPS >= nginx RPS: nginx not measured (%s)\n", ngx.Skipped)
		fmt.Fprintf(w, "  SKIP  runtime added p50 <= nginx added p50: nginx not measured (%s)\n", ngx.Skipped)
	default:
		// Judged round by round: see pairRounds.
		pr := pairRounds(rt, ngx)
		fmt.Fprintf(w, "  %s  runtime RPS >= nginx RPS: %.3fx nginx (the median of the %d rounds' ratios)\n",
			passFail(pr.rpsRatio >= 1), pr.rpsRatio, pr.n)
		fmt.Fprintf(w, "  %s  runtime added p50 <= nginx added p50: %+.3f ms against nginx's (the median of the rounds' differences)\n",
			passFail(pr.p50Diff <= 0), ms(pr.p50Diff))
		fmt.Fprintf(w, "  round by round (the two paths measured seconds apart): %s\n", pr.describe(rt, ngx))
		fmt.Fprintf(w, "  the paths' own medians over rounds, unpaired (noisier: a slow spell of the machine can fall on one path's rounds more than the other's): %.0f vs %.0f RPS (%.2fx), added p50 %+.3f vs %+.3f ms\n",
			rt.rps(), ngx.rps(), rt.rps()/ngx.rps(), ms(rt.p50()-direct.p50()), ms(ngx.p50()-direct.p50()))
	}
	if base := r.path(pathBaseline); base != nil && base.measured() && rt.measured() {
		pb := pairRounds(rt, base)
		fmt.Fprintf(w, "\nagainst the baseline runtime (%s), medians of the rounds' ratios and differences: %.2fx its RPS, p50 %+.3f ms; round by round: %s\n",
			c.BaselineRuntime, pb.rpsRatio, ms(pb.p50Diff), pb.describe(rt, base))
	}
	for _, p := range r.Paths {
		if p.measured() && p.errors() > 0 {
			fmt.Fprintf(w, "  NOTE  %s had %d errors: its figures are not a clean measurement\n", p.Name, p.errors())
		}
	}
}

func passFail(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// pairs compares two paths round by round.
type pairs struct {
	n, ahead int
	ratios   []float64     // each round's RPS of one path over the other's
	rpsRatio float64       // their median
	p50Diff  time.Duration // the median of each round's p50 of one path less the other's
}

// pairRounds compares p with than round by round. A round measures every path within
// seconds, while the machine's slow and fast spells last longer and move single rounds by
// more than two proxies differ: compared within rounds, a spell weighs on both sides of a
// pair, where the paths' own medians over rounds can put it on one side only. The targets
// are judged on the medians of the pairs. (Within a round direct's p50 is one figure, so the
// difference of two added p50s is the difference of their p50s.)
func pairRounds(p, than *pathResult) pairs {
	n := min(len(p.Rounds), len(than.Rounds))
	c := pairs{n: n}
	diffs := make([]float64, 0, n)
	for i := range n {
		a, b := p.Rounds[i], than.Rounds[i]
		if b.RPS > 0 {
			c.ratios = append(c.ratios, a.RPS/b.RPS)
		}
		if a.RPS >= b.RPS {
			c.ahead++
		}
		diffs = append(diffs, float64(a.P50-b.P50))
	}
	c.rpsRatio = medianOf(slices.Clone(c.ratios))
	c.p50Diff = time.Duration(medianOf(diffs))
	return c
}

// describe lists the rounds' ratios, in round order.
func (c pairs) describe(p, than *pathResult) string {
	ratios := make([]string, len(c.ratios))
	for i, r := range c.ratios {
		ratios[i] = fmt.Sprintf("%.2fx", r)
	}
	return fmt.Sprintf("%s RPS / %s RPS %s; %s ahead in %d of %d rounds", p.Name, than.Name, strings.Join(ratios, ", "), p.Name, c.ahead, c.n)
}
