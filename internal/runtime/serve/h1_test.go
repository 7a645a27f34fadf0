package serve

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/helixflow/helixflow/internal/apierror"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/test/testengine"
)

// These tests talk raw HTTP/1.1 to the runtime's HTTP front, to see which requests the fast
// path answers itself and that everything it hands to net/http comes out as net/http would
// answer it, on the same connection.

const h1Chat = `{"model":"` + testengine.DefaultModel + `","messages":[{"role":"user","content":"hi"}],"max_tokens":4}`

func h1Post(route, key, body string, extra ...string) string {
	head := "POST " + route + " HTTP/1.1\r\nHost: runtime\r\nContent-Type: application/json\r\n"
	if key != "" {
		head += "Authorization: Bearer " + key + "\r\n"
	}
	for _, h := range extra {
		head += h + "\r\n"
	}
	return head + fmt.Sprintf("Content-Length: %d\r\n\r\n", len(body)) + body
}

type h1Client struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialH1(t *testing.T, r *rig) *h1Client {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(r.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &h1Client{t: t, c: c, br: bufio.NewReader(c)}
}

func (h *h1Client) send(raw ...string) {
	h.t.Helper()
	if _, err := io.WriteString(h.c, strings.Join(raw, "")); err != nil {
		h.t.Fatal(err)
	}
}

// read reads one response whole.
func (h *h1Client) read() (*http.Response, string) {
	h.t.Helper()
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp, string(body)
}

// expectOK reads one response, which must be a 200 whose body has bodyHas.
func (h *h1Client) expectOK(bodyHas string) *http.Response {
	h.t.Helper()
	resp, body := h.read()
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, bodyHas) {
		h.t.Fatalf("got %d %q, want 200 with %q", resp.StatusCode, body, bodyHas)
	}
	return resp
}

func TestH1FastPathKeepAliveAndPipelining(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	key := r.addKey("k", nil)
	c := dialH1(t, r)
	// Two requests in one write, then a third: answered in order on one connection.
	c.send(h1Post(RouteChatCompletions, key, h1Chat), h1Post(RouteChatCompletions, key, h1Chat))
	for range 2 {
		resp := c.expectOK(`"usage"`)
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		if resp.Header.Get("Date") == "" || resp.ContentLength <= 0 {
			t.Errorf("head %v: want Date and Content-Length", resp.Header)
		}
	}
	c.send(h1Post(RouteChatCompletions, key, h1Chat))
	c.expectOK(`"usage"`)
	if got := r.s.h1.served.Load(); got != 3 {
		t.Errorf("fast path served %d calls, want 3", got)
	}
	if got := r.usage.total(testNS + "/k"); got == 0 {
		t.Error("no usage recorded for calls answered by the fast path")
	}
}

func TestH1HandsOffTheRestOnTheSameConnection(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	key := r.addKey("k", nil)
	c := dialH1(t, r)
	c.send(h1Post(RouteChatCompletions, key, h1Chat))
	c.expectOK(`"usage"`)
	// A stream goes to net/http (it notices a client leaving), and the connection with it.
	stream := strings.Replace(h1Chat, `"max_tokens":4`, `"max_tokens":4,"stream":true`, 1)
	c.send(h1Post(RouteChatCompletions, key, stream))
	resp := c.expectOK("data: [DONE]")
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("stream Content-Type %q", ct)
	}
	c.send(h1Post(RouteChatCompletions, key, h1Chat))
	c.expectOK(`"usage"`)
	c.send("GET /v1/models HTTP/1.1\r\nHost: runtime\r\nAuthorization: Bearer " + key + "\r\n\r\n")
	c.expectOK(testengine.DefaultModel)
	if got := r.s.h1.served.Load(); got != 1 {
		t.Errorf("fast path served %d calls, want only the first (then net/http has the connection)", got)
	}
}

