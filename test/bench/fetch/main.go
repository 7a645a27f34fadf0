// Command fetch-bench measures `runtime fetch` downloading a generated model from the Hugging
// Face Hub test double (test/fakehub) over loopback, single-stream and parallel, against curl
// fetching the same files in the same run. Every path is its own process (bin/runtime, curl);
// the hub runs in this one. Figures, not assertions: run it with `make bench-fetch`.
//
//	go run ./test/bench/fetch -size 2GiB -rounds 3
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	var cfg config
	var size string
	flag.StringVar(&size, "size", "2GiB", "Total size of the generated model (KiB, MiB, GiB suffixes).")
	flag.IntVar(&cfg.Shards, "shards", 4, "Number of safetensors shards the weights are split into.")
	flag.IntVar(&cfg.Rounds, "rounds", 3, "Rounds; each path runs once per round, in rotating order, and the median is reported.")
	flag.IntVar(&cfg.Concurrency, "concurrency", 8, "Connections of the parallel runtime fetch.")
	flag.StringVar(&cfg.WorkDir, "dir", "", "Folder for the generated model (kept for the next run) and the downloads (default: a folder under the system temp dir).")
	flag.Parse()
	n, err := parseSize(size)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	cfg.Size, cfg.Log = n, os.Stderr
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	rep, err := run(ctx, cfg)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fetch-bench:", err)
		os.Exit(1)
	}
	rep.Print(os.Stdout)
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	for suffix, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if strings.HasSuffix(s, suffix) {
			s, mult = strings.TrimSuffix(s, suffix), m
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("size %q: want a number with KiB, MiB or GiB", s)
	}
	return int64(v * float64(mult)), nil
}
