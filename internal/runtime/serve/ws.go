package serve

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/apierror"
	"github.com/helixflow/helixflow/internal/auth"
)

// RouteStream is the WebSocket endpoint for browsers.
const RouteStream = "/v1/stream"

// WebSocket protocol constants; docs/streaming.md describes the protocol.
const (
	// WebSocketSubprotocol is the subprotocol the server selects. A browser, which cannot set
	// an Authorization header on a WebSocket, offers it together with "bearer.<credential>".
	WebSocketSubprotocol = "helixflow.v1"
	// bearerSubprotocolPrefix marks the subprotocol that carries the credential. The server
	// never selects (echoes) it.
	bearerSubprotocolPrefix = "bearer."
	// StreamDoneObject is the "object" of the message that ends every successful request.
	StreamDoneObject = "helixflow.stream.done"
)

// WebSocket defaults (WebSocketOptions' zero values).
const (
	DefaultWebSocketPingInterval = 30 * time.Second
	DefaultWebSocketIdleTimeout  = 5 * time.Minute
	// wsMaxQueued is how many requests may wait behind the one being answered; one more
	// closes the connection with 1008.
	wsMaxQueued = 8
	// wsWriteTimeout bounds writing one error or done message to a client that stopped reading.
	wsWriteTimeout = 30 * time.Second
	// wsAbortGrace is how long shutdown waits for connections it cut off at its deadline.
	wsAbortGrace = 2 * time.Second
)

// WebSocketOptions tune the WebSocket front (GET /v1/stream); zero values take the defaults.
type WebSocketOptions struct {
	// OriginPatterns are the browser origins allowed, on the WebSocket and to call the HTTP
	// API (CORS), besides the runtime's own host (and
	// besides the InferenceModel's spec.auth.allowedOrigins, which are added), as host
	// patterns matched with path.Match ("app.example.com", "*.example.com"), or with a scheme
	// ("https://app.example.com") to match scheme and host. Empty allows same-origin pages
	// only. Requests without an Origin header (non-browser clients) are always allowed: they
	// carry their credential explicitly, which is what Origin checks protect.
	OriginPatterns []string
	// PingInterval is how often the server pings a connection; a connection whose pong does
	// not come back within one interval is dropped (and its engine call cancelled).
	// Zero means DefaultWebSocketPingInterval.
	PingInterval time.Duration
	// IdleTimeout closes a connection (1000, "idle timeout") that has had no request for
	// this long. Zero means DefaultWebSocketIdleTimeout.
	IdleTimeout time.Duration
}

func (o WebSocketOptions) pingInterval() time.Duration {
	if o.PingInterval > 0 {
		return o.PingInterval
	}
	return DefaultWebSocketPingInterval
}

func (o WebSocketOptions) idleTimeout() time.Duration {
	if o.IdleTimeout > 0 {
		return o.IdleTimeout
	}
	return DefaultWebSocketIdleTimeout
}

var errShuttingDown = &Failure{Status: http.StatusServiceUnavailable, Type: apierror.TypeServer, Code: "shutting_down",
	Message: "the runtime is shutting down; reconnect to another replica", Reason: "shutting_down"}

// serveWebSocket is GET /v1/stream: authenticate, upgrade, then answer one JSON request per
// text message with the stream's chunks and a done message (see docs/streaming.md).
func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	header, fail := wsAuthorization(r)
	if fail == nil {
		var p *auth.Principal
		// A key that may not run inference could do nothing on the connection: refuse it now.
		if p, fail = s.Authenticate(header); fail == nil && !p.HasScope(servingv1alpha1.ScopeInference) {
			fail = fromAuth(auth.ErrScopeMissing(servingv1alpha1.ScopeInference))
		}
	}
	if fail == nil && s.draining.Load() {
		fail = errShuttingDown
	}
	if fail != nil {
		// Refused before the upgrade, as a normal HTTP answer: browsers and SDKs see the status.
		s.countRejection(fail, fail.KeyID)
		fail.writeHTTP(w)
		return
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols:   []string{WebSocketSubprotocol},
		OriginPatterns: s.originPatterns(),
	})
	if err != nil {
		return // Accept answered: 403 for a foreign Origin, 426/400 for a bad handshake
	}
	c.SetReadLimit(s.opts.MaxBodyBytes)
	ctx, cancel := context.WithCancel(context.Background())
	wc := &wsConn{
		s: s, c: c, header: header, ctx: ctx, cancel: cancel,
		queue: make(chan []byte, wsMaxQueued), away: make(chan struct{}), readerDone: make(chan struct{}),
	}
	if !s.ws.add(wc) {
		cancel()
		_ = c.Close(websocket.StatusGoingAway, "server shutting down")
		return
	}
	defer s.ws.remove(wc)
	wc.serve()
}