func TestH1AnswersAsNetHTTPWould(t *testing.T) {
	r := newRig(t, testengine.Config{}, func(o *Options) { o.MaxBodyBytes, o.MaxHeaderBytes = 2048, 16<<10 })
	key := r.addKey("k", nil)
	big := strings.Replace(h1Chat, `"hi"`, `"`+strings.Repeat("x", 4096)+`"`, 1)
	for _, tc := range []struct {
		name    string
		raw     string
		status  int
		bodyHas string
	}{
		{"fast path", h1Post(RouteChatCompletions, key, h1Chat), 200, `"usage"`},
		{"embeddings", h1Post(RouteEmbeddings, key, `{"model":"`+testengine.DefaultModel+`","input":"hi"}`), 200, `"embedding"`},
		{"no key", h1Post(RouteChatCompletions, "", h1Chat), 401, `"error"`},
		{"wrong key", h1Post(RouteChatCompletions, "hf-nope", h1Chat), 401, `"error"`},
		{"unknown model", h1Post(RouteChatCompletions, key, strings.Replace(h1Chat, testengine.DefaultModel, "other", 1)), 404, `"model_not_found"`},
		{"malformed JSON", h1Post(RouteChatCompletions, key, `{"model":`), 400, `"invalid_json"`},
		{"body over the cap", h1Post(RouteChatCompletions, key, big), 413, `"error"`},
		// A header line longer than the connection's read buffer, within the cap.
		{"long header line", h1Post(RouteChatCompletions, key, h1Chat, "X-Long: "+strings.Repeat("y", 6000)), 200, `"usage"`},
		{"unknown route", h1Post("/v1/nope", key, h1Chat), 404, `"unknown_route"`},
		// What net/http refuses, the fast path leaves to it.
		{"no Host", strings.Replace(h1Post(RouteChatCompletions, key, h1Chat), "Host: runtime\r\n", "", 1), 400, "Host"},
		{"two Host headers", h1Post(RouteChatCompletions, key, h1Chat, "Host: other"), 400, ""},
		{"signed Content-Length", strings.Replace(h1Post(RouteChatCompletions, key, h1Chat), "Content-Length: ", "Content-Length: +", 1), 400, ""},
		{"header name not a token", h1Post(RouteChatCompletions, key, h1Chat, "X Bad: y"), 400, ""},
		{"control character in a value", h1Post(RouteChatCompletions, key, h1Chat, "X-Bad: a\x01b"), 400, ""},
		{"query string", h1Post(RouteChatCompletions+"?x=1", key, h1Chat), 200, `"usage"`},
		{"chunked body", "POST " + RouteChatCompletions + " HTTP/1.1\r\nHost: runtime\r\nAuthorization: Bearer " + key +
			"\r\nTransfer-Encoding: chunked\r\n\r\n" + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(h1Chat), h1Chat), 200, `"usage"`},
		{"lower-case header names", strings.Replace(strings.Replace(h1Post(RouteChatCompletions, key, h1Chat),
			"Authorization", "authorization", 1), "Content-Length", "content-length", 1), 200, `"usage"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialH1(t, r)
			c.send(tc.raw)
			resp, body := c.read()
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.bodyHas) {
				t.Fatalf("got %d %q, want %d with %q", resp.StatusCode, body, tc.status, tc.bodyHas)
			}
			if tc.status >= 401 && resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("error Content-Type %q", resp.Header.Get("Content-Type"))
			}
		})
	}
}

// A head over MaxHeaderBytes gets an OpenAI-shaped 431 and the connection closes, whether the
// fast path reads it or net/http does (on a connection it serves since an earlier request).
func TestHeaderOverTheCap(t *testing.T) {
	r := newRig(t, testengine.Config{}, func(o *Options) {
		o.MaxHeaderBytes = 4096
		o.WebSocket.OriginPatterns = []string{"app.example.com"}
	})
	key := r.addKey("k", nil)
	const page, otherPage = "Origin: https://app.example.com", "Origin: https://elsewhere.test"
	// check reads the 431 and returns its header.
	check := func(t *testing.T, c *h1Client) http.Header {
		t.Helper()
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		defer resp.Body.Close()
		var body apierror.Body
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatalf("answer is not an OpenAI error: %v", err)
		}
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || body.Error.Code != auth.CodeHeaderTooLarge || !resp.Close {
			t.Errorf("status %d, code %q, close %v; want 431, %s, closed", resp.StatusCode, body.Error.Code, resp.Close, auth.CodeHeaderTooLarge)
		}
		if _, err := c.br.ReadByte(); !errors.Is(err, io.EOF) {
			t.Errorf("connection still open after the 431 (read: %v)", err)
		}
		return resp.Header
	}
	// readable says a page of origin may read the answer (CORS), and that it says it varies.
	readable := func(h http.Header, origin string) bool {
		return h.Get("Access-Control-Allow-Origin") == origin && slices.Contains(h.Values("Vary"), "Origin")
	}
	t.Run("fast path", func(t *testing.T) {
		c := dialH1(t, r)
		c.send(h1Post(RouteChatCompletions, key, h1Chat, "X-Big: "+strings.Repeat("y", 64<<10)))
		if h := check(t, c); h.Get("Access-Control-Allow-Origin") != "" || h.Get("Vary") != "" {
			t.Errorf("a 431 to a request without an Origin has CORS headers: %v", h)
		}
		if got := r.s.h1.served.Load(); got != 0 {
			t.Errorf("fast path served %d calls, want 0", got)
		}
	})
	// Refused before it is parsed, the 431 still lets a page of an allowed origin read it
	// (its SDK sees a 431, not a network error); a page of another origin, not.
	t.Run("fast path, a page of an allowed origin", func(t *testing.T) {
		c := dialH1(t, r)
		c.send(h1Post(RouteChatCompletions, key, h1Chat, page, "X-Big: "+strings.Repeat("y", 64<<10)))
		if h := check(t, c); !readable(h, "https://app.example.com") {
			t.Errorf("the 431 is not readable by the page: %v", h)
		}
	})
	t.Run("fast path, a page of another origin", func(t *testing.T) {
		c := dialH1(t, r)
		c.send(h1Post(RouteChatCompletions, key, h1Chat, otherPage, "X-Big: "+strings.Repeat("y", 64<<10)))
		if h := check(t, c); h.Get("Access-Control-Allow-Origin") != "" || !slices.Contains(h.Values("Vary"), "Origin") {
			t.Errorf("the 431 to another origin's page: %v, want Vary: Origin and no Access-Control-Allow-Origin", h)
		}
	})
	t.Run("fast path, a request line over the cap", func(t *testing.T) {
		c := dialH1(t, r)
		c.send("POST " + RouteChatCompletions + "?x=" + strings.Repeat("y", 64<<10) + " HTTP/1.1\r\nHost: runtime\r\n\r\n")
		check(t, c)
	})
	t.Run("fast path, an Origin beyond the cap", func(t *testing.T) {
		c := dialH1(t, r)
		c.send(h1Post(RouteChatCompletions, key, h1Chat, "X-Big: "+strings.Repeat("y", 64<<10), page))
		if h := check(t, c); h.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("the 431 names an Origin it never read: %v", h)
		}
	})
	t.Run("net/http", func(t *testing.T) {
		c := dialH1(t, r)
		c.send("GET /v1/models HTTP/1.1\r\nHost: runtime\r\nAuthorization: Bearer " + key + "\r\n\r\n")
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /v1/models: %v %v", resp, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		c.send(h1Post(RouteChatCompletions, key, h1Chat, page, "X-Big: "+strings.Repeat("y", 5000)))
		if h := check(t, c); !readable(h, "https://app.example.com") {
			t.Errorf("the 431 is not readable by the page: %v", h)
		}
	})
}

func TestH1ConnectionClose(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	key := r.addKey("k", nil)
	c := dialH1(t, r)
	c.send(h1Post(RouteChatCompletions, key, h1Chat, "Connection: close"))
	resp := c.expectOK(`"usage"`)
	if !resp.Close {
		t.Errorf("response to Connection: close does not close: %v", resp.Header)
	}
	if _, err := c.br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("connection still open after Connection: close (read: %v)", err)
	}
}

func TestH1ShutdownFinishesInFlightAndClosesIdle(t *testing.T) {
	r := newRig(t, testengine.Config{FirstTokenDelay: 300 * time.Millisecond}, nil)
	key := r.addKey("k", nil)
	idle := dialH1(t, r)
	idle.send(h1Post(RouteChatCompletions, key, h1Chat))
	idle.expectOK(`"usage"`)

	busy := dialH1(t, r)
	busy.send(h1Post(RouteChatCompletions, key, h1Chat))
	time.Sleep(100 * time.Millisecond) // the call is at the engine
	stopped := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r.s.h1.stop(ctx)
		close(stopped)
	}()
	resp := busy.expectOK(`"usage"`)
	if !resp.Close {
		t.Errorf("answer during shutdown does not say Connection: close: %v", resp.Header)
	}
	if _, err := idle.br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection not closed by shutdown (read: %v)", err)
	}
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not finish")
	}
	if _, err := net.Dial("tcp", strings.TrimPrefix(r.url, "http://")); err == nil {
		t.Error("new connections still accepted after shutdown")
	}
}

// A client that closes its connection during a long non-streamed call cancels the engine's
// work, as net/http's handler does.
func TestH1ClientLeavingCancelsTheEngine(t *testing.T) {
	r := newRig(t, testengine.Config{FirstTokenDelay: 5 * time.Second}, nil)
	key := r.addKey("k", nil)
	c := dialH1(t, r)
	c.send(h1Post(RouteChatCompletions, key, h1Chat))
	time.Sleep(100 * time.Millisecond)
	_ = c.c.Close()
	deadline := time.Now().Add(3 * time.Second)
	for r.engine.Stats().CancelledRequests == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("engine request not cancelled 3 s after the client left: %+v", r.engine.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A call that outlasts the watch start still answers, and the connection serves the next.
func TestH1LongCallKeepsTheConnection(t *testing.T) {
	r := newRig(t, testengine.Config{FirstTokenDelay: 700 * time.Millisecond}, nil)
	key := r.addKey("k", nil)
	c := dialH1(t, r)
	c.send(h1Post(RouteChatCompletions, key, h1Chat))
	c.expectOK(`"usage"`)
	c.send(h1Post(RouteChatCompletions, key, h1Chat), h1Post(RouteChatCompletions, key, h1Chat))
	c.expectOK(`"usage"`)
	c.expectOK(`"usage"`)
	if got := r.s.h1.served.Load(); got != 3 {
		t.Errorf("fast path served %d calls, want 3", got)
	}
}

// A refused caller's body is not read: the 401 comes back although the 4 MiB body it
// announced never arrives.
func TestH1RefusedBeforeTheBody(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	c := dialH1(t, r)
	_ = c.c.SetDeadline(time.Now().Add(3 * time.Second))
	c.send("POST " + RouteChatCompletions + " HTTP/1.1\r\nHost: runtime\r\nAuthorization: Bearer hf-nope\r\nContent-Length: 4194304\r\n\r\n{")
	resp, body := c.read()
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, `"error"`) {
		t.Fatalf("got %d %q, want 401", resp.StatusCode, body)
	}
	if got := r.s.h1.served.Load(); got != 0 {
		t.Errorf("fast path served %d calls, want 0", got)
	}
}

// A request that arrives while the previous call is still at the engine is in the socket
// before the runtime waits for it (the wait that sends an answer does not see it): it is
// served all the same, without waiting for the idle timeout.
func TestH1RequestArrivingDuringACall(t *testing.T) {
	r := newRig(t, testengine.Config{FirstTokenDelay: 300 * time.Millisecond}, nil)
	key := r.addKey("k", nil)
	c := dialH1(t, r)
	_ = c.c.SetDeadline(time.Now().Add(5 * time.Second)) // far below the 120 s idle timeout
	c.send(h1Post(RouteChatCompletions, key, h1Chat))
	deadline := time.Now().Add(3 * time.Second)
	for r.engine.Stats().Requests < 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	c.send(h1Post(RouteChatCompletions, key, h1Chat)) // the first call is at the engine now
	c.expectOK(`"usage"`)
	c.expectOK(`"usage"`)
	if got := r.s.h1.served.Load(); got != 2 {
		t.Errorf("fast path served %d calls, want 2", got)
	}
}

// readHead reads one answer's head, line by line, as sent.
func (h *h1Client) readHead() []string {
	h.t.Helper()
	var lines []string
	for {
		line, err := h.br.ReadString('\n')
		if err != nil {
			h.t.Fatalf("reading a head: %v (so far %q)", err, lines)
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			return lines
		}
		lines = append(lines, line)
	}
}

func TestH1NoContentAnswersHaveNoLength(t *testing.T) {
	ok := `{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}`
	engine := newRawEngine(t,
		"HTTP/1.1 204 No Content\r\nContent-Type: application/json\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\n\r\n",
		fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(ok), ok))
	r := newRig(t, testengine.Config{}, func(o *Options) { o.Upstream = engine.url })
	key := r.addKey("k", nil)
	c := dialH1(t, r)
	c.send(h1Post(RouteChatCompletions, key, h1Chat), h1Post(RouteChatCompletions, key, h1Chat), h1Post(RouteChatCompletions, key, h1Chat))
	for _, status := range []string{"204 No Content", "304 Not Modified"} {
		head := c.readHead()
		if head[0] != "HTTP/1.1 "+status {
			t.Fatalf("status line %q, want %q", head[0], status)
		}
		for _, line := range head {
			if strings.HasPrefix(strings.ToLower(line), "content-length:") {
				t.Errorf("%s answered with %q: a %s has no Content-Length", status, line, status)
			}
		}
	}
	// Nothing followed either head: the next answer starts right after it.
	c.expectOK(`"usage"`)
	if got := r.s.h1.served.Load(); got != 3 {
		t.Errorf("fast path served %d calls, want 3", got)
	}
}

// TestSlowBodiesAreCut: a client that stalls in its body does not hold the connection past
// --body-timeout: on the fast path, before a refusal (net/http reads a small unread body
// before it answers), and on net/http's path.
func TestSlowBodiesAreCut(t *testing.T) {
	r := newRig(t, testengine.Config{}, func(o *Options) { o.BodyTimeout = 300 * time.Millisecond })
	key := r.addKey("app", nil)
	head := func(credential, framing string) string {
		return "POST " + RouteChatCompletions + " HTTP/1.1\r\nHost: runtime\r\nAuthorization: Bearer " + credential + "\r\n" + framing + "\r\n"
	}
	stalled := func() *h1Client {
		c := dialH1(t, r)
		_ = c.c.SetDeadline(time.Now().Add(5 * time.Second)) // the test's bound, well past the server's
		return c
	}

	c := stalled()
	c.send(head(key, "Content-Length: 1000\r\n"), `{"model":`)
	if _, err := c.br.ReadByte(); err == nil || isTimeout(err) {
		t.Fatalf("fast path: read %v, want the connection closed", err)
	}

	c = stalled()
	c.send(head("hf-nope", "Content-Length: 1000\r\n"), `{"model":`)
	if resp, body := c.read(); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("refused caller: %d %q, want 401", resp.StatusCode, body)
	}

	c = stalled()
	c.send(head(key, "Transfer-Encoding: chunked\r\n"), "9\r\n{\"model\":\r\n")
	resp, body := c.read()
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(body, "request_timeout") {
		t.Fatalf("net/http path: %d %q, want 408 request_timeout", resp.StatusCode, body)
	}
	if n := r.engine.Stats().Requests; n != 0 {
		t.Fatalf("%d partial calls reached the engine", n)
	}
}
