package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/helixflow/helixflow/test/fakehub"
)

type config struct {
	Size        int64
	Shards      int
	Rounds      int
	Concurrency int
	WorkDir     string
	Log         io.Writer
}

// path is one way of downloading the model, run as its own process.
type path struct {
	name string
	cmd  func(dest string) *exec.Cmd
}

type result struct {
	name    string
	seconds []float64
	cpu     []float64 // user+system CPU seconds of the process
}

func (r result) median() float64 { return median(r.seconds) }

func median(v []float64) float64 {
	s := slices.Clone(v)
	sort.Float64s(s)
	return s[len(s)/2]
}

type report struct {
	size    int64
	files   int
	results []result
	cpu     string
}

const repoID = "bench/generated"

func run(ctx context.Context, cfg config) (*report, error) {
	if _, err := exec.LookPath("curl"); err != nil {
		return nil, fmt.Errorf("curl is needed as the baseline: %w", err)
	}
	work := cfg.WorkDir
	if work == "" {
		work = filepath.Join(os.TempDir(), "helixflow-fetch-bench")
	}
	modelDir := filepath.Join(work, fmt.Sprintf("model-%d-%d", cfg.Size, cfg.Shards))
	files := map[string]int64{}
	for i := range cfg.Shards {
		files[fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, cfg.Shards)] = cfg.Size / int64(cfg.Shards)
	}
	if !complete(modelDir, files) {
		fmt.Fprintf(cfg.Log, "generating a %s model in %s ...\n", human(cfg.Size), modelDir)
		if err := os.MkdirAll(modelDir, 0o755); err != nil {
			return nil, err
		}
		if err := fakehub.GenerateModel(modelDir, files); err != nil {
			return nil, err
		}
	}
	hub := fakehub.New()
	defer hub.Close()
	if err := hub.AddRepo(repoID, fakehub.Repo{Dir: modelDir}); err != nil {
		return nil, err
	}
	names, total, err := listDir(modelDir)
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(work, "runtime")
	fmt.Fprintln(cfg.Log, "building bin/runtime ...")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/runtime")
	build.Dir, build.Stdout, build.Stderr = repoRoot(), cfg.Log, cfg.Log
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("building the runtime: %w", err)
	}

	fetch := func(conc int, chunkMiB int) func(string) *exec.Cmd {
		return func(dest string) *exec.Cmd {
			c := exec.CommandContext(ctx, bin, "fetch", "--uri=hf://"+repoID, "--dest="+dest, "--format=safetensors",
				"--concurrency="+strconv.Itoa(conc), "--chunk-size-mib="+strconv.Itoa(chunkMiB), "--termination-log=")
			c.Env = append(os.Environ(), "HF_ENDPOINT="+hub.URL())
			return c
		}
	}
	curl := func(parallel bool) func(string) *exec.Cmd {
		return func(dest string) *exec.Cmd {
			args := []string{"-sS", "--fail", "-L", "--create-dirs"}
			if parallel {
				args = append(args, "--parallel", "--parallel-max", strconv.Itoa(cfg.Concurrency))
			}
			for _, n := range names {
				args = append(args, "-o", filepath.Join(dest, n), hub.URL()+"/"+repoID+"/resolve/main/"+n)
			}
			return exec.CommandContext(ctx, "curl", args...)
		}
	}
	paths := []path{
		{"curl, one file after another", curl(false)},
		{"curl --parallel (a stream per file)", curl(true)},
		{"runtime fetch, 1 connection", fetch(1, 1<<20)},
		{fmt.Sprintf("runtime fetch, %d connections", cfg.Concurrency), fetch(cfg.Concurrency, 64)},
	}
	results := make([]result, len(paths))
	for i, p := range paths {
		results[i].name = p.name
	}
	want, err := digests(modelDir, names)
	if err != nil {
		return nil, err
	}
	for round := range cfg.Rounds {
		for k := range paths {
			i := (k + round) % len(paths) // rotate, so no path always runs on a warm or cold machine
			dest := filepath.Join(work, "dest")
			_ = os.RemoveAll(dest)
			var stderr bytes.Buffer
			cmd := paths[i].cmd(dest)
			cmd.Stderr = &stderr
			start := time.Now()
			if err := cmd.Run(); err != nil {
				return nil, fmt.Errorf("%s: %w\n%s", paths[i].name, err, stderr.String())
			}
			secs := time.Since(start).Seconds()
			got, err := digests(dest, names)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", paths[i].name, err)
			}
			if !slices.Equal(got, want) {
				return nil, fmt.Errorf("%s: the downloaded files differ from the model", paths[i].name)
			}
			cpu := (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
			results[i].seconds = append(results[i].seconds, secs)
			results[i].cpu = append(results[i].cpu, cpu)
			fmt.Fprintf(cfg.Log, "round %d: %-40s %6.2fs  %7.0f MB/s  %5.2f CPU s\n", round+1, paths[i].name, secs, float64(total)/secs/1e6, cpu)
		}
	}
	_ = os.RemoveAll(filepath.Join(work, "dest"))
	return &report{size: total, files: len(names), results: results, cpu: fmt.Sprintf("%d CPUs (GOMAXPROCS %d)", runtime.NumCPU(), runtime.GOMAXPROCS(0))}, nil
}

func (r *report) Print(w io.Writer) {
	fmt.Fprintf(w, "\nruntime fetch benchmark: %d files, %s, loopback from the Hugging Face Hub test double; %s\n", r.files, human(r.size), r.cpu)
	fmt.Fprintf(w, "%-42s %10s %10s %10s %12s\n", "path", "median s", "MB/s", "vs curl", "client CPU s")
	base := r.results[0].median()
	for _, res := range r.results {
		m := res.median()
		fmt.Fprintf(w, "%-42s %10.2f %10.0f %9.2fx %12.2f\n", res.name, m, float64(r.size)/m/1e6, base/m, median(res.cpu))
	}
	fmt.Fprintln(w, "runtime fetch also verifies every file's sha256 (curl checks nothing) and saves resumable state.")
}

func complete(dir string, files map[string]int64) bool {
	for name, size := range files {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Size() != size {
			return false
		}
	}
	return true
}

// listDir lists the model's files (what curl downloads and fetch must produce).
func listDir(dir string) ([]string, int64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, 0, err
	}
	var names []string
	var total int64
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			return nil, 0, err
		}
		names = append(names, e.Name())
		total += fi.Size()
	}
	return names, total, nil
}

// digests hashes the files, to check each path downloaded the model exactly.
func digests(dir string, names []string) ([]string, error) {
	out := make([]string, 0, len(names))
	for _, n := range names {
		f, err := os.Open(filepath.Join(dir, n))
		if err != nil {
			return nil, err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return nil, err
		}
		out = append(out, fmt.Sprintf("%x", h.Sum(nil)))
	}
	return out, nil
}

func repoRoot() string {
	dir, _ := os.Getwd()
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
	}
	return dir
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d B", n)
}