// wsAuthorization finds the credential of a handshake: the Authorization header, else a
// "bearer.<credential>" subprotocol, which must come with WebSocketSubprotocol (the one the
// server selects: a browser fails a handshake whose answer selects none of its offers). The
// query string is never read: URLs end up in access logs.
func wsAuthorization(r *http.Request) (string, *Failure) {
	var cred string
	offered := false
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for t := range strings.SplitSeq(v, ",") {
			t = strings.TrimSpace(t)
			switch {
			case strings.EqualFold(t, WebSocketSubprotocol):
				offered = true
			case len(t) > len(bearerSubprotocolPrefix) && strings.EqualFold(t[:len(bearerSubprotocolPrefix)], bearerSubprotocolPrefix):
				cred = t[len(bearerSubprotocolPrefix):]
			}
		}
	}
	if h := r.Header.Get("Authorization"); h != "" {
		return h, nil
	}
	if cred == "" {
		return "", nil // Authenticate refuses it: 401 missing credentials
	}
	if !offered {
		return "", badRequest("missing_subprotocol", "offer the %q subprotocol together with bearer.<credential>", WebSocketSubprotocol)
	}
	return "Bearer " + cred, nil
}

// wsHub tracks the open WebSocket connections: http.Server.Shutdown neither closes nor
// waits for hijacked connections, so shutdown drains them here.
type wsHub struct {
	mu      sync.Mutex
	conns   map[*wsConn]struct{}
	closing bool
	wg      sync.WaitGroup
}

func (h *wsHub) add(c *wsConn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return false
	}
	if h.conns == nil {
		h.conns = map[*wsConn]struct{}{}
	}
	h.conns[c] = struct{}{}
	h.wg.Add(1)
	return true
}

func (h *wsHub) remove(c *wsConn) {
	h.mu.Lock()
	delete(h.conns, c)
	h.mu.Unlock()
	h.wg.Done()
}

func (h *wsHub) snapshot() []*wsConn {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*wsConn, 0, len(h.conns))
	for c := range h.conns {
		out = append(out, c)
	}
	return out
}

