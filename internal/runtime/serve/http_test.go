package serve

import (
	"bufio"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/apierror"
	"github.com/helixflow/helixflow/test/testengine"
)

const chatBody = `{"model":"` + testengine.DefaultModel + `","max_tokens":5,"messages":[{"role":"user","content":"one two three"}]}`

func streamBody(includeUsage bool) string {
	b := `{"model":"` + testengine.DefaultModel + `","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"one two three"}]`
	if includeUsage {
		b += `,"stream_options":{"include_usage":true}`
	}
	return b + "}"
}

// wantError checks status, the OpenAI error shape and its code.
func wantError(t *testing.T, resp *http.Response, status int, code string) apierror.Body {
	t.Helper()
	var body apierror.Body
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, status, data)
	}
	if err := json.Unmarshal(data, &body); err != nil || body.Error.Message == "" || body.Error.Type == "" {
		t.Fatalf("not an OpenAI error body: %s (%v)", data, err)
	}
	if code != "" && body.Error.Code != code {
		t.Fatalf("error code %q, want %q: %s", body.Error.Code, code, data)
	}
	return body
}

// sseChunks reads an SSE answer into its data payloads (without [DONE]) and reports whether
// [DONE] ended it.
func sseChunks(t *testing.T, resp *http.Response) (chunks []map[string]any, done bool) {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("Content-Type %q, want text/event-stream", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		payload, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if payload == "[DONE]" {
			return chunks, true
		}
		var c map[string]any
		if err := json.Unmarshal([]byte(payload), &c); err != nil {
			t.Fatalf("chunk %q: %v", payload, err)
		}
		chunks = append(chunks, c)
	}
	return chunks, false
}

