// Command dataplane measures the HelixFlow data plane: the same load generator against the
// same test engine (test/testengine, a TEST DOUBLE of an OpenAI-compatible engine that
// answers non-stream chat completions at once) over three paths, in one run:
//
//  1. direct: the load generator talks to the engine;
//  2. runtime: through `runtime serve` with API-key auth, a per-key rate limit (high enough
//     never to refuse, but evaluated on every request), token accounting and metrics on;
//  3. nginx: through Debian's nginx as a plain reverse proxy (no auth).
//
// Every component is its own process, as in production, so none shares the load
// generator's Go scheduler, GOMAXPROCS or GC:
//
//   - the engine is the binary of ./test/testengine/cmd/helixflow-test-engine and the runtime
//     the binary of ./cmd/runtime, both built with `go build` into a temporary folder;
//   - `runtime serve` runs against a real kube-apiserver (envtest, package test/testenv; the
//     binaries come from KUBEBUILDER_ASSETS, which `make bench-dataplane` sets) and reads, by
//     its own informers, the namespace bench's InferenceModel chat and its ApiKeys, which the
//     harness creates. envtest runs no controllers: the harness writes the status the manager
//     would (status.readyReplicas 1; each key's keyID and keyHash) through the status
//     subresource. Usage reporting is off (no --usage-endpoint: there is no manager);
//   - nginx is a master and its workers;
//   - the load generator is this process.
//
// N clients each loop POST /v1/chat/completions (max_tokens 8) over keep-alive connections
// for -duration after a -warmup. The paths run interleaved for -rounds rounds (the starting
// path rotates each round) and the table shows per-path medians over the rounds: RPS, p50,
// p99, errors, and relative to direct the throughput ratio and the added p50. Then it prints
// the targets (runtime RPS >= nginx RPS; runtime added p50 <= nginx added p50) as
// PASS/FAIL lines, judged round by round: the median over rounds of the runtime's RPS over
// nginx's, and of its p50 less nginx's, the two measured seconds apart (the paths' own
// medians, which a slow spell of a shared machine can move for one path and not the other,
// are printed beside them). It reports; it does not fail on a missed target: the exit code
// is 0 unless the harness itself broke (a component could not be built or started, or a
// path's correctness probe failed).
//
//	make bench-dataplane
//	KUBEBUILDER_ASSETS=$(hack/testbin/build.sh) go run ./test/bench/dataplane -clients 16 -duration 5s -rounds 27
//
// Every request is checked: status 200 and a body carrying the exact usage the engine
// computes; anything else is an error, counted and printed. Before the load, each path answers
// one request that is decoded and checked whole, and the runtime is shown to enforce auth (no
// key: 401) and limits (a second key limited to 1 request/min: 200 then 429); after it, the
// runtime's request and token counters, read from its metrics endpoint, must equal what the
// load generator saw.
//
// CPU/req is the CPU time per request of every process on the path, each measured on its
// own: the harness (the load generator; getrusage), the engine process, and the proxy process
// (runtime serve; nginx's master and workers), from /proc. On a small shared machine it is
// steadier than RPS, which follows whatever CPU the paths get. The machine's CPU time in each
// window (/proc/stat: busy, idle, stolen by the hypervisor) shows how much of the CPUs a path
// left unused. -cpuprofile profiles the
// harness process only, that is the load generator: it shows what the load generator
// costs, not the runtime, which is another process and serves no pprof endpoint (profile it
// with perf -p PID, the PID printed under "processes").
//
// nginx runs with worker_processes auto (one worker per CPU) by default: the runtime gets
// GOMAXPROCS = CPUs (Go's default), so both proxies may use every core; it is also Debian's
// default. -nginx-workers 1 gives the single-worker figure.
//
// SIGINT or SIGTERM stops the run: the engine, the runtime, nginx and the API server are
// stopped by PID before the harness exits (and the kernel sends each child SIGTERM should
// the harness die without stopping them).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"
)

func main() {
	cfg := defaultConfig()
	flag.IntVar(&cfg.Clients, "clients", cfg.Clients, "concurrent clients, each a loop of requests over a keep-alive connection")
	flag.DurationVar(&cfg.Duration, "duration", cfg.Duration, "measured time per path and round")
	flag.DurationVar(&cfg.Warmup, "warmup", cfg.Warmup, "unmeasured load before each measurement")
	flag.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "rounds; the three paths run interleaved in each, and the table shows medians over rounds")
	flag.StringVar(&cfg.NginxWorkers, "nginx-workers", cfg.NginxWorkers, `nginx worker_processes ("auto" = one per CPU, as the runtime gets GOMAXPROCS = CPUs)`)
	flag.BoolVar(&cfg.Nginx, "nginx", cfg.Nginx, "measure the nginx path (installs nginx with hack/install-nginx.sh when missing)")
	flag.StringVar(&cfg.BaselineRuntime, "baseline-runtime", "", "a second runtime binary to measure as its own path, interleaved: another commit's build of ./cmd/runtime, "+
		"or a script that execs one (e.g. with GOMAXPROCS set); it must log the addresses it bound (commits from 7047fec on)")
	paths := flag.String("paths", "direct,runtime,nginx,baseline", "paths to load, comma-separated (direct, runtime, nginx, baseline); all are set up and checked either way")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the harness process, i.e. the load generator only (the engine, runtime and nginx are other processes), to this file")
	flag.Parse()
	cfg.Log = os.Stderr
	for _, p := range strings.Split(*paths, ",") {
		switch strings.TrimSpace(p) {
		case "direct":
			cfg.Paths = append(cfg.Paths, pathDirect)
		case "runtime":
			cfg.Paths = append(cfg.Paths, pathRuntime)
		case "nginx":
			cfg.Paths = append(cfg.Paths, pathNginx)
		case "baseline":
			cfg.Paths = append(cfg.Paths, pathBaseline)
		default:
			fmt.Fprintf(os.Stderr, "bench-dataplane: unknown path %q in -paths (want direct, runtime, nginx, baseline)\n", p)
			os.Exit(2)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, cfg, *cpuProfile)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-dataplane:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config, cpuProfile string) error {
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	rep, err := runBench(ctx, cfg)
	if err != nil {
		return err
	}
	rep.Print(os.Stdout)
	fmt.Fprintf(os.Stdout, "\n(total run time %s)\n", time.Since(start).Round(time.Second))
	if cpuProfile != "" {
		fmt.Fprintf(os.Stdout, "CPU profile of the harness process (load generator only): %s (go tool pprof -top %s)\n", cpuProfile, cpuProfile)
	}
	return nil
}
