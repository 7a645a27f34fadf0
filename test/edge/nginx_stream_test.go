package edge

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/helixflow/helixflow/internal/runtime/serve"
	"github.com/helixflow/helixflow/test/testengine"
)

const (
	// chunkInterval and streamTokens shape the engine's stream: a role chunk at once, then
	// streamTokens token chunks chunkInterval apart, then the finish chunk and [DONE] right
	// after the last token: about a second from the first flush to the last.
	chunkInterval = 100 * time.Millisecond
	streamTokens  = 10
)

var streamRequest = fmt.Sprintf(`{"model":%q,"max_tokens":%d,"stream":true,"messages":[{"role":"user","content":"tell me a story"}]}`,
	testengine.DefaultModel, streamTokens)

// observedStream is one streamed completion as the client and the engine saw it.
type observedStream struct {
	proto    string
	events   []string    // the SSE data payloads the client read, in order
	arrivals []time.Time // when the client read each
	flushes  []time.Time // when the engine flushed each
	engine   testengine.StreamRecord
}

// stream posts a streamed chat completion to https://modelHost/v1 through nginx and reads it
// event by event, noting when each arrives.
func (e *edge) stream(t *testing.T) observedStream {
	t.Helper()
	e.engine.Reset()
	req, err := http.NewRequest(http.MethodPost, e.baseURL+serve.RouteChatCompletions, strings.NewReader(streamRequest))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatalf("POST through nginx: %v%s", err, e.errorLog())
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST through nginx: %s: %s%s", resp.Status, b, e.errorLog())
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("Content-Type %q through nginx, want text/event-stream", ct)
	}
	o := observedStream{proto: resp.Proto}
	r := bufio.NewReader(resp.Body)
	for {
		line, err := r.ReadString('\n')
		now := time.Now()
		if data, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), "data: "); ok {
			o.events = append(o.events, data)
			o.arrivals = append(o.arrivals, now)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading the stream after %d events: %v%s", len(o.events), err, e.errorLog())
		}
	}
	// The engine records the stream when its handler returns, just after the last flush.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if s := e.engine.Streams(); len(s) == 1 {
			o.engine = s[0]
			break
		} else if len(s) > 1 || time.Now().After(deadline) {
			t.Fatalf("the engine recorded %d streams, want 1", len(s))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Role, tokens, finish and [DONE], and the usage chunk the runtime asks for to meter.
	if !o.engine.Done || len(o.engine.Chunks) < streamTokens+3 {
		t.Fatalf("engine stream: done %v, %d chunks, want done and at least %d", o.engine.Done, len(o.engine.Chunks), streamTokens+3)
	}
	if last := o.events[len(o.events)-1]; last != "[DONE]" {
		t.Fatalf("the stream ended with %q, want [DONE]", last)
	}
	// Pair each event with the engine chunk it forwards: the same payload, in order. Engine
	// chunks the client did not ask for (the usage the runtime requested) have no event.
	next := 0
	for i, ev := range o.events {
		for next < len(o.engine.Chunks) && string(o.engine.Chunks[next].Data) != ev {
			next++
		}
		if next == len(o.engine.Chunks) {
			t.Fatalf("event %d (%s) is not one the engine flushed (after the previous one)", i, ev)
		}
		o.flushes = append(o.flushes, o.engine.Chunks[next].FlushedAt)
		next++
	}
	if len(o.events) < streamTokens+3 {
		t.Fatalf("the client read %d events, want at least %d:\n%s", len(o.events), streamTokens+3, strings.Join(o.events, "\n"))
	}
	return o
}

// streamTiming sums up when the chunks arrived against when the engine flushed them.
type streamTiming struct {
	engineSpan time.Duration // engine: first flush to last flush
	clientSpan time.Duration // client: first arrival to last arrival
	firstDelay time.Duration // first chunk: client arrival - engine flush
	maxDelay   time.Duration
}

