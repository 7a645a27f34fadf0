package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/internal/runtime/serve"
	"github.com/helixflow/helixflow/test/testengine"
)

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// engine is the test engine served on loopback, with its defaults: no delays, so a
// non-stream chat completion is answered at once.
type engine struct {
	e   *testengine.Engine
	srv *http.Server
	url string
}

func startEngine() (*engine, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("test engine: %w", err)
	}
	e := testengine.New(testengine.Config{})
	srv := &http.Server{Handler: e, ReadHeaderTimeout: 10 * time.Second}
	go pprof.Do(context.Background(), pprof.Labels("role", "engine"), func(context.Context) { _ = srv.Serve(ln) })
	return &engine{e: e, srv: srv, url: "http://" + ln.Addr().String()}, nil
}

func (g *engine) close() {
	g.e.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.srv.Shutdown(ctx); err != nil {
		_ = g.srv.Close()
	}
}

const benchNamespace = "bench"

// runtimeServe is `runtime serve` embedded in this process, as a pod runs it, but without an
// API server: the harness feeds it its InferenceModel and ApiKeys as the informers would.
type runtimeServe struct {
	s          *serve.Server
	url        string
	metricsURL string
	// key is the load generator's API key (name loadKeyName, ID keyID).
	key, keyID string
	// limitedKey has a limit of 1 request per minute, to show the limits are enforced.
	limitedKey string
	usage      *usageTotals
	cancel     context.CancelFunc
	done       chan error
}

const (
	loadKeyName    = "loadgen"
	limitedKeyName = "limited"
)

// usageTotals stands in for the manager's usage aggregator client: it adds up the tokens
// each key used, as the real reporter accumulates deltas between batches.
type usageTotals struct {
	mu     sync.Mutex
	tokens map[string][2]int64
}

func (u *usageTotals) Record(namespace, apiKey string, prompt, completion int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	t := u.tokens[namespace+"/"+apiKey]
	u.tokens[namespace+"/"+apiKey] = [2]int64{t[0] + prompt, t[1] + completion}
}

func (u *usageTotals) get(namespace, apiKey string) [2]int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.tokens[namespace+"/"+apiKey]
}

func startRuntime(ctx context.Context, engineURL string) (*runtimeServe, error) {
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	metricsAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	usage := &usageTotals{tokens: map[string][2]int64{}}
	opts := serve.DefaultOptions()
	opts.Model, opts.Namespace, opts.Upstream = testengine.DefaultModel, benchNamespace, engineURL
	opts.HTTPAddress, opts.GRPCAddress, opts.MetricsAddress = httpAddr, "0", metricsAddr
	opts.Usage = usage
	s, err := serve.New(opts)
	if err != nil {
		return nil, err
	}
	s.SetInferenceModel(&servingv1alpha1.InferenceModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: benchNamespace, Name: testengine.DefaultModel},
		Status:     servingv1alpha1.InferenceModelStatus{ReadyReplicas: 1},
	})
	rs := &runtimeServe{s: s, url: "http://" + httpAddr, metricsURL: "http://" + metricsAddr + "/metrics", usage: usage}
	// Limits high enough never to refuse at any rate this harness reaches, but set, so the
	// limiter counts every request (requests, tokens and concurrency) as it would in production.
	rs.key, rs.keyID, err = addKey(s, loadKeyName, &servingv1alpha1.KeyRateLimit{
		RequestsPerMinute: 1000000, TokensPerMinute: 1000000000, MaxConcurrent: 10000,
	})
	if err != nil {
		return nil, err
	}
	rs.limitedKey, _, err = addKey(s, limitedKeyName, &servingv1alpha1.KeyRateLimit{RequestsPerMinute: 1})
	if err != nil {
		return nil, err
	}

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	rs.cancel, rs.done = cancel, make(chan error, 1)
	// The label reaches every goroutine the runtime starts (its servers' connections, and the
	// engine connections they dial), so a CPU profile separates the runtime from the rest:
	// go tool pprof -tagfocus=role=runtime.
	go pprof.Do(runCtx, pprof.Labels("role", "runtime"), func(ctx context.Context) { rs.done <- s.Run(ctx) })
	if err := rs.waitReady(ctx); err != nil {
		_ = rs.close()
		return nil, err
	}
	return rs, nil
}

// addKey registers an ApiKey with a freshly generated key, as the ApiKey informer would.
func addKey(s *serve.Server, name string, rl *servingv1alpha1.KeyRateLimit) (key, keyID string, err error) {
	key, keyID, err = auth.GenerateKey()
	if err != nil {
		return "", "", err
	}
	ak := &servingv1alpha1.ApiKey{
		ObjectMeta: metav1.ObjectMeta{Namespace: benchNamespace, Name: name},
		Spec: servingv1alpha1.ApiKeySpec{
			Scopes:    []servingv1alpha1.Scope{servingv1alpha1.ScopeInference, servingv1alpha1.ScopeListModels},
			RateLimit: rl,
		},
		Status: servingv1alpha1.ApiKeyStatus{KeyID: keyID, KeyHash: auth.HashKey(key).String()},
	}
	if err := s.Authenticator().Keys().Upsert(ak); err != nil {
		return "", "", fmt.Errorf("adding ApiKey %s: %w", name, err)
	}
	return key, keyID, nil
}