func TestChatCompletionCountsExactUsage(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	key := r.addKey("app", nil)
	resp := r.post(RouteChatCompletions, key, chatBody)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	var out struct {
		Usage Usage `json:"usage"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if out.Usage.PromptTokens != 3 || out.Usage.CompletionTokens != 5 {
		t.Fatalf("usage %+v, want 3 prompt and 5 completion tokens", out.Usage)
	}
	if got := r.usage.total(testNS + "/app"); got != 8 {
		t.Fatalf("recorded %d tokens for the key, want 8", got)
	}
	if got := r.usage.uid(testNS + "/app"); got != "app-uid" {
		t.Fatalf("usage charged to ApiKey uid %q, want the key's own, app-uid", got)
	}
}

func TestStreamUsageAskedOfEngineAndStripped(t *testing.T) {
	r := newRig(t, testengine.Config{Record: true}, nil)
	key := r.addKey("app", nil)

	chunks, done := sseChunks(t, r.post(RouteChatCompletions, key, streamBody(false)))
	if !done || len(chunks) == 0 {
		t.Fatalf("stream of %d chunks, [DONE]=%v", len(chunks), done)
	}
	for _, c := range chunks {
		if u, ok := c["usage"]; ok && u != nil {
			t.Fatalf("the client did not ask for usage but got a usage chunk: %v", c)
		}
	}
	reqs := r.engine.Requests()
	if len(reqs) != 1 || !strings.Contains(string(reqs[0].Body), `"include_usage":true`) {
		t.Fatalf("the engine was not asked for usage: %s", reqs[0].Body)
	}
	if got := r.usage.total(testNS + "/app"); got != 8 {
		t.Fatalf("recorded %d tokens, want 8", got)
	}

	// A client that asked gets the usage chunk, and it is counted once.
	chunks, _ = sseChunks(t, r.post(RouteChatCompletions, key, streamBody(true)))
	last := chunks[len(chunks)-1]
	if u, ok := last["usage"].(map[string]any); !ok || u["total_tokens"].(float64) != 8 {
		t.Fatalf("last chunk %v, want the usage chunk", last)
	}
	if got := r.usage.total(testNS + "/app"); got != 16 {
		t.Fatalf("recorded %d tokens after two streams, want 16", got)
	}
}

func TestRefusalsAreOpenAIErrors(t *testing.T) {
	r := newRig(t, testengine.Config{}, func(o *Options) { o.MaxBodyBytes = 1024 })
	key := r.addKey("app", nil)
	narrow := r.addKey("narrow", func(ak *servingv1alpha1.ApiKey) { ak.Spec.Models = []string{"other-model"} })
	listOnly := r.addKey("list", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.Scopes = []servingv1alpha1.Scope{servingv1alpha1.ScopeListModels}
	})

	wantError(t, r.post(RouteChatCompletions, "", chatBody), http.StatusUnauthorized, "invalid_api_key")
	wantError(t, r.post(RouteChatCompletions, "hfk_nope_nope", chatBody), http.StatusUnauthorized, "invalid_api_key")
	body := wantError(t, r.post(RouteChatCompletions, narrow, chatBody), http.StatusForbidden, "model_not_allowed")
	if strings.Contains(body.Error.Message, narrow) {
		t.Fatal("an error message contains the key")
	}
	wantError(t, r.post(RouteChatCompletions, listOnly, chatBody), http.StatusForbidden, "missing_scope")
	wantError(t, r.post(RouteChatCompletions, key, strings.Replace(chatBody, testengine.DefaultModel, "gpt-17", 1)), http.StatusNotFound, "model_not_found")
	wantError(t, r.post(RouteChatCompletions, key, `{"model":`), http.StatusBadRequest, "invalid_json")
	wantError(t, r.post(RouteChatCompletions, key, `{"model":"x","pad":"`+strings.Repeat("a", 2048)+`"}`), http.StatusRequestEntityTooLarge, "request_too_large")

	// /v1/models lists only what the key may use.
	for _, tc := range []struct {
		key  string
		want int
	}{{key, 1}, {narrow, 0}, {listOnly, 1}} {
		req, _ := http.NewRequest(http.MethodGet, r.url+"/v1/models", nil)
		req.Header.Set("Authorization", "Bearer "+tc.key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var list ModelList
		if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if len(list.Data) != tc.want {
			t.Errorf("models %v, want %d", list.Data, tc.want)
		}
		if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("models answered with Cache-Control %q, want no-store: the list follows the key's ApiKey", cc)
		}
	}
	if r.engine.Stats().Requests != 0 {
		t.Errorf("refused requests reached the engine: %+v", r.engine.Stats())
	}
}

// GET /v1/models/{model} (OpenAI's retrieve model) answers the served model to a key that may
// use it, and 404 model_not_found for any other name or a key that may not.
func TestRetrieveModel(t *testing.T) {
	r := newRig(t, testengine.Config{Models: []string{"org/chat-7b"}}, nil)
	r.s.model.set(&servingv1alpha1.InferenceModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "chat"},
		Spec:       servingv1alpha1.InferenceModelSpec{Model: servingv1alpha1.ModelSource{Name: "org/chat-7b"}},
		Status:     servingv1alpha1.InferenceModelStatus{ReadyReplicas: 1},
	})
	key := r.addKey("app", nil)
	narrow := r.addKey("narrow", func(ak *servingv1alpha1.ApiKey) { ak.Spec.Models = []string{"other-model"} })
	noList := r.addKey("infer", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.Scopes = []servingv1alpha1.Scope{servingv1alpha1.ScopeInference}
	})
	get := func(path, key string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, r.url+path, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = resp.Body.Close() })
		return resp
	}
	for _, path := range []string{"/v1/models/org%2Fchat-7b", "/v1/models/org/chat-7b"} {
		resp := get(path, key)
		var m ModelEntry
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
		}
		if m.ID != "org/chat-7b" || m.Object != "model" || m.OwnedBy == "" {
			t.Errorf("GET %s: %+v", path, m)
		}
	}
	wantError(t, get("/v1/models/gpt-17", key), http.StatusNotFound, "model_not_found")
	wantError(t, get("/v1/models/org%2Fchat-7b", narrow), http.StatusNotFound, "model_not_found")
	wantError(t, get("/v1/models/org%2Fchat-7b", noList), http.StatusForbidden, "missing_scope")
	wantError(t, get("/v1/models/org%2Fchat-7b", ""), http.StatusUnauthorized, "invalid_api_key")
}

// TestStreamFieldReadAsEnginesRead: the runtime and the engine must agree on whether a call
// streams, or a stream would go unmetered (the runtime would look for usage in a plain answer).
func TestStreamFieldReadAsEnginesRead(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	key := r.addKey("app", nil)
	escaped := strings.Replace(streamBody(false), `"stream"`, `"str\u0065am"`, 1)
	if chunks, done := sseChunks(t, r.post(RouteChatCompletions, key, escaped)); !done || len(chunks) == 0 {
		t.Fatalf("escaped stream field: %d chunks, [DONE]=%v", len(chunks), done)
	}
	if got := r.usage.total(testNS + "/app"); got != 8 {
		t.Fatalf("recorded %d tokens for a stream asked with an escaped field name, want 8", got)
	}
	// What an engine could read otherwise than the runtime is refused, on both HTTP paths
	// (the fast path hands these to net/http).
	for _, body := range []string{
		strings.Replace(streamBody(false), `"stream"`, `"Stream"`, 1),
		strings.Replace(streamBody(false), `"stream"`, `"ſtream"`, 1), // folds to "stream" in encoding/json
		strings.Replace(streamBody(false), `"stream":true`, `"stream":"true"`, 1),
		strings.Replace(streamBody(false), `"stream":true`, `"stream":1`, 1),
		strings.Replace(streamBody(true), `"include_usage":true`, `"Include_usage":false`, 1),
		strings.Replace(streamBody(true), `"include_usage":true`, `"include_usage":"no"`, 1),
		strings.Replace(chatBody, `"max_tokens"`, `"stream_options":[],"max_tokens"`, 1),
	} {
		wantError(t, r.post(RouteChatCompletions, key, body), http.StatusBadRequest, "invalid_field")
	}
	if n := r.engine.Stats().Requests; n != 1 {
		t.Fatalf("%d requests reached the engine, want only the first", n)
	}
}

// oddAnswer is what the odd engine of TestOddEngineAnswers answers.
type oddAnswer struct {
	status            int
	contentType, body string
}

// TestOddEngineAnswers: an odd engine answer is passed on or refused, never a panic; a
// stream the runtime did not ask for is a 502 (it could not be metered); and an engine error
// in the engine's own shape reaches the client as an OpenAI error with its message.
func TestOddEngineAnswers(t *testing.T) {
	var answer atomic.Pointer[oddAnswer]
	odd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		a := answer.Load()
		w.Header().Set("Content-Type", a.contentType)
		w.WriteHeader(a.status)
		_, _ = io.WriteString(w, a.body)
	}))
	t.Cleanup(odd.Close)
	r := newRig(t, testengine.Config{}, func(o *Options) { o.Upstream = odd.URL })
	key := r.addKey("app", nil)

	answer.Store(&oddAnswer{200, "application/json", `{"choices":0,"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}`})
	if resp := r.post(RouteChatCompletions, key, chatBody); resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d for an answer with odd choices", resp.StatusCode)
	}
	if got := r.usage.total(testNS + "/app"); got != 3 {
		t.Fatalf("recorded %d tokens, want 3", got)
	}

	answer.Store(&oddAnswer{200, "text/event-stream", "data: {\"choices\":[{\"delta\":{\"content\":\"free\"}}]}\n\ndata: [DONE]\n\n"})
	wantError(t, r.post(RouteChatCompletions, key, chatBody), http.StatusBadGateway, "upstream_error")

	for _, tc := range []struct {
		engine      oddAnswer
		wantType    string
		wantMessage string
	}{
		{oddAnswer{422, "application/json", `{"error":"Input validation error: max_tokens must be <= 4096","error_type":"validation"}`}, apierror.TypeInvalidRequest, "Input validation error: max_tokens must be <= 4096"},
		{oddAnswer{500, "text/plain", "CUDA out of memory\n"}, apierror.TypeServer, "CUDA out of memory"},
		{oddAnswer{404, "application/json", `{"detail":"Not Found"}`}, apierror.TypeInvalidRequest, "Not Found"},
		{oddAnswer{503, "text/html", ""}, apierror.TypeServer, "the engine answered 503 Service Unavailable"},
	} {
		answer.Store(&tc.engine)
		body := wantError(t, r.post(RouteChatCompletions, key, chatBody), tc.engine.status, "upstream_error")
		if body.Error.Type != tc.wantType || body.Error.Message != tc.wantMessage {
			t.Errorf("engine %d %q: client saw %+v, want type %q and message %q", tc.engine.status, tc.engine.body, body.Error, tc.wantType, tc.wantMessage)
		}
	}
	// An OpenAI-shaped engine error is passed through as the engine wrote it.
	answer.Store(&oddAnswer{400, "application/json", `{"error":{"message":"bad temperature","type":"BadRequestError","param":"temperature","code":400}}`})
	data, _ := io.ReadAll(r.post(RouteChatCompletions, key, chatBody).Body)
	if string(data) != answer.Load().body {
		t.Errorf("an OpenAI-shaped engine error became %s", data)
	}
}

func TestEngineFailures(t *testing.T) {
	r := newRig(t, testengine.Config{}, func(o *Options) { o.RequestTimeout = 300 * time.Millisecond })
	key := r.addKey("app", nil)
	r.engine.SetMode(testengine.ModeHang)
	start := time.Now()
	wantError(t, r.post(RouteChatCompletions, key, chatBody), http.StatusGatewayTimeout, "upstream_error")
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("a hanging engine held the client %v", d)
	}
	r.engine.SetMode(testengine.ModeFail)
	if resp := r.post(RouteChatCompletions, key, chatBody); resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("engine 500 passed on as %d", resp.StatusCode)
	}

	dead := newRig(t, testengine.Config{}, func(o *Options) { o.Upstream = "http://127.0.0.1:1" })
	wantError(t, dead.post(RouteChatCompletions, dead.addKey("app", nil), chatBody), http.StatusBadGateway, "upstream_error")
}