// drain closes every connection with 1001 (going away): idle ones at once, busy ones when
// their current request is answered (queued requests are dropped). Connections still busy
// when ctx ends have their engine call cancelled and are closed.
func (h *wsHub) drain(ctx context.Context) {
	h.mu.Lock()
	h.closing = true
	h.mu.Unlock()
	for _, c := range h.snapshot() {
		c.goAway()
	}
	done := make(chan struct{})
	go func() { h.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	for _, c := range h.snapshot() {
		c.abort()
	}
	t := time.NewTimer(wsAbortGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// wsConn is one WebSocket connection. A reader goroutine queues the client's messages (and
// answers pings and close frames); the handler goroutine answers them one at a time, in
// order; a third goroutine pings.
type wsConn struct {
	s *Server
	c *websocket.Conn
	// header is the handshake's credential, checked again before every request so that a
	// revoked key or an expired token stops working on open connections too.
	header string
	// ctx is cancelled when the client goes away or shutdown gives up waiting: it cancels
	// the engine call in progress.
	ctx    context.Context
	cancel context.CancelFunc
	queue  chan []byte

	away       chan struct{}
	awayOnce   sync.Once
	aborted    atomic.Bool
	readerDone chan struct{}

	mu          sync.Mutex
	closeCode   websocket.StatusCode
	closeReason string
}

func (wc *wsConn) goAway() { wc.awayOnce.Do(func() { close(wc.away) }) }

func (wc *wsConn) abort() {
	wc.aborted.Store(true)
	wc.cancel()
}

// closeWith ends the connection with code from another goroutine than the handler's.
func (wc *wsConn) closeWith(code websocket.StatusCode, reason string) {
	wc.mu.Lock()
	if wc.closeCode == 0 {
		wc.closeCode, wc.closeReason = code, reason
	}
	wc.mu.Unlock()
	wc.cancel()
}

func (wc *wsConn) serve() {
	pingCtx, stopPing := context.WithCancel(context.Background())
	go wc.read()
	go wc.ping(pingCtx, wc.s.opts.WebSocket.pingInterval())
	code, reason := wc.loop(wc.s.opts.WebSocket.idleTimeout())
	wc.cancel()
	if code == 0 {
		_ = wc.c.CloseNow()
	} else {
		_ = wc.c.Close(code, reason)
	}
	stopPing()
	<-wc.readerDone
}

// read queues the client's text messages until the connection ends.
func (wc *wsConn) read() {
	defer close(wc.readerDone)
	for {
		// Never a cancellable context here: cancelling a read makes the library drop the
		// TCP connection without a close frame. The handler's Close ends this read.
		typ, data, err := wc.c.Read(context.Background())
		if err != nil {
			// The client closed or went away, or sent more than the read limit (the library
			// has already sent 1009): stop the engine call in progress.
			wc.cancel()
			return
		}
		if typ != websocket.MessageText {
			wc.closeWith(websocket.StatusUnsupportedData, "only text messages (JSON requests) are accepted")
			return
		}
		select {
		case wc.queue <- data:
		default:
			wc.closeWith(websocket.StatusPolicyViolation, "too many requests queued")
			return
		}
	}
}

// ping pings every interval; a pong missing for one interval drops the connection.
func (wc *wsConn) ping(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, interval)
		err := wc.c.Ping(pctx)
		cancel()
		if err != nil {
			wc.cancel()
			return
		}
	}
}

// loop answers queued requests until the connection should close, and says how (code 0:
// the connection is already gone).
func (wc *wsConn) loop(idleTimeout time.Duration) (websocket.StatusCode, string) {
	idle := time.NewTimer(idleTimeout)
	defer idle.Stop()
	for {
		select {
		case msg := <-wc.queue:
			select {
			case <-wc.away:
				return websocket.StatusGoingAway, "server shutting down"
			default:
			}
			if code, reason, quit := wc.handle(msg); quit {
				return code, reason
			}
			select {
			case <-wc.away:
				return websocket.StatusGoingAway, "server shutting down"
			default:
			}
			idle.Reset(idleTimeout)
		case <-wc.ctx.Done():
			return wc.endCode()
		case <-wc.away:
			return websocket.StatusGoingAway, "server shutting down"
		case <-idle.C:
			return websocket.StatusNormalClosure, "idle timeout"
		}
	}
}

// endCode is how to close once ctx is cancelled.
func (wc *wsConn) endCode() (websocket.StatusCode, string) {
	wc.mu.Lock()
	code, reason := wc.closeCode, wc.closeReason
	wc.mu.Unlock()
	switch {
	case code != 0:
		return code, reason
	case wc.aborted.Load():
		return websocket.StatusGoingAway, "server shutting down"
	}
	return 0, "" // the client went away
}

// handle answers one request: chunks then a done message, or an error message. quit asks
// to close the connection with code.
func (wc *wsConn) handle(msg []byte) (code websocket.StatusCode, reason string, quit bool) {
	s := wc.s
	defer func() {
		if v := recover(); v != nil {
			s.opts.Log.Error(fmt.Errorf("panic: %v", v), "WebSocket request failed")
			code, reason, quit = websocket.StatusInternalError, "internal error", true
		}
	}()
	p, fail := s.Authenticate(wc.header)
	if fail != nil {
		s.countRejection(fail, fail.KeyID)
		wc.sendError(fail)
		if fail.Status == http.StatusUnauthorized {
			return websocket.StatusPolicyViolation, "credential no longer valid", true
		}
		return 0, "", false
	}
	call, fail := wsCall(msg)
	if fail != nil {
		s.countRejection(fail, p.KeyID)
		wc.sendError(fail)
		return 0, "", false
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(wc.ctx, s.opts.RequestTimeout)
	defer cancel()
	sink := &wsSink{c: wc.c, ctx: ctx}
	out, fail := s.Exchange(ctx, p, call, sink)
	switch {
	case wc.ctx.Err() != nil || sink.err != nil:
		// The client left, the connection broke, or shutdown cut it: nobody to answer.
	case fail != nil:
		wc.sendError(fail)
	case sink.status != 0 && sink.status != http.StatusOK:
		wc.sendError(engineFailure(sink.status, sink.body))
	case sink.status == 0 && !sink.ended:
		wc.sendError(s.brokenStream(start))
	default:
		u := out.Usage
		if u.TotalTokens == 0 {
			u.TotalTokens = u.PromptTokens + u.CompletionTokens
		}
		wc.send(wsDone{Object: StreamDoneObject, Usage: u})
	}
	return 0, "", false
}

// wsCall reads a client message: an OpenAI chat completions body, or {"route", "request"}
// for another route; streaming is forced on.
func wsCall(msg []byte) (Call, *Failure) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(msg, &fields); err != nil || fields == nil {
		return Call{}, badRequest("invalid_json", "the message is not a JSON object: %v", errOrNull(err))
	}
	route := RouteChatCompletions
	if raw, ok := fields["request"]; ok {
		var r string
		if rr, ok := fields["route"]; ok {
			if err := json.Unmarshal(rr, &r); err != nil {
				return Call{}, badRequest("invalid_route", "\"route\" must be a string")
			}
		}
		switch r {
		case "", RouteChatCompletions:
		case RouteCompletions:
			route = RouteCompletions
		default:
			return Call{}, badRequest("invalid_route", "route %.64q cannot stream: use %s or %s", r, RouteChatCompletions, RouteCompletions)
		}
		fields = nil
		if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
			return Call{}, badRequest("invalid_json", "\"request\" is not a JSON object: %v", errOrNull(err))
		}
	}
	fields["stream"] = json.RawMessage("true")
	body, err := json.Marshal(fields)
	if err != nil {
		return Call{}, badRequest("invalid_json", "the request is not valid JSON: %v", err)
	}
	return Call{Route: route, Body: body}, nil
}

