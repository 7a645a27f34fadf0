package serve

import (
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/test/testengine"
)

// browserRequest is what a page's fetch sends: an Origin, and for a preflight the method and
// headers it asks to use.
func (r *rig) browserRequest(method, route, origin string, header http.Header, body string) *http.Response {
	r.t.Helper()
	req, err := http.NewRequest(method, r.url+route, strings.NewReader(body))
	if err != nil {
		r.t.Fatal(err)
	}
	req.Header = header.Clone()
	req.Header.Set("Origin", origin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

func preflight(method, headers string) http.Header {
	return http.Header{"Access-Control-Request-Method": {method}, "Access-Control-Request-Headers": {headers}}
}

// A page of an origin the InferenceModel allows calls the HTTP API with fetch: its
// preflight is answered, and so are its calls, errors included, readable by the page.
func TestCORSAllowedOrigin(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	r.s.model.set(&servingv1alpha1.InferenceModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: testengine.DefaultModel},
		Spec:       servingv1alpha1.InferenceModelSpec{Auth: servingv1alpha1.AuthSpec{AllowedOrigins: []string{"*.example.com"}}},
		Status:     servingv1alpha1.InferenceModelStatus{ReadyReplicas: 1},
	})
	key := r.addKey("app", nil)
	const origin = "https://chat.example.com"

	resp := r.browserRequest(http.MethodOptions, RouteChatCompletions, origin,
		preflight("POST", "authorization,content-type,x-stainless-os"), "")
	h := resp.Header
	if resp.StatusCode != http.StatusNoContent || h.Get("Access-Control-Allow-Origin") != origin ||
		h.Get("Access-Control-Allow-Headers") != "authorization,content-type,x-stainless-os" ||
		!strings.Contains(h.Get("Access-Control-Allow-Methods"), "POST") || h.Get("Access-Control-Max-Age") == "" {
		t.Fatalf("preflight: %d %v", resp.StatusCode, h)
	}
	if h.Get("Access-Control-Allow-Credentials") != "" {
		t.Error("preflight allows credentials (cookies): keys are sent as headers only")
	}

	served := r.s.h1.served.Load()
	call := http.Header{"Authorization": {"Bearer " + key}, "Content-Type": {"application/json"}}
	resp = r.browserRequest(http.MethodPost, RouteChatCompletions, origin, call, chatBody)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Access-Control-Allow-Origin") != origin ||
		!strings.Contains(resp.Header.Get("Vary"), "Origin") || !strings.Contains(string(body), `"usage"`) {
		t.Fatalf("call: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	if r.s.h1.served.Load() != served {
		t.Error("the fast path answered a browser's call, without its CORS headers")
	}
	if got := r.usage.total(testNS + "/app"); got != 8 {
		t.Errorf("recorded %d tokens for the browser's call, want 8", got)
	}

	resp = r.browserRequest(http.MethodPost, RouteChatCompletions, origin, http.Header{"Content-Type": {"application/json"}}, chatBody)
	wantError(t, resp, http.StatusUnauthorized, "")
	if resp.Header.Get("Access-Control-Allow-Origin") != origin || !strings.Contains(resp.Header.Get("Access-Control-Expose-Headers"), "Retry-After") {
		t.Fatalf("an error the page cannot read: %v", resp.Header)
	}

	for _, route := range []string{"/v1/models", "/v1/models/" + testengine.DefaultModel} {
		resp = r.browserRequest(http.MethodOptions, route, origin, preflight("GET", "authorization"), "")
		if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != origin {
			t.Fatalf("preflight for GET %s: %d %v", route, resp.StatusCode, resp.Header)
		}
		resp = r.browserRequest(http.MethodGet, route, origin, http.Header{"Authorization": {"Bearer " + key}}, "")
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Access-Control-Allow-Origin") != origin {
			t.Fatalf("GET %s: %d %v", route, resp.StatusCode, resp.Header)
		}
	}

	// Only the API's routes: not the probes, not the WebSocket (which has no preflight).
	for _, route := range []string{"/healthz", RouteStream} {
		resp = r.browserRequest(http.MethodOptions, route, origin, preflight("GET", "authorization"), "")
		if resp.StatusCode == http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("preflight for %s answered: %d %v", route, resp.StatusCode, resp.Header)
		}
	}
}

