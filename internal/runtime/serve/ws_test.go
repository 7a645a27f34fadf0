package serve

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/test/testengine"
)

func (r *rig) wsURL(query string) string {
	return "ws" + strings.TrimPrefix(r.url, "http") + RouteStream + query
}

// wsDialKey connects with the browser's way of passing a credential: the subprotocol.
func (r *rig) wsDialKey(key string, opts *websocket.DialOptions) *websocket.Conn {
	r.t.Helper()
	if opts == nil {
		opts = &websocket.DialOptions{}
	}
	opts.Subprotocols = append(opts.Subprotocols, WebSocketSubprotocol, "bearer."+key)
	c, resp, err := websocket.Dial(r.t.Context(), r.wsURL(""), opts)
	if err != nil {
		r.t.Fatalf("dial: %v (%v)", err, resp)
	}
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != WebSocketSubprotocol || c.Subprotocol() != WebSocketSubprotocol {
		r.t.Fatalf("selected subprotocol %q (%q), want %q only", got, c.Subprotocol(), WebSocketSubprotocol)
	}
	r.t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

// wsAnswer is what the server sent for one request: chunks, then done or error.
type wsAnswer struct {
	chunks []map[string]any
	done   *wsDone
	err    *wsErrorDetail
}

func (a wsAnswer) content() string {
	var b strings.Builder
	for _, c := range a.chunks {
		choices, _ := c["choices"].([]any)
		if len(choices) == 0 {
			continue
		}
		ch, _ := choices[0].(map[string]any)
		if d, ok := ch["delta"].(map[string]any); ok {
			s, _ := d["content"].(string)
			b.WriteString(s)
		}
		if s, ok := ch["text"].(string); ok {
			b.WriteString(s)
		}
	}
	return b.String()
}

// readAnswer reads messages until a done or an error message.
func readAnswer(t *testing.T, c *websocket.Conn) wsAnswer {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var a wsAnswer
	for {
		typ, data, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("after %d chunks: %v", len(a.chunks), err)
		}
		if typ != websocket.MessageText {
			t.Fatalf("message type %v", typ)
		}
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatalf("message %q: %v", data, err)
		}
		switch {
		case m["object"] == StreamDoneObject:
			a.done = &wsDone{}
			if err := json.Unmarshal(data, a.done); err != nil {
				t.Fatal(err)
			}
			return a
		case m["error"] != nil:
			var e wsError
			if err := json.Unmarshal(data, &e); err != nil {
				t.Fatal(err)
			}
			a.err = &e.Error
			return a
		}
		a.chunks = append(a.chunks, m)
	}
}

func wsSend(t *testing.T, c *websocket.Conn, msg string) {
	t.Helper()
	if err := c.Write(t.Context(), websocket.MessageText, []byte(msg)); err != nil {
		t.Fatal(err)
	}
}

// wantStream checks a complete answer of n tokens to a prompt of p words.
func wantStream(t *testing.T, a wsAnswer, p, n int64) {
	t.Helper()
	if a.err != nil {
		t.Fatalf("error message %+v", *a.err)
	}
	if got, want := a.content(), testengine.CompletionText(int(n)); got != want {
		t.Fatalf("chunks make %q, want %q", got, want)
	}
	for _, c := range a.chunks {
		if u, ok := c["usage"]; ok && u != nil {
			t.Fatalf("a usage chunk nobody asked for: %v", c)
		}
	}
	if want := (Usage{PromptTokens: p, CompletionTokens: n, TotalTokens: p + n}); a.done.Usage != want {
		t.Fatalf("done usage %+v, want %+v", a.done.Usage, want)
	}
}

// wantClose reads until the connection ends and checks its close code.
func wantClose(t *testing.T, c *websocket.Conn, code websocket.StatusCode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for {
		_, data, err := c.Read(ctx)
		if err != nil {
			if got := websocket.CloseStatus(err); got != code {
				t.Fatalf("closed with %v (%v), want %v", got, err, code)
			}
			return
		}
		var m map[string]any
		_ = json.Unmarshal(data, &m)
		if m["error"] != nil {
			t.Logf("before the close: %s", data)
		}
	}
}