func errOrNull(err error) string {
	if err != nil {
		return err.Error()
	}
	return "null"
}

// wsSink writes the engine's chunks to the connection, one text message each, as they come.
type wsSink struct {
	c     *websocket.Conn
	ctx   context.Context
	ended bool
	// status and body are a whole answer (Complete): an engine error, or an engine that did
	// not stream.
	status int
	body   []byte
	err    error
}

func (k *wsSink) Chunk(data []byte) error {
	if err := k.c.Write(k.ctx, websocket.MessageText, data); err != nil {
		k.err = err
		return err
	}
	return nil
}

func (k *wsSink) End() error {
	k.ended = true
	return nil
}

func (k *wsSink) Complete(status int, _ string, body []byte) error {
	k.status = status
	if status != http.StatusOK {
		k.body = body
		return nil
	}
	// An engine that ignored "stream": its whole answer is the one message before done.
	return k.Chunk(body)
}

// wsDone ends a successful request.
type wsDone struct {
	Object string `json:"object"`
	Usage  Usage  `json:"usage"`
}

// wsError is an error message: the OpenAI error object, plus the HTTP status the same
// refusal has on the HTTP API and, for 429, the seconds to wait.
type wsError struct {
	Error wsErrorDetail `json:"error"`
}

type wsErrorDetail struct {
	Message    string  `json:"message"`
	Type       string  `json:"type"`
	Param      *string `json:"param"`
	Code       string  `json:"code"`
	Status     int     `json:"status"`
	RetryAfter int     `json:"retry_after,omitempty"`
}