func (rs *runtimeServe) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(15 * time.Second)
	last := "no answer"
	for time.Now().Before(deadline) {
		select {
		case err := <-rs.done:
			return fmt.Errorf("runtime serve stopped: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		resp, err := http.Get(rs.url + "/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(b))
		} else {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("runtime serve not ready within 15s: %s", last)
}

// close stops the runtime and returns what Run returned.
func (rs *runtimeServe) close() error {
	rs.cancel()
	select {
	case err := <-rs.done:
		return err
	case <-time.After(10 * time.Second):
		return errors.New("runtime serve did not stop within 10s")
	}
}

// checkEnforcement shows that auth and limits are on: no key is refused with 401, and the
// key limited to 1 request per minute gets 200 and then 429.
func (rs *runtimeServe) checkEnforcement(ctx context.Context) ([]string, error) {
	c := &http.Client{Transport: newTransport(1), Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	send := func(authz string) (int, http.Header, error) {
		req, err := newRequest(ctx, target{url: rs.url, authorization: authz}, requestHeader(target{authorization: authz}))
		if err != nil {
			return 0, nil, err
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, nil, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode, resp.Header, nil
	}
	code, _, err := send("")
	if err != nil {
		return nil, err
	}
	if code != http.StatusUnauthorized {
		return nil, fmt.Errorf("a request without a key got %d, want 401: auth is not on", code)
	}
	var codes []int
	var retryAfter string
	for range 2 {
		code, h, err := send("Bearer " + rs.limitedKey)
		if err != nil {
			return nil, err
		}
		codes, retryAfter = append(codes, code), h.Get("Retry-After")
	}
	if codes[0] != http.StatusOK || codes[1] != http.StatusTooManyRequests {
		return nil, fmt.Errorf("a key limited to 1 request/min got %v, want [200 429]: limits are not on", codes)
	}
	return []string{fmt.Sprintf("auth and limits on: no key -> 401; a key limited to 1 req/min -> 200 then 429 (Retry-After %s); "+
		"the load key has requestsPerMinute 1000000, tokensPerMinute 1000000000, maxConcurrent 10000, all evaluated per request", retryAfter)}, nil
}

// checkAccounting compares what the runtime counted for the load key (its metrics, and the
// usage it reported) with the successful requests the load generator saw through it
// (warm-ups and the probe included). It returns notes; a mismatch is a note starting with
// "MISMATCH", not a harness failure.
func (rs *runtimeServe) checkAccounting(ctx context.Context, okRequests int64) ([]string, error) {
	counted, err := rs.scrapeRequests(ctx)
	if err != nil {
		return nil, err
	}
	u := rs.usage.get(benchNamespace, loadKeyName)
	wantPrompt, wantCompletion := okRequests*promptTokens, okRequests*completionTokens
	var notes []string
	if counted == float64(okRequests) && u[0] == wantPrompt && u[1] == wantCompletion {
		notes = append(notes, fmt.Sprintf("metrics and usage on: %d successful requests through the runtime; "+
			"helixflow_runtime_requests_total{code=\"200\",key_id=%q} = %.0f; usage reported %d prompt + %d completion tokens",
			okRequests, rs.keyID, counted, u[0], u[1]))
	} else {
		notes = append(notes, fmt.Sprintf("MISMATCH: %d successful requests through the runtime (want %d prompt + %d completion tokens), "+
			"but helixflow_runtime_requests_total{code=\"200\",key_id=%q} = %.0f and usage reported %d prompt + %d completion tokens",
			okRequests, wantPrompt, wantCompletion, rs.keyID, counted, u[0], u[1]))
	}
	return notes, nil
}

// scrapeRequests sums helixflow_runtime_requests_total for code 200 and the load key from
// the metrics endpoint.
func (rs *runtimeServe) scrapeRequests(ctx context.Context) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rs.metricsURL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("scraping metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("scraping metrics: %s", resp.Status)
	}
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "helixflow_runtime_requests_total{") ||
			!strings.Contains(line, `code="200"`) || !strings.Contains(line, `key_id="`+rs.keyID+`"`) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("metrics line %q: %w", line, err)
		}
		sum += v
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if sum == 0 {
		return 0, errors.New("helixflow_runtime_requests_total has no series for the load key: metrics are not on")
	}
	return sum, nil
}
