package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/test/testengine"
)

// engine is the test engine binary (helixflow-test-engine) with its defaults: no delays, so
// a non-stream chat completion is answered at once.
type engine struct {
	proc *proc
	url  string
}

// startEngine runs the engine on a free loopback port and reads the URL it prints.
func startEngine(ctx context.Context, bin string) (*engine, error) {
	p, err := startProc("test engine", exec.Command(bin, "--address", "127.0.0.1:0", "--model", testengine.DefaultModel))
	if err != nil {
		return nil, err
	}
	const banner = engineBinary + " listening on "
	var url string
	err = p.waitFor(ctx, 10*time.Second, "listening line", func() string {
		out := p.out.String()
		i := strings.Index(out, banner)
		if i < 0 {
			return "no " + strconv.Quote(banner) + " line"
		}
		rest := out[i+len(banner):]
		j := strings.IndexByte(rest, '\n')
		if j < 0 {
			return "line not complete"
		}
		url = strings.TrimSpace(rest[:j])
		return ""
	})
	if err == nil {
		err = p.waitFor(ctx, 10*time.Second, "200 on /health", httpOK(url+"/health"))
	}
	if err != nil {
		_ = p.stop(5 * time.Second)
		return nil, err
	}
	return &engine{proc: p, url: url}, nil
}

func (g *engine) close() error { return g.proc.stop(10 * time.Second) }

// httpOK is a waitFor check: "" once url answers 200.
func httpOK(url string) func() string {
	return func() string {
		resp, err := http.Get(url)
		if err != nil {
			return err.Error()
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(b)))
		}
		return ""
	}
}

const (
	benchNamespace = "bench"
	benchModel     = "chat"
	loadKeyName    = "loadgen"
	limitedKeyName = "limited"
)

// benchObjects creates what `runtime serve` reads from the API server: namespace bench, the
// InferenceModel chat (serving the engine's model, status.readyReplicas 1), and two ApiKeys
// with generated keys. envtest runs no controllers, so the harness writes the status the
// manager would (readyReplicas; keyID and keyHash) through the status subresource.
// It returns the load key (and its ID) and the limited key.
func benchObjects(ctx context.Context, c client.Client) (key, keyID, limitedKey string, err error) {
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNamespace}}); err != nil {
		return "", "", "", fmt.Errorf("creating namespace %s: %w", benchNamespace, err)
	}
	model := &servingv1alpha1.InferenceModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: benchNamespace, Name: benchModel},
		Spec: servingv1alpha1.InferenceModelSpec{
			Model:    servingv1alpha1.ModelSource{URI: "hf://org/chat", Name: testengine.DefaultModel},
			Engine:   servingv1alpha1.EngineSpec{Type: servingv1alpha1.EngineVLLM},
			Replicas: ptr.To[int32](1),
		},
	}
	if err := c.Create(ctx, model); err != nil {
		return "", "", "", fmt.Errorf("creating InferenceModel %s: %w", benchModel, err)
	}
	model.Status.Replicas, model.Status.ReadyReplicas = 1, 1
	if err := c.Status().Update(ctx, model); err != nil {
		return "", "", "", fmt.Errorf("writing InferenceModel %s status: %w", benchModel, err)
	}
	// Limits high enough never to refuse at any rate this harness reaches (the CRD's maxima),
	// but set, so the limiter counts every request (requests, tokens and concurrency) as it
	// would in production.
	key, keyID, err = createKey(ctx, c, loadKeyName, &servingv1alpha1.KeyRateLimit{
		RequestsPerMinute: 1000000, TokensPerMinute: 1000000000, MaxConcurrent: 10000,
	})
	if err != nil {
		return "", "", "", err
	}
	limitedKey, _, err = createKey(ctx, c, limitedKeyName, &servingv1alpha1.KeyRateLimit{RequestsPerMinute: 1})
	if err != nil {
		return "", "", "", err
	}
	return key, keyID, limitedKey, nil
}

// createKey creates an ApiKey with a freshly generated key and writes its keyID and keyHash
// to status, as the ApiKey controller would.
func createKey(ctx context.Context, c client.Client, name string, rl *servingv1alpha1.KeyRateLimit) (key, keyID string, err error) {
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
	}
	if err := c.Create(ctx, ak); err != nil {
		return "", "", fmt.Errorf("creating ApiKey %s: %w", name, err)
	}
	ak.Status.KeyID, ak.Status.KeyHash = keyID, auth.HashKey(key).String()
	if err := c.Status().Update(ctx, ak); err != nil {
		return "", "", fmt.Errorf("writing ApiKey %s status: %w", name, err)
	}
	return key, keyID, nil
}

// runtimeServe is the runtime binary running `runtime serve` as a pod runs it, against the
// API server: it reads its InferenceModel and the ApiKeys through its own informers.
type runtimeServe struct {
	proc       *proc
	url        string
	metricsURL string
	// key is the load generator's API key (name loadKeyName, ID keyID).
	key, keyID string
	// limitedKey has a limit of 1 request per minute, to show the limits are enforced.
	limitedKey string
}