func TestWebSocketStreamsChatCompletion(t *testing.T) {
	r := newRig(t, testengine.Config{Record: true}, nil)
	key := r.addKey("app", nil)

	c := r.wsDialKey(key, nil)
	wsSend(t, c, chatBody)
	wantStream(t, readAnswer(t, c), 3, 5)
	if got := r.usage.total(testNS + "/app"); got != 8 {
		t.Fatalf("recorded %d tokens, want 8", got)
	}
	// Streaming was forced and exact usage asked of the engine.
	body := string(r.engine.Requests()[0].Body)
	if !strings.Contains(body, `"stream":true`) || !strings.Contains(body, `"include_usage":true`) {
		t.Fatalf("engine request %s", body)
	}

	// A client that asks for the usage chunk gets it, and the done message too.
	wsSend(t, c, streamBody(true))
	a := readAnswer(t, c)
	if u, ok := a.chunks[len(a.chunks)-1]["usage"].(map[string]any); !ok || u["total_tokens"].(float64) != 8 {
		t.Fatalf("last chunk %v, want the usage chunk", a.chunks[len(a.chunks)-1])
	}
	if a.done.Usage.TotalTokens != 8 {
		t.Fatalf("done %+v", a.done)
	}

	// Plain completions through the envelope, on the same connection.
	wsSend(t, c, `{"route":"/v1/completions","request":{"model":"`+testengine.DefaultModel+`","prompt":"a b","max_tokens":4}}`)
	wantStream(t, readAnswer(t, c), 2, 4)
	if got := r.engine.Requests()[2].Path; got != RouteCompletions {
		t.Fatalf("envelope went to %s", got)
	}
	if got := r.usage.total(testNS + "/app"); got != 22 {
		t.Fatalf("recorded %d tokens, want 22", got)
	}

	// Non-browser clients may use the Authorization header instead.
	hc, _, err := websocket.Dial(t.Context(), r.wsURL(""), &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key}}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = hc.CloseNow() }()
	wsSend(t, hc, chatBody)
	wantStream(t, readAnswer(t, hc), 3, 5)
	if err := hc.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatal(err)
	}
}

func TestWebSocketRefusedBeforeUpgrade(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	key := r.addKey("app", nil)
	listOnly := r.addKey("list", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.Scopes = []servingv1alpha1.Scope{servingv1alpha1.ScopeListModels}
	})
	for _, tc := range []struct {
		name   string
		query  string
		protos []string
		header http.Header
		status int
		code   string
	}{
		{name: "no credential", status: http.StatusUnauthorized, code: "invalid_api_key"},
		{name: "bad subprotocol credential", protos: []string{WebSocketSubprotocol, "bearer.hfk_nope_nope"}, status: http.StatusUnauthorized, code: "invalid_api_key"},
		{name: "bad header", header: http.Header{"Authorization": {"Bearer hfk_nope_nope"}}, status: http.StatusUnauthorized, code: "invalid_api_key"},
		{name: "query string is never read", query: "?access_token=" + key + "&api_key=" + key, status: http.StatusUnauthorized, code: "invalid_api_key"},
		{name: "credential without helixflow.v1", protos: []string{"bearer." + key}, status: http.StatusBadRequest, code: "missing_subprotocol"},
		{name: "no inference scope", protos: []string{WebSocketSubprotocol, "bearer." + listOnly}, status: http.StatusForbidden, code: "missing_scope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, resp, err := websocket.Dial(t.Context(), r.wsURL(tc.query), &websocket.DialOptions{Subprotocols: tc.protos, HTTPHeader: tc.header})
			if err == nil || resp == nil {
				t.Fatalf("dial succeeded: %v", err)
			}
			body := wantError(t, resp, tc.status, tc.code)
			if strings.Contains(body.Error.Message, key) {
				t.Fatal("an error message contains the key")
			}
		})
	}

	// A page of another origin is refused even with a valid credential (coder/websocket's
	// same-origin check)...
	_, resp, err := websocket.Dial(t.Context(), r.wsURL(""), &websocket.DialOptions{
		Subprotocols: []string{WebSocketSubprotocol, "bearer." + key},
		HTTPHeader:   http.Header{"Origin": {"https://evil.example"}},
	})
	if err == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("foreign origin: %v %v", err, resp)
	}
	// ...unless allowed by OriginPatterns.
	r2 := newRig(t, testengine.Config{}, func(o *Options) { o.WebSocket.OriginPatterns = []string{"https://*.example"} })
	c := r2.wsDialKey(r2.addKey("app", nil), &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://app.example"}}})
	wsSend(t, c, chatBody)
	wantStream(t, readAnswer(t, c), 3, 5)

	// ...or by the InferenceModel's spec.auth.allowedOrigins, followed as it changes.
	r.s.model.set(&servingv1alpha1.InferenceModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: testengine.DefaultModel},
		Spec:       servingv1alpha1.InferenceModelSpec{Auth: servingv1alpha1.AuthSpec{AllowedOrigins: []string{"evil.example"}}},
		Status:     servingv1alpha1.InferenceModelStatus{ReadyReplicas: 1},
	})
	c = r.wsDialKey(key, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://evil.example"}}})
	wsSend(t, c, chatBody)
	wantStream(t, readAnswer(t, c), 3, 5)
	_, resp, err = websocket.Dial(t.Context(), r.wsURL(""), &websocket.DialOptions{
		Subprotocols: []string{WebSocketSubprotocol, "bearer." + key},
		HTTPHeader:   http.Header{"Origin": {"https://other.example"}},
	})
	if err == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("an origin the model does not list: %v %v", err, resp)
	}
}