// TestBrokenStreamEndsWithAnErrorEvent: a stream the engine does not finish (here, cut by
// the request timeout) ends with an OpenAI error object and no [DONE], so that a client does
// not take the part it got for the whole answer.
func TestBrokenStreamEndsWithAnErrorEvent(t *testing.T) {
	r := newRig(t, testengine.Config{Mode: testengine.ModeStall}, func(o *Options) { o.RequestTimeout = 300 * time.Millisecond })
	key := r.addKey("app", nil)
	chunks, done := sseChunks(t, r.post(RouteChatCompletions, key, streamBody(false)))
	if done || len(chunks) < 2 {
		t.Fatalf("%d chunks, [DONE]=%v; want the engine's first chunk, then an error", len(chunks), done)
	}
	last, ok := chunks[len(chunks)-1]["error"].(map[string]any)
	if !ok || last["code"] != "upstream_error" || !strings.Contains(last["message"].(string), "did not finish") {
		t.Fatalf("last event %v, want the timeout's error", chunks[len(chunks)-1])
	}
	if want := "helixflow_runtime_requests_total code=504"; !strings.Contains(r.series(), want) {
		t.Fatalf("the cut stream is not counted as 504:\n%s", r.series())
	}
}

func TestConcurrencyLimitAndRetryAfter(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	key := r.addKey("slow", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.RateLimit = &servingv1alpha1.KeyRateLimit{RequestsPerMinute: 2}
	})
	for range 2 {
		if resp := r.post(RouteChatCompletions, key, chatBody); resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d within the limit", resp.StatusCode)
		}
	}
	resp := r.post(RouteChatCompletions, key, chatBody)
	wantError(t, resp, http.StatusTooManyRequests, "rate_limit_exceeded")
	if ra := resp.Header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Fatalf("Retry-After %q", ra)
	}
}