// startRuntime runs `runtime serve` in front of the engine, with usage reporting off (no
// --usage-endpoint: there is no manager), and waits for its /readyz: the InferenceModel and
// the ApiKeys read and the engine healthy. Its HTTP and metrics ports are the kernel's pick
// (port 0), read back from its "runtime serving" log line: a port found free beforehand can
// be taken by another process before the runtime binds it.
func startRuntime(ctx context.Context, bin, engineURL, kubeconfig string) (*runtimeServe, error) {
	cmd := exec.Command(bin, "serve", "--model", benchModel, "--namespace", benchNamespace, "--upstream", engineURL,
		"--http-address", "127.0.0.1:0", "--grpc-address", "0", "--metrics-address", "127.0.0.1:0", "--kubeconfig", kubeconfig)
	p, err := startProc("runtime serve", cmd)
	if err != nil {
		return nil, err
	}
	var addrs servingLine
	err = p.waitFor(ctx, 30*time.Second, `"runtime serving" log line`, func() string {
		var ok bool
		if addrs, ok = findServingLine(p.out.String()); !ok {
			return `no "runtime serving" log line with the http and metrics addresses`
		}
		return ""
	})
	rs := &runtimeServe{proc: p, url: "http://" + addrs.HTTP, metricsURL: "http://" + addrs.Metrics + "/metrics"}
	if err == nil {
		err = p.waitFor(ctx, 30*time.Second, "200 on /readyz", httpOK(rs.url+"/readyz"))
	}
	if err != nil {
		_ = rs.close()
		return nil, err
	}
	return rs, nil
}

// servingLine is what the harness reads of the runtime's "runtime serving" log line (JSON,
// one object per line): the addresses it listens on.
type servingLine struct {
	Msg     string `json:"msg"`
	HTTP    string `json:"http"`
	Metrics string `json:"metrics"`
}

// findServingLine finds the "runtime serving" line in the runtime's output.
func findServingLine(out string) (servingLine, bool) {
	for line := range strings.Lines(out) {
		var l servingLine
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "runtime serving" && l.HTTP != "" && l.Metrics != "" {
			return l, true
		}
	}
	return servingLine{}, false
}

// gomaxprocs reads the runtime's GOMAXPROCS from its metrics ("2", or "unknown").
func (rs *runtimeServe) gomaxprocs(ctx context.Context) string {
	if m, err := scrape(ctx, rs.metricsURL); err == nil {
		if v := m.sum("go_sched_gomaxprocs_threads"); v > 0 {
			return fmt.Sprintf("%.0f", v)
		}
	}
	return "unknown"
}

// close stops the runtime by its PID (SIGTERM: it drains, then exits).
func (rs *runtimeServe) close() error { return rs.proc.stop(10 * time.Second) }

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

// checkAccounting compares what the runtime counted for the load key, read from its metrics
// endpoint, with the successful requests the load generator saw through it (warm-ups and
// the probe included): requests, and the prompt and completion tokens taken from the
// engine's usage (what the runtime would report to the manager's usage aggregator; reporting
// itself is off, as there is no manager). It returns notes; a mismatch is a note starting
// with "MISMATCH", not a harness failure.
func (rs *runtimeServe) checkAccounting(ctx context.Context, okRequests int64) ([]string, error) {
	m, err := scrape(ctx, rs.metricsURL)
	if err != nil {
		return nil, err
	}
	keyLabel := `key_id="` + rs.keyID + `"`
	counted := m.sum("helixflow_runtime_requests_total", `code="200"`, keyLabel)
	prompt := m.sum("helixflow_runtime_tokens_total", `direction="prompt"`, keyLabel)
	completion := m.sum("helixflow_runtime_tokens_total", `direction="completion"`, keyLabel)
	if counted == 0 {
		return nil, errors.New("helixflow_runtime_requests_total has no series for the load key: metrics are not on")
	}
	wantPrompt, wantCompletion := float64(okRequests*promptTokens), float64(okRequests*completionTokens)
	if counted == float64(okRequests) && prompt == wantPrompt && completion == wantCompletion {
		return []string{fmt.Sprintf("metrics and usage on: %d successful requests through the runtime; "+
			"helixflow_runtime_requests_total{code=\"200\",key_id=%q} = %.0f; helixflow_runtime_tokens_total = %.0f prompt + %.0f completion "+
			"(usage reporting to the manager is off: no --usage-endpoint)", okRequests, rs.keyID, counted, prompt, completion)}, nil
	}
	return []string{fmt.Sprintf("MISMATCH: %d successful requests through the runtime (want %.0f prompt + %.0f completion tokens), "+
		"but helixflow_runtime_requests_total{code=\"200\",key_id=%q} = %.0f and helixflow_runtime_tokens_total = %.0f prompt + %.0f completion",
		okRequests, wantPrompt, wantCompletion, rs.keyID, counted, prompt, completion)}, nil
}

// metricLines are the sample lines of a Prometheus text exposition.
type metricLines []string

// sum adds up the samples of metric name whose labels contain every one of labels.
func (m metricLines) sum(name string, labels ...string) float64 {
	var total float64
	for _, line := range m {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		head := line[:i]
		ok := true
		for _, l := range labels {
			if !strings.Contains(head, l) {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			total += v
		}
	}
	return total
}

// scrape reads the sample lines (no comments) of a metrics endpoint.
func scrape(ctx context.Context, url string) (metricLines, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scraping metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scraping metrics: %s", resp.Status)
	}
	var out metricLines
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if line := sc.Text(); line != "" && !strings.HasPrefix(line, "#") && strings.LastIndexByte(line, ' ') > 0 {
			out = append(out, line)
		}
	}
	return out, sc.Err()
}