func TestWebSocketErrorsKeepTheConnection(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	key := r.addKey("app", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.RateLimit = &servingv1alpha1.KeyRateLimit{RequestsPerMinute: 2}
	})
	c := r.wsDialKey(key, nil)
	for _, tc := range []struct {
		msg, code string
		status    int
	}{
		{`{"model":`, "invalid_json", http.StatusBadRequest},
		{`[1,2]`, "invalid_json", http.StatusBadRequest},
		{`null`, "invalid_json", http.StatusBadRequest},
		{strings.Replace(chatBody, testengine.DefaultModel, "gpt-17", 1), "model_not_found", http.StatusNotFound},
		{`{"route":"/v1/embeddings","request":{"model":"x","input":"a"}}`, "invalid_route", http.StatusBadRequest},
		{`{"route":"/v1/completions","request":"x"}`, "invalid_json", http.StatusBadRequest},
	} {
		wsSend(t, c, tc.msg)
		a := readAnswer(t, c)
		if a.err == nil || a.err.Code != tc.code || a.err.Status != tc.status || a.err.Message == "" || a.err.Type == "" {
			t.Fatalf("%s: answer %+v, want error %s (%d)", tc.msg, a.err, tc.code, tc.status)
		}
	}
	wsSend(t, c, chatBody)
	wantStream(t, readAnswer(t, c), 3, 5)
	wsSend(t, c, chatBody)
	wantStream(t, readAnswer(t, c), 3, 5)
	wsSend(t, c, chatBody)
	a := readAnswer(t, c)
	if a.err == nil || a.err.Code != "rate_limit_exceeded" || a.err.Status != http.StatusTooManyRequests || a.err.RetryAfter <= 0 {
		t.Fatalf("over the limit: %+v", a.err)
	}

	// An engine error: its message, and the connection stays.
	r.clock.Advance(2 * time.Minute)
	r.engine.SetMode(testengine.ModeFail)
	wsSend(t, c, chatBody)
	if a := readAnswer(t, c); a.err == nil || a.err.Status != http.StatusInternalServerError || !strings.Contains(a.err.Message, "failure injected") {
		t.Fatalf("engine failure: %+v", a.err)
	}
	r.engine.SetMode(testengine.ModeNormal)
	wsSend(t, c, chatBody)
	wantStream(t, readAnswer(t, c), 3, 5)
}

