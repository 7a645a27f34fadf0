// Command dataplane measures the HelixFlow data plane: the same load generator against the
// same test engine (test/testengine, a TEST DOUBLE of an OpenAI-compatible engine that
// answers non-stream chat completions at once) over three paths, in one run:
//
//  1. direct: the load generator talks to the engine;
//  2. runtime: through `runtime serve` (internal/runtime/serve, embedded in this process) with
//     API-key auth, a per-key rate limit (high enough never to refuse, but evaluated on every
//     request), usage accounting and metrics on;
//  3. nginx: through Debian's nginx as a plain reverse proxy (no auth), a separate process.
//
// N clients each loop POST /v1/chat/completions (max_tokens 8) over keep-alive connections
// for -duration after a -warmup. The paths run interleaved for -rounds rounds (the starting
// path rotates each round) and the table shows per-path medians over the rounds: RPS, p50,
// p99, errors, and relative to direct the throughput ratio and the added p50. Then it prints
// the targets (runtime RPS >= nginx RPS; runtime added p50 <= nginx added p50) as
// PASS/FAIL lines. It reports; it does not fail on a missed target: the exit code is 0 unless
// the harness itself broke (a path could not be set up, or its correctness probe failed).
//
//	go run ./test/bench/dataplane
//	go run ./test/bench/dataplane -clients 16 -duration 10s -rounds 3 -cpuprofile /tmp/cpu.out
//
// Every request is checked: status 200 and a body carrying the exact usage the engine
// computes; anything else is an error, counted and printed. Before the load, each path answers
// one request that is decoded and checked whole, and the runtime is shown to enforce auth (no
// key: 401) and limits (a second key limited to 1 request/min: 200 then 429); after it, the
// runtime's request metric and reported usage must equal what the load generator saw.
//
// CPU/req is the CPU time per request of this process (load generator, engine and, on its
// path, the runtime) plus nginx's master and workers (from /proc): on a small shared machine
// it is steadier than RPS, which follows whatever CPU the paths get. For a profile of one
// path, -paths runtime -cpuprofile cpu.out; the goroutines carry a pprof label "role"
// (loadgen, engine, runtime), so `go tool pprof -tagfocus=role=runtime -top cpu.out` shows the
// runtime alone and `go tool pprof -tags cpu.out` the split.
//
// nginx runs with worker_processes auto (one worker per CPU) by default: the embedded
// runtime gets GOMAXPROCS = CPUs, so both proxies may use every core; it is also Debian's
// default. -nginx-workers 1 gives the single-worker figure.
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
	paths := flag.String("paths", "direct,runtime,nginx", "paths to load, comma-separated (direct, runtime, nginx); all are set up and checked either way")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole process (load generator, engine, runtime) to this file")
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
		default:
			fmt.Fprintf(os.Stderr, "bench-dataplane: unknown path %q in -paths (want direct, runtime, nginx)\n", p)
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
		fmt.Fprintf(os.Stdout, "CPU profile of the whole process: %s (go tool pprof -top -focus=internal/runtime/serve %s)\n", cpuProfile, cpuProfile)
	}
	return nil
}