func (wc *wsConn) sendError(f *Failure) {
	wc.send(wsError{Error: wsErrorDetail{
		Message: f.Message, Type: f.Type, Code: f.Code, Status: f.Status, RetryAfter: retryAfterSeconds(f.RetryAfter),
	}})
}

func (wc *wsConn) send(v any) {
	data, err := json.Marshal(v)
	if err != nil {
		wc.s.opts.Log.Error(err, "encoding a WebSocket message")
		return
	}
	ctx, cancel := context.WithTimeout(wc.ctx, wsWriteTimeout)
	defer cancel()
	// A failed write closes the connection; the reader then sees it and the loop ends.
	_ = wc.c.Write(ctx, websocket.MessageText, data)
}

// retryAfterSeconds rounds up to whole seconds: a client that waits that long gets through.
func retryAfterSeconds(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return int((d + time.Second - 1) / time.Second)
}

// brokenStream is the failure of a stream the engine did not finish: cut by the request
// timeout (504) or broken off (502).
func (s *Server) brokenStream(start time.Time) *Failure {
	if time.Since(start) >= s.opts.RequestTimeout {
		return upstreamFailure(http.StatusGatewayTimeout, "the engine did not finish within %s", s.opts.RequestTimeout)
	}
	return upstreamFailure(http.StatusBadGateway, "the engine stream ended before the generation completed")
}

// maxEngineMessage caps an engine error message passed on to a client.
const maxEngineMessage = 1024

// engineFailure turns an engine's non-200 answer into a Failure with the engine's own
// message, type and code where its body has them (OpenAI {"error": {...}}, or
// {"error": "..."} as some engines send), for the fronts that cannot pass the body through.
func engineFailure(status int, body []byte) *Failure {
	f := &Failure{Status: status, Type: apierror.TypeServer, Code: "upstream_error", Reason: "upstream"}
	if status < 500 {
		f.Type = apierror.TypeInvalidRequest
	}
	var v struct {
		Error   json.RawMessage `json:"error"`
		Message string          `json:"message"`
		Detail  json.RawMessage `json:"detail"` // FastAPI's (vLLM's routes): a string, or validation errors
	}
	if json.Unmarshal(body, &v) == nil {
		var d struct {
			Message string          `json:"message"`
			Type    string          `json:"type"`
			Code    json.RawMessage `json:"code"`
		}
		var msg string
		switch {
		case json.Unmarshal(v.Error, &d) == nil && d.Message != "":
			f.Message = d.Message
			if d.Type != "" {
				f.Type = d.Type
			}
			if c := jsonScalar(d.Code); c != "" {
				f.Code = c
			}
		case json.Unmarshal(v.Error, &msg) == nil && msg != "":
			f.Message = msg
		case v.Message != "":
			f.Message = v.Message
		case json.Unmarshal(v.Detail, &msg) == nil && msg != "":
			f.Message = msg
		case len(v.Detail) > 0 && v.Detail[0] == '[':
			f.Message = string(v.Detail) // the validation errors as the engine listed them
		}
	}
	if text := bytes.TrimSpace(body); f.Message == "" && len(text) > 0 && text[0] != '{' && utf8.Valid(text) {
		f.Message = string(text) // a plain-text error ("CUDA out of memory")
	}
	if f.Message == "" {
		f.Message = fmt.Sprintf("the engine answered %d %s", status, http.StatusText(status))
	}
	if len(f.Message) > maxEngineMessage {
		f.Message = f.Message[:maxEngineMessage] + "..."
	}
	return f
}

// jsonScalar is a JSON string's value or a number's text ("" otherwise): engines send
// error codes as either.
func jsonScalar(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String()
	}
	return ""
}

// retryAfterHeader is Retry-After's value for d.
func retryAfterHeader(d time.Duration) string { return strconv.Itoa(retryAfterSeconds(d)) }