func TestWebSocketClientCloseCancelsEngineStream(t *testing.T) {
	r := newRig(t, testengine.Config{Record: true, ChunkInterval: 20 * time.Millisecond}, nil)
	c := r.wsDialKey(r.addKey("app", nil), nil)
	wsSend(t, c, strings.Replace(chatBody, `"max_tokens":5`, `"max_tokens":500`, 1))
	for range 2 {
		if _, _, err := c.Read(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Fatal(err)
	}
	waitCancelledStream(t, r)
}

// TestWebSocketRequestsQueue: requests sent while one streams are answered after it, in order.
func TestWebSocketRequestsQueue(t *testing.T) {
	r := newRig(t, testengine.Config{ChunkInterval: 5 * time.Millisecond}, nil)
	c := r.wsDialKey(r.addKey("app", nil), nil)
	wsSend(t, c, chatBody)
	wsSend(t, c, strings.Replace(chatBody, `"max_tokens":5`, `"max_tokens":7`, 1))
	wsSend(t, c, `{"model":`)
	wantStream(t, readAnswer(t, c), 3, 5)
	wantStream(t, readAnswer(t, c), 3, 7)
	if a := readAnswer(t, c); a.err == nil || a.err.Code != "invalid_json" {
		t.Fatalf("third answer %+v", a)
	}
}

func TestWebSocketCloseCodes(t *testing.T) {
	r := newRig(t, testengine.Config{ChunkInterval: 50 * time.Millisecond}, func(o *Options) { o.MaxBodyBytes = 1024 })
	key := r.addKey("app", nil)

	t.Run("1009 beyond MaxBodyBytes", func(t *testing.T) {
		c := r.wsDialKey(key, nil)
		wsSend(t, c, `{"model":"x","pad":"`+strings.Repeat("a", 2048)+`"}`)
		wantClose(t, c, websocket.StatusMessageTooBig)
	})
	t.Run("1003 binary message", func(t *testing.T) {
		c := r.wsDialKey(key, nil)
		if err := c.Write(t.Context(), websocket.MessageBinary, []byte(chatBody)); err != nil {
			t.Fatal(err)
		}
		wantClose(t, c, websocket.StatusUnsupportedData)
	})
	t.Run("1008 too many queued requests", func(t *testing.T) {
		c := r.wsDialKey(key, nil)
		long := strings.Replace(chatBody, `"max_tokens":5`, `"max_tokens":100`, 1)
		for range wsMaxQueued + 2 {
			wsSend(t, c, long)
		}
		wantClose(t, c, websocket.StatusPolicyViolation)
	})
	t.Run("1008 credential revoked", func(t *testing.T) {
		gone := r.addKey("gone", nil)
		c := r.wsDialKey(gone, nil)
		wsSend(t, c, chatBody)
		wantStream(t, readAnswer(t, c), 3, 5)
		r.s.auth.Keys().Delete("gone")
		wsSend(t, c, chatBody)
		if a := readAnswer(t, c); a.err == nil || a.err.Status != http.StatusUnauthorized {
			t.Fatalf("revoked key: %+v", a)
		}
		wantClose(t, c, websocket.StatusPolicyViolation)
	})
}

func TestWebSocketPingAndIdleTimeout(t *testing.T) {
	r := newRig(t, testengine.Config{}, func(o *Options) {
		o.WebSocket.PingInterval = 20 * time.Millisecond
		o.WebSocket.IdleTimeout = 300 * time.Millisecond
	})
	var pings atomic.Int64
	c := r.wsDialKey(r.addKey("app", nil), &websocket.DialOptions{
		OnPingReceived: func(context.Context, []byte) bool { pings.Add(1); return true },
	})
	start := time.Now()
	wsSend(t, c, chatBody)
	wantStream(t, readAnswer(t, c), 3, 5)
	_, _, err := c.Read(t.Context())
	if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Fatalf("idle connection ended with %v", err)
	}
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Reason != "idle timeout" {
		t.Fatalf("close %v", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("closed after %v, before the idle timeout", d)
	}
	if pings.Load() < 3 {
		t.Fatalf("%d pings in the connection's life", pings.Load())
	}
}

// TestWebSocketShutdown: shutdown lets a stream in flight finish, then closes with 1001;
// idle connections get 1001 at once, and new ones are refused with 503.
func TestWebSocketShutdown(t *testing.T) {
	r := newRig(t, testengine.Config{ChunkInterval: 10 * time.Millisecond}, func(o *Options) { o.ShutdownTimeout = 10 * time.Second })
	key := r.addKey("app", nil)
	idle := r.wsDialKey(key, nil)
	busy := r.wsDialKey(key, nil)
	wsSend(t, busy, strings.Replace(chatBody, `"max_tokens":5`, `"max_tokens":30`, 1))
	if _, _, err := busy.Read(t.Context()); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() { r.s.shutdown(nil); close(stopped) }()
	wantClose(t, idle, websocket.StatusGoingAway)

	a := readAnswer(t, busy)
	if a.err != nil || a.done == nil || a.done.Usage.CompletionTokens != 30 {
		t.Fatalf("the stream in flight was cut: %+v", a)
	}
	wantClose(t, busy, websocket.StatusGoingAway)
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not return after the connections closed")
	}

	_, resp, err := websocket.Dial(t.Context(), r.wsURL(""), &websocket.DialOptions{Subprotocols: []string{WebSocketSubprotocol, "bearer." + key}})
	if err == nil {
		t.Fatal("a connection was accepted while shutting down")
	}
	wantError(t, resp, http.StatusServiceUnavailable, "shutting_down")
	_, _ = io.Copy(io.Discard, resp.Body)
}