// A page of any other origin gets a 403 to its preflight, so its browser never sends the
// call, and no answer the page could read.
func TestCORSOtherOrigin(t *testing.T) {
	r := newRig(t, testengine.Config{}, func(o *Options) { o.WebSocket.OriginPatterns = []string{"https://app.example.com"} })
	key := r.addKey("app", nil)
	for _, origin := range []string{"https://evil.example", "http://app.example.com", "null"} {
		resp := r.browserRequest(http.MethodOptions, RouteChatCompletions, origin, preflight("POST", "authorization"), "")
		wantError(t, resp, http.StatusForbidden, "origin_not_allowed")
		if v := resp.Header.Get("Access-Control-Allow-Origin"); v != "" {
			t.Errorf("%s: preflight allows %q", origin, v)
		}
		call := http.Header{"Authorization": {"Bearer " + key}, "Content-Type": {"application/json"}}
		resp = r.browserRequest(http.MethodPost, RouteChatCompletions, origin, call, chatBody)
		if v := resp.Header.Get("Access-Control-Allow-Origin"); v != "" {
			t.Errorf("%s: call answer readable by %q", origin, v)
		}
	}
	resp := r.browserRequest(http.MethodOptions, RouteChatCompletions, "https://app.example.com", preflight("POST", "authorization"), "")
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Fatalf("--websocket-origins does not allow its origin: %d %v", resp.StatusCode, resp.Header)
	}
}

// Without an Origin (SDKs, curl) nothing changes: the fast path answers, with no CORS header.
func TestCORSNotForNonBrowserClients(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	key := r.addKey("app", nil)
	resp := r.post(RouteChatCompletions, key, chatBody)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Access-Control-Allow-Origin") != "" || resp.Header.Get("Vary") != "" {
		t.Fatalf("%d %v", resp.StatusCode, resp.Header)
	}
	if r.s.h1.served.Load() != 1 {
		t.Errorf("fast path served %d calls, want 1", r.s.h1.served.Load())
	}
}

func TestOriginAllowed(t *testing.T) {
	patterns := []string{"*.example.com", "https://app.test", "localhost:3000"}
	for _, tc := range []struct {
		origin string
		want   bool
	}{
		{"https://chat.example.com", true},
		{"http://a.b.example.com", true}, // "*" matches dots, as in the WebSocket check
		{"https://CHAT.Example.com", true},
		{"https://example.com", false},
		{"https://app.test", true},
		{"http://app.test", false}, // the pattern names its scheme
		{"http://localhost:3000", true},
		{"http://localhost:3001", false},
		{"https://runtime.svc:8080", true}, // the runtime's own host
		{"null", false},
		{"https://evil.com/.example.com", false},
		{"::", false},
		{"https://chat.example.com.evil.com", false},
		{"https://chat.example.com@evil.com", false}, // userinfo: the host is evil.com
		{"https://chat.example.com:8443", false},     // a pattern without a port matches none
	} {
		if got := originAllowed(tc.origin, "runtime.svc:8080", patterns); got != tc.want {
			t.Errorf("originAllowed(%q) = %v, want %v", tc.origin, got, tc.want)
		}
	}
}

// headCORS reads what it needs from the start of a head: whole lines only, any case, the
// route without its query.
func TestHeadCORS(t *testing.T) {
	s := &Server{opts: Options{WebSocket: WebSocketOptions{OriginPatterns: []string{"app.example.com"}}}, model: newModelWatch(&modelState{})}
	cases := []struct {
		name, head, allow string
		vary              bool
	}{
		{"an allowed origin", "POST /v1/chat/completions HTTP/1.1\r\nHost: rt\r\norigin: https://app.example.com\r\nX-Big: yyy", "https://app.example.com", true},
		{"the runtime's own host", "GET /v1/models?x=1 HTTP/1.1\r\nHOST: rt.example.org\r\nOrigin: https://rt.example.org\r\n", "https://rt.example.org", true},
		{"another origin", "POST /v1/embeddings HTTP/1.1\r\nOrigin: https://elsewhere.test\r\n", "", true},
		{"an Origin cut short", "POST /v1/chat/completions HTTP/1.1\r\nOrigin: https://app.example.com", "", false},
		{"no Origin", "POST /v1/chat/completions HTTP/1.1\r\nHost: rt\r\n", "", false},
		{"two Origins: the first counts", "POST /v1/chat/completions HTTP/1.1\r\nOrigin: https://elsewhere.test\r\nOrigin: https://app.example.com\r\n", "", true},
		{"not an API route", "GET /healthz HTTP/1.1\r\nOrigin: https://app.example.com\r\n", "", false},
		{"no request line", "garbage", "", false},
		{"a request line cut short", "POST /v1/chat/completions?x=" + strings.Repeat("y", 100), "", false},
	}
	for _, tc := range cases {
		h := s.headCORS([]byte(tc.head))
		if got := h.Get("Access-Control-Allow-Origin"); got != tc.allow || slices.Contains(h.Values("Vary"), "Origin") != tc.vary {
			t.Errorf("%s: %v, want Access-Control-Allow-Origin %q, Vary: Origin %v", tc.name, h, tc.allow, tc.vary)
		}
	}
}
