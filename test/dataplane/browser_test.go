package dataplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/runtime/serve"
	"github.com/helixflow/helixflow/test/clients"
	"github.com/helixflow/helixflow/test/testengine"
)

// pageStep is what the page saw of one step: a result, or the error the SDK or the browser
// raised.
type pageStep struct {
	OK    json.RawMessage `json:"ok"`
	Error *struct {
		Class   string `json:"class"`
		Status  int    `json:"status"`
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

type pageReport struct {
	Origin          string   `json:"origin"`
	Failed          string   `json:"failed"`
	Models          pageStep `json:"models"`
	Retrieve        pageStep `json:"retrieve"`
	Chat            pageStep `json:"chat"`
	Stream          pageStep `json:"stream"`
	Unauthenticated pageStep `json:"unauthenticated"`
	WebSocket       pageStep `json:"websocket"`
}

// TestBrowserPage: a web page in a real browser (headless chromium) calls runtime serve from
// another origin, as a browser app does: the official openai SDK over fetch (its preflights
// carry the SDK's own headers) and the WebSocket stream, the key in a subprotocol. From an
// origin the InferenceModel's spec.auth.allowedOrigins lists, every call works and errors
// reach the SDK as its error classes; from any other origin the browser lets none through.
func TestBrowserPage(t *testing.T) {
	c := newCluster(t, testengine.Config{ChunkInterval: 5 * time.Millisecond})
	key := c.apiKey("app", nil)
	pages, reports := servePage(t)
	_, port, err := net.SplitHostPort(pages.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	// The same page server under two names is two origins: localhost is allowed, 127.0.0.1
	// is not (and neither is the runtime's own host, another port).
	allowed, other := "http://localhost:"+port, "http://127.0.0.1:"+port
	allowOrigins(t, c, "localhost:"+port)

	got := openPage(t, allowed, c.runtimeURL, key, reports)
	if got.Origin != allowed || got.Failed != "" {
		t.Fatalf("page at %s: %+v", allowed, got)
	}
	var models []string
	var retrieved string
	var chat struct {
		Content string      `json:"content"`
		Usage   serve.Usage `json:"usage"`
	}
	var stream struct {
		Content string `json:"content"`
		Chunks  int    `json:"chunks"`
	}
	var ws struct {
		Protocol string      `json:"protocol"`
		Text     string      `json:"text"`
		Chunks   int         `json:"chunks"`
		Usage    serve.Usage `json:"usage"`
	}
	decodeStep(t, "models.list", got.Models, &models)
	decodeStep(t, "models.retrieve", got.Retrieve, &retrieved)
	decodeStep(t, "chat", got.Chat, &chat)
	decodeStep(t, "streamed chat", got.Stream, &stream)
	decodeStep(t, "WebSocket stream", got.WebSocket, &ws)
	if len(models) != 1 || models[0] != testengine.DefaultModel || retrieved != testengine.DefaultModel {
		t.Errorf("models %v, retrieved %q", models, retrieved)
	}
	if chat.Content != testengine.CompletionText(6) || chat.Usage.CompletionTokens != 6 {
		t.Errorf("chat %+v", chat)
	}
	if stream.Content != testengine.CompletionText(5) || stream.Chunks < 5 {
		t.Errorf("stream %+v, want %q assembled from chunks", stream, testengine.CompletionText(5))
	}
	if ws.Protocol != serve.WebSocketSubprotocol || ws.Text != testengine.CompletionText(4) || ws.Usage.CompletionTokens != 4 {
		t.Errorf("WebSocket %+v", ws)
	}
	if e := got.Unauthenticated.Error; e == nil || e.Class != "AuthenticationError" || e.Status != http.StatusUnauthorized {
		t.Errorf("a wrong key from the page: %+v, want the SDK's AuthenticationError (the 401 readable by the page)", got.Unauthenticated)
	}

	got = openPage(t, other, c.runtimeURL, key, reports)
	if got.Origin != other || got.Failed != "" {
		t.Fatalf("page at %s: %+v", other, got)
	}
	for name, step := range map[string]pageStep{"models.list": got.Models, "models.retrieve": got.Retrieve, "chat": got.Chat,
		"streamed chat": got.Stream, "a wrong key": got.Unauthenticated} {
		if step.Error == nil || step.Error.Class != "APIConnectionError" {
			t.Errorf("%s from an origin not allowed: %+v, want the browser to refuse it (the SDK's APIConnectionError)", name, step)
		}
	}
	if got.WebSocket.Error == nil || !strings.Contains(got.WebSocket.Error.Message, "closed with 1006") {
		t.Errorf("WebSocket from an origin not allowed: %+v, want the handshake refused", got.WebSocket)
	}
}

func decodeStep(t *testing.T, what string, step pageStep, v any) {
	t.Helper()
	if step.Error != nil || step.OK == nil {
		t.Fatalf("%s failed in the browser: %+v", what, step.Error)
	}
	if err := json.Unmarshal(step.OK, v); err != nil {
		t.Fatalf("%s: %s: %v", what, step.OK, err)
	}
}

// servePage serves the page (test/clients/browser), the openai SDK's ES modules from the npm
// install (that package only), and POST /report, whose bodies come out of the returned
// channel.
func servePage(t *testing.T) (*httptest.Server, <-chan []byte) {
	t.Helper()
	sdk := filepath.Join(clients.NodeSDKDir(t), "node_modules", "openai")
	page := filepath.Join(clients.RepoRoot(), "test", "clients", "browser")
	reports := make(chan []byte, 1)
	mux := http.NewServeMux()
	mux.Handle("GET /node_modules/openai/", http.StripPrefix("/node_modules/openai/", http.FileServer(http.Dir(sdk))))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, filepath.Join(page, "page.html")) })
	mux.HandleFunc("GET /page.mjs", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, filepath.Join(page, "page.mjs")) })
	mux.HandleFunc("POST /report", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		select {
		case reports <- body:
		default: // a report nobody waits for
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, reports
}

// allowOrigins sets the InferenceModel's spec.auth.allowedOrigins and waits until the
// runtime answers a preflight from the first.
func allowOrigins(t *testing.T, c *cluster, origins ...string) {
	t.Helper()
	// A merge patch: the manager writes the object too (finalizer, status).
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"auth": map[string]any{"allowedOrigins": origins}}})
	if err != nil {
		t.Fatal(err)
	}
	m := &servingv1alpha1.InferenceModel{ObjectMeta: metav1.ObjectMeta{Namespace: c.ns, Name: "chat"}}
	if err := env.Client.Patch(context.Background(), m, client.RawPatch(types.MergePatchType, patch)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the runtime allows "+origins[0], func() error {
		req, err := http.NewRequest(http.MethodOptions, c.runtimeURL+"/v1/models", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Origin", "http://"+origins[0])
		req.Header.Set("Access-Control-Request-Method", "GET")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			return fmt.Errorf("preflight answered %d", resp.StatusCode)
		}
		return nil
	})
}

// openPage opens the page at origin in headless chromium and returns its report. The key
// travels in the URL's fragment, which the browser never sends to a server.
func openPage(t *testing.T, origin, runtimeURL, key string, reports <-chan []byte) pageReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q := url.Values{"runtime": {runtimeURL}, "key": {key}, "model": {testengine.DefaultModel}}
	exited := clients.OpenPage(ctx, t, origin+"/#"+q.Encode())
	select {
	case <-exited:
		t.Fatalf("chromium ended before the page at %s reported (its output is in the log)", origin)
		return pageReport{}
	case body := <-reports:
		var r pageReport
		if err := json.Unmarshal(body, &r); err != nil {
			t.Fatalf("page reported %s: %v", body, err)
		}
		t.Logf("page at %s reported %s", origin, body)
		return r
	case <-ctx.Done():
		t.Fatalf("the page at %s reported nothing within a minute", origin)
		return pageReport{}
	}
}