// TestRateLimitHoldsAtThreeTimesTheLimit sends 3x a key's requests per minute for five
// minutes of (simulated) time through the real HTTP path; the accepted count per minute
// stays within 5% of the limit.
func TestRateLimitHoldsAtThreeTimesTheLimit(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	const rpm = 120
	key := r.addKey("busy", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.RateLimit = &servingv1alpha1.KeyRateLimit{RequestsPerMinute: rpm}
	})
	const minutes, perMinute = 5, 3 * rpm
	accepted := 0
	for range minutes * perMinute {
		resp := r.post(RouteChatCompletions, key, chatBody)
		switch resp.StatusCode {
		case http.StatusOK:
			accepted++
		case http.StatusTooManyRequests:
		default:
			t.Fatalf("status %d", resp.StatusCode)
		}
		_ = resp.Body.Close()
		r.clock.Advance(time.Minute / perMinute)
	}
	want := float64(minutes * rpm)
	t.Logf("accepted %d of %d requests sent at 3x the limit over %d minutes (limit %v)", accepted, minutes*perMinute, minutes, want)
	if math.Abs(float64(accepted)-want) > 0.05*want {
		t.Fatalf("accepted %d, want within 5%% of %v", accepted, want)
	}
}

func TestCompletionsAndEmbeddingsAreMetered(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	key := r.addKey("batch", nil)
	resp := r.post(RouteCompletions, key, `{"model":"`+testengine.DefaultModel+`","prompt":"four words of prompt","max_tokens":3}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("completions: %d", resp.StatusCode)
	}
	resp = r.post(RouteEmbeddings, key, `{"model":"`+testengine.DefaultModel+`","input":["a b c","d"]}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("embeddings: %d", resp.StatusCode)
	}
	// 4 + 3 for the completion, 4 prompt tokens for the embeddings.
	if got := r.usage.total(testNS + "/batch"); got != 11 {
		t.Fatalf("recorded %d tokens, want 11", got)
	}
}