// timing logs each chunk's delay (client arrival - engine FlushedAt) and sums them up.
func (o observedStream) timing(t *testing.T) streamTiming {
	t.Helper()
	start := o.flushes[0]
	var st streamTiming
	var b strings.Builder
	fmt.Fprintf(&b, "%s through nginx; per chunk: engine flush, client arrival (from the engine's first flush), delay", o.proto)
	for i, flushed := range o.flushes {
		d := o.arrivals[i].Sub(flushed)
		st.maxDelay = max(st.maxDelay, d)
		fmt.Fprintf(&b, "\n  chunk %2d: flushed %6.1f ms, arrived %6.1f ms, delay %6.2f ms", i, ms(flushed.Sub(start)), ms(o.arrivals[i].Sub(start)), ms(d))
	}
	st.engineSpan = o.flushes[len(o.flushes)-1].Sub(start)
	st.clientSpan = o.arrivals[len(o.arrivals)-1].Sub(o.arrivals[0])
	st.firstDelay = o.arrivals[0].Sub(start)
	fmt.Fprintf(&b, "\n  engine span %.1f ms, client span %.1f ms (%.0f%%), first chunk delay %.2f ms, max delay %.2f ms",
		ms(st.engineSpan), ms(st.clientSpan), 100*float64(st.clientSpan)/float64(st.engineSpan), ms(st.firstDelay), ms(st.maxDelay))
	t.Log(b.String())
	if st.engineSpan < streamTokens*chunkInterval*8/10 {
		t.Fatalf("the engine streamed in %s, want about %s", st.engineSpan, streamTokens*chunkInterval)
	}
	return st
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// TestStreamThroughNginxArrivesChunkByChunk: a streamed chat completion through nginx
// configured as ingress-nginx renders the manager's Ingress (client → nginx over TLS →
// runtime → engine) reaches the client chunk by chunk as the engine flushes it, not all at
// the end. The variants show what does it: the annotations as written; the same with nginx
// told to disregard the runtime's "X-Accel-Buffering: no"; that again with nginx speaking
// HTTP/1.0 to the runtime (nginx's own default, where the answer is not chunked and nginx
// cannot tell where an event ends), so that proxy-buffering off alone carries the stream; and
// proxy buffering on (say, from the controller's ConfigMap) over HTTP/1.0 with the runtime's
// header honoured, which alone carries it too.
func TestStreamThroughNginxArrivesChunkByChunk(t *testing.T) {
	for _, tc := range []struct {
		name string
		ec   edgeConfig
	}{
		{"annotations", edgeConfig{Annotations: ingressAnnotations()}},
		{"annotations, X-Accel-Buffering ignored", edgeConfig{Annotations: ingressAnnotations(), IgnoreAccelBuffering: true}},
		{"annotations, X-Accel-Buffering ignored, HTTP/1.0 upstream", edgeConfig{
			Annotations: with(ingressAnnotations(), "proxy-http-version", "1.0"), IgnoreAccelBuffering: true}},
		{"proxy buffering on, X-Accel-Buffering honoured, HTTP/1.0 upstream", edgeConfig{
			Annotations: with(ingressAnnotations(), "proxy-buffering", "on", "proxy-http-version", "1.0")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEdge(t, testengine.Config{ChunkInterval: chunkInterval}, tc.ec)
			st := e.stream(t).timing(t)
			if st.clientSpan < st.engineSpan*7/10 {
				t.Errorf("the chunks reached the client within %s, the engine flushed them over %s: bunched, not streamed", st.clientSpan, st.engineSpan)
			}
			if st.firstDelay > st.engineSpan/2 {
				t.Errorf("the first chunk reached the client %s after the engine flushed it (the stream lasts %s)", st.firstDelay, st.engineSpan)
			}
			if st.maxDelay > st.engineSpan/2 {
				t.Errorf("a chunk reached the client %s after the engine flushed it (the stream lasts %s)", st.maxDelay, st.engineSpan)
			}
		})
	}
}

// TestStreamThroughNginxBufferedControl is the control that shows the test above can fail.
// It is that test's third variant with proxy buffering on (16k buffers, more than the whole
// stream): nginx disregards the runtime's "X-Accel-Buffering: no" and reads the runtime's
// answer over HTTP/1.0, so it holds the small stream until it ends and the client gets all
// the chunks at once. (With HTTP/1.1 to the runtime, nginx 1.22 passes each chunk of the
// chunked answer on as it parses it even with buffering on, so the control needs HTTP/1.0.)
func TestStreamThroughNginxBufferedControl(t *testing.T) {
	a := with(ingressAnnotations(),
		"proxy-buffering", "on",
		"proxy-buffer-size", "16k",
		"proxy-buffers-number", "8",
		"proxy-http-version", "1.0")
	e := startEdge(t, testengine.Config{ChunkInterval: chunkInterval}, edgeConfig{Annotations: a, IgnoreAccelBuffering: true})
	st := e.stream(t).timing(t)
	if st.clientSpan > st.engineSpan*3/10 {
		t.Errorf("buffered: the chunks reached the client over %s (engine: %s), want them bunched at the end", st.clientSpan, st.engineSpan)
	}
	if st.firstDelay < st.engineSpan*7/10 {
		t.Errorf("buffered: the first chunk reached the client %s after its flush (engine: %s), want it held to the end", st.firstDelay, st.engineSpan)
	}
}

// with returns a with the annotations named (without their prefix) set to the values that
// follow them: with(a, "proxy-buffering", "on").
func with(a map[string]string, nameValues ...string) map[string]string {
	for i := 0; i+1 < len(nameValues); i += 2 {
		a[annotationPrefix+nameValues[i]] = nameValues[i+1]
	}
	return a
}

// TestHTTPRedirectsToHTTPS: the HTTP listener answers with a permanent redirect to the same
// path on HTTPS (ssl-redirect), and a client that follows it (POST kept, as 308 says) gets
// its completion over TLS.
func TestHTTPRedirectsToHTTPS(t *testing.T) {
	e := startEdge(t, testengine.Config{}, edgeConfig{Annotations: ingressAnnotations()})
	const path = serve.RouteChatCompletions + "?trace=1"
	resp, err := e.client.Get(e.httpURL + path)
	if err != nil {
		t.Fatalf("GET over HTTP: %v%s", err, e.errorLog())
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusPermanentRedirect && resp.StatusCode != http.StatusMovedPermanently {
		t.Fatalf("HTTP answered %s, want 308 (or 301)", resp.Status)
	}
	if loc, want := resp.Header.Get("Location"), e.baseURL+path; loc != want {
		t.Fatalf("Location %q, want %q", loc, want)
	}
	t.Logf("http → %s, Location %s", resp.Status, resp.Header.Get("Location"))

	follow := *e.client
	follow.CheckRedirect = nil
	body := fmt.Sprintf(`{"model":%q,"max_tokens":3,"messages":[{"role":"user","content":"hi"}]}`, testengine.DefaultModel)
	resp, err = follow.Post(e.httpURL+serve.RouteChatCompletions, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST over HTTP, following the redirect: %v%s", err, e.errorLog())
	}
	b, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Scheme != "https" || !strings.Contains(string(b), `"chat.completion"`) {
		t.Fatalf("after the redirect: %s at %s: %s", resp.Status, resp.Request.URL, b)
	}
	if reqs := e.engine.Requests(); len(reqs) != 1 || string(reqs[0].Body) != body {
		t.Fatalf("the engine got %d requests, want the one POST with its body intact", len(reqs))
	}
}

// TestBodyCapThroughNginx: a request body just under the runtime's 8 MiB cap passes nginx
// (proxy-body-size 8m, request buffering off) to the engine; one above it is refused by
// nginx with 413 and never reaches the runtime.
func TestBodyCapThroughNginx(t *testing.T) {
	e := startEdge(t, testengine.Config{}, edgeConfig{Annotations: ingressAnnotations()})
	post := func(size int) (*http.Response, []byte) {
		t.Helper()
		head := fmt.Sprintf(`{"model":%q,"max_tokens":1,"messages":[{"role":"user","content":"`, testengine.DefaultModel)
		const tail = `"}]}`
		body := head + strings.Repeat("a ", (size-len(head)-len(tail))/2) + tail
		resp, err := e.client.Post(e.baseURL+serve.RouteChatCompletions, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatalf("POST of %d bytes: %v%s", len(body), err, e.errorLog())
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		return resp, b
	}
	if resp, b := post(8<<20 - 64<<10); resp.StatusCode != http.StatusOK {
		t.Fatalf("a body under the cap: %s: %.300s", resp.Status, b)
	}
	if n := len(e.engine.Requests()); n != 1 {
		t.Fatalf("the engine got %d requests, want 1", n)
	}
	if resp, b := post(8<<20 + 64<<10); resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(b), "nginx") {
		t.Fatalf("a body over the cap: %s, want nginx's 413: %.300s", resp.Status, b)
	}
	if n := len(e.engine.Requests()); n != 1 {
		t.Fatalf("the engine got %d requests, want only the first", n)
	}
}
