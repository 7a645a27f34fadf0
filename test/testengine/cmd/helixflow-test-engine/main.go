// Command helixflow-test-engine runs the HelixFlow TEST DOUBLE of an OpenAI-compatible
// inference engine (package test/testengine): a vLLM-like HTTP server with deterministic
// answers, for tests, benchmarks and local runs of `runtime serve`. It generates no real text.
//
//	helixflow-test-engine --address 127.0.0.1:8000 --model test-model --chunks 16 --chunk-interval 100ms
//
// Once listening it prints one line, "helixflow-test-engine listening on http://HOST:PORT", so
// a caller that passed port 0 learns the port. SIGINT or SIGTERM stops it (in-flight requests
// get up to 5 s).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/helixflow/helixflow/test/testengine"
)

type modelList []string

func (m *modelList) String() string { return strings.Join(*m, ",") }

func (m *modelList) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*m = append(*m, s)
		}
	}
	return nil
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "helixflow-test-engine:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("helixflow-test-engine", flag.ContinueOnError)
	var (
		models    modelList
		address   = fs.String("address", "127.0.0.1:8000", "listen address (port 0 picks a free port)")
		chunks    = fs.Int("chunks", testengine.DefaultTokens, "completion tokens (= content chunks) when a request sets no max_tokens")
		interval  = fs.Duration("chunk-interval", 0, "time between two stream chunks (and per token of a non-stream answer)")
		firstTok  = fs.Duration("first-token-delay", 0, "time before the first chunk (and before a non-stream answer)")
		mode      = fs.String("mode", "normal", "normal, fail (every request answers --fail-status), hang (never answers), stall (streams stop after the first chunk)")
		failCode  = fs.Int("fail-status", http.StatusInternalServerError, "HTTP status of --mode fail answers")
		dim       = fs.Int("embedding-dim", testengine.DefaultEmbeddingDim, "length of embedding vectors")
		maxBody   = fs.Int64("max-body-bytes", testengine.DefaultMaxBodyBytes, "request body cap (413 above it)")
		logStream = fs.Bool("log-streams", false, "log one line per finished stream to stderr")
	)
	fs.Var(&models, "model", "served model name; repeat or comma-separate for several (default "+testengine.DefaultModel+")")
	if err := fs.Parse(args); err != nil {
		return err
	}
	m, err := testengine.ParseMode(*mode)
	if err != nil {
		return err
	}
	cfg := testengine.Config{
		Models:          models,
		DefaultTokens:   *chunks,
		ChunkInterval:   *interval,
		FirstTokenDelay: *firstTok,
		Mode:            m,
		FailStatus:      *failCode,
		EmbeddingDim:    *dim,
		MaxBodyBytes:    *maxBody,
	}
	if *logStream {
		cfg.OnStreamEnd = func(s testengine.StreamRecord) {
			fmt.Fprintf(os.Stderr, "stream %s %s model=%s duration=%s cancelled=%t\n",
				s.ID, s.Path, s.Model, s.Ended.Sub(s.Started).Round(time.Millisecond), s.Cancelled)
		}
	}
	engine := testengine.New(cfg)

	ln, err := net.Listen("tcp", *address)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: engine, ReadHeaderTimeout: 10 * time.Second}
	fmt.Printf("helixflow-test-engine listening on http://%s\n", ln.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	engine.Close() // release hanging requests
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
