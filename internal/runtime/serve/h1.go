package serve

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/helixflow/helixflow/internal/auth"
)

// The HTTP front in two parts. net/http costs the runtime more per request than the rest of
// the data plane together (a goroutine and a read per request to notice a client leaving,
// header maps, a chunking writer): with an engine on loopback it halved the throughput of
// a proxy in front of it. So the one request that dominates — a non-streamed inference call
// over a keep-alive HTTP/1.1 connection — is read and answered here, straight from and into
// the connection's buffers. Every other request (streams, which need the client-disconnect
// detection net/http has; WebSocket; GET routes; failed authentication; anything unusual
// about the request) is handed, with its connection and the bytes read so far, to a plain
// net/http server with the same handler, which serves the connection from then on.

// h1Routes are the routes the fast path serves (POST, non-streamed).
var h1Routes = map[string]string{
	"/v1/chat/completions": RouteChatCompletions,
	"/v1/completions":      RouteCompletions,
	"/v1/embeddings":       RouteEmbeddings,
}

const (
	h1ReadHeaderTimeout = 10 * time.Second
	h1IdleTimeout       = 120 * time.Second
)

// h1Front accepts the HTTP connections and serves them, handing some to std.
type h1Front struct {
	s       *Server
	ln      net.Listener
	std     *http.Server
	handoff *connQueue

	closing atomic.Bool
	served  atomic.Int64 // calls answered by the fast path (tests read it)
	mu      sync.Mutex
	conns   map[*h1Conn]struct{}
	wg      sync.WaitGroup
}

// h1Conn is one connection served by the fast path.
type h1Conn struct {
	nc   net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	idle atomic.Bool
	head []byte

	// Reused by each call on the connection.
	sink  h1Sink
	watch clientWatch
	abort *callAbort

	await awaiter      // nil where reads and writes are not raw
	flush func() error // bw.Flush, bound once
}

// h1Request is what the fast path needs of a request.
type h1Request struct {
	route         string
	authorization []byte
	contentLength int

	hasLength, hasHost, hasAuthorization bool

	principal *auth.Principal
	fields    callFields // of the body, once read
}

// authorize authenticates req's Authorization header; false leaves the refusal to std.
func (f *h1Front) authorize(req *h1Request) bool {
	p, fail := f.s.Authenticate(string(req.authorization))
	req.principal = p
	return fail == nil
}

// header takes one header line; false means the request is std's: a line net/http would
// refuse (a name that is not a token, a control character in the value), a header that
// changes how the request is read (Transfer-Encoding, Expect, Upgrade, Connection other
// than keep-alive), a length net/http would not take or over maxBody (std answers 413),
// or a second Content-Length or Authorization.
func (req *h1Request) header(line []byte, maxBody int64) bool {
	name, value, ok := splitHeader(line)
	if !ok {
		return false
	}
	switch {
	case asciiEqualFold(name, "Content-Length"):
		n, err := strconv.ParseUint(string(value), 10, 63)
		if req.hasLength || err != nil || n > uint64(maxBody) {
			return false
		}
		req.contentLength, req.hasLength = int(n), true
	case asciiEqualFold(name, "Authorization"):
		if req.hasAuthorization {
			return false
		}
		req.authorization, req.hasAuthorization = value, true
	case asciiEqualFold(name, "Host"):
		// HTTP/1.1 requires exactly one: without, or with two, std answers 400.
		if req.hasHost || len(value) == 0 || !isHost(value) {
			return false
		}
		req.hasHost = true
	case asciiEqualFold(name, "Connection"):
		// Keep-alive is the HTTP/1.1 default; anything else (close, upgrade) is std's.
		return asciiEqualFold(value, "keep-alive")
	case asciiEqualFold(name, "Transfer-Encoding"), asciiEqualFold(name, "Expect"), asciiEqualFold(name, "Upgrade"):
		return false
	case asciiEqualFold(name, "Origin"):
		return false // a browser's call: std answers it with its CORS headers (cors)
	}
	return true
}

// splitHeader splits a header line into its name and its value without the optional white
// space around it; false when the name is not a token or the value holds a control
// character other than tab (net/http refuses both; a bare CR passed on would split a head).
func splitHeader(line []byte) (name, value []byte, ok bool) {
	name, value, ok = bytes.Cut(line, []byte(":"))
	if !ok || !isToken(name) {
		return nil, nil, false
	}
	for len(value) > 0 && (value[0] == ' ' || value[0] == '\t') {
		value = value[1:]
	}
	for len(value) > 0 && (value[len(value)-1] == ' ' || value[len(value)-1] == '\t') {
		value = value[:len(value)-1]
	}
	for _, b := range value {
		if (b < ' ' && b != '\t') || b == 0x7f {
			return nil, nil, false
		}
	}
	return name, value, true
}

// Byte classes of header names (RFC 9110 tokens) and of Host values (the characters of a
// host[:port]; net/http refuses the others), as tables: every byte of every header line
// of every request goes through one of them.
var tokenByte, hostByte = byteClass("!#$%&'*+-.^_`|~"), byteClass("-._~:[]!$&'()*+,;=%")

// byteClass is a table of the ASCII letters and digits and the bytes of extra.
func byteClass(extra string) (t [256]bool) {
	for c := range 256 {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(extra, byte(c)) >= 0
	}
	return t
}

func isHost(b []byte) bool { return allIn(b, &hostByte) }

func isToken(b []byte) bool { return len(b) > 0 && allIn(b, &tokenByte) }

func allIn(b []byte, class *[256]bool) bool {
	for _, c := range b {
		if !class[c] {
			return false
		}
	}
	return true
}

func newH1Front(s *Server, ln net.Listener, std *http.Server) *h1Front {
	f := &h1Front{s: s, ln: ln, std: std, conns: map[*h1Conn]struct{}{}}
	f.handoff = &connQueue{ch: make(chan net.Conn), done: make(chan struct{}), addr: ln.Addr()}
	s.h1 = f
	return f
}

// serve accepts until the listener is closed, and serves handed-off connections with std.
func (f *h1Front) serve() error {
	stdErr := make(chan error, 1)
	go func() { stdErr <- f.std.Serve(f.handoff) }()
	var delay time.Duration
	for {
		nc, err := f.ln.Accept()
		if err != nil {
			if f.closing.Load() {
				if err := <-stdErr; !errors.Is(err, http.ErrServerClosed) {
					return err
				}
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors and the like: wait and try again, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			time.Sleep(delay)
			continue
		}
		delay = 0
		rw := withRawIO(nc) // the fast path's reads and writes; a handed-off connection is nc
		c := &h1Conn{nc: nc, br: bufio.NewReaderSize(rw, 4096), bw: bufio.NewWriterSize(rw, 4096)}
		c.sink, c.abort, c.flush = h1Sink{f: f, c: c}, newCallAbort(), c.bw.Flush
		c.await, _ = rw.(awaiter)
		if !f.track(c, true) {
			_ = nc.Close()
			continue
		}
		go f.serveConn(c)
	}
}

// track adds or removes a connection; no connection is added once shutdown began.
func (f *h1Front) track(c *h1Conn, add bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !add {
		delete(f.conns, c)
		f.wg.Done()
		return true
	}
	if f.closing.Load() {
		return false
	}
	f.conns[c] = struct{}{}
	f.wg.Add(1)
	return true
}

// stop closes the listener, closes idle connections, lets requests in flight finish until
// ctx ends, then cancels them and closes what is left. Handed-off connections are std's.
func (f *h1Front) stop(ctx context.Context) {
	f.mu.Lock()
	f.closing.Store(true)
	f.mu.Unlock()
	_ = f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		if c.idle.Load() {
			_ = c.nc.SetReadDeadline(time.Now())
		}
	}
	f.mu.Unlock()
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		// Closing a connection ends its call: the call's client watch sees it go.
		f.mu.Lock()
		for c := range f.conns {
			_ = c.nc.Close()
		}
		f.mu.Unlock()
		<-done
	}
	// Only now: a connection handed off while the fast path drained is still served.
	if err := f.std.Shutdown(ctx); err != nil {
		_ = f.std.Close()
	}
}

// serveConn serves requests on c until one goes to std, the client leaves, or shutdown.
func (f *h1Front) serveConn(c *h1Conn) {
	handedOff := false
	defer func() {
		if v := recover(); v != nil {
			// As net/http does for a handler's panic: this connection ends, the others go on.
			f.s.opts.Log.Error(fmt.Errorf("%v", v), "panic serving an HTTP connection; closed it", "stack", string(debug.Stack()))
		}
		if !handedOff {
			_ = c.nc.Close()
		}
		f.track(c, false)
	}()
	wait := h1ReadHeaderTimeout // a new connection has as long as net/http gives it
	answered := false           // an answer waits in c.bw, sent as the next request is awaited
	for {
		c.idle.Store(true)
		readable := false
		if answered {
			var ok bool
			if readable, ok = f.sendAnswer(c); !ok {
				return
			}
		}
		if !f.awaitRequest(c, wait, readable) {
			return
		}
		wait = h1IdleTimeout
		c.idle.Store(false)
		if !headBuffered(c.br) {
			if err := c.nc.SetReadDeadline(time.Now().Add(h1ReadHeaderTimeout)); err != nil {
				return
			}
		}
		req, body, ok, err := f.readRequest(c)
		if errors.Is(err, errHeadTooLarge) {
			f.refuseHead(c)
		}
		if err != nil {
			return
		}
		if !ok {
			f.handOff(c, body)
			handedOff = true
			return
		}
		ok = f.serveCall(c, req, body)
		bodyPool.Put(body)
		if !ok {
			return
		}
		answered = true
	}
}

// sendAnswer writes the answer waiting in c.bw. When the client has sent nothing more yet,
// it is written inside the wait for the next request (sendAndAwait), which spares the read
// that would find nothing: readable reports that the wait ended with data (or the end of
// the connection) to read. That wait does not see a request the client pipelined before it
// began, hence its deadline of awaitCheck, after which the next read looks anyway.
func (f *h1Front) sendAnswer(c *h1Conn) (readable, ok bool) {
	if c.await == nil || c.br.Buffered() > 0 {
		return false, c.flush() == nil
	}
	if err := c.nc.SetReadDeadline(time.Now().Add(awaitCheck)); err != nil || f.closing.Load() {
		return false, c.flush() == nil
	}
	readable, err := c.await.sendAndAwait(c.flush)
	return readable, err == nil
}

// awaitRequest waits up to wait for the first byte of the next request; false means the
// connection is done (the client left, it idled out, or shutdown began).
func (f *h1Front) awaitRequest(c *h1Conn, wait time.Duration, readable bool) bool {
	if c.br.Buffered() > 0 {
		return !f.closing.Load()
	}
	if readable && !f.closing.Load() {
		if _, err := c.br.Peek(1); err == nil {
			return true
		} else if !isTimeout(err) {
			return false
		}
		// The check's deadline passed as the request came: read it under the idle deadline.
	}
	if err := c.nc.SetReadDeadline(time.Now().Add(wait)); err != nil || f.closing.Load() {
		return false
	}
	_, err := c.br.Peek(1)
	return err == nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// headBuffered reports whether the whole head of the next request is in br already (then
// reading it cannot block, and needs no header deadline).
func headBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return bytes.Contains(b, []byte("\r\n\r\n"))
}

// readRequest reads one request's head and, when the fast path can serve it, its body. ok
// false means std serves it: what was read is in c.head and body (nil when none was read).
func (f *h1Front) readRequest(c *h1Conn) (req h1Request, body *bytes.Buffer, ok bool, err error) {
	c.head = c.head[:0]
	maxHeader := f.s.maxHeaderBytes()
	first := true
	fast := true
	for {
		// A line longer than the read buffer comes in pieces: it is parsed whole, from head.
		start := len(c.head)
		line, err := c.br.ReadSlice('\n')
		for errors.Is(err, bufio.ErrBufferFull) && len(c.head) <= maxHeader {
			c.head = append(c.head, line...)
			line, err = c.br.ReadSlice('\n')
		}
		c.head = append(c.head, line...)
		line = c.head[start:]
		if errors.Is(err, bufio.ErrBufferFull) || len(c.head) > maxHeader {
			return req, nil, false, errHeadTooLarge
		}
		if err != nil {
			return req, nil, false, err
		}
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		if first {
			first = false
			route, good := parseRequestLine(line)
			req.route, fast = route, good
			continue
		}
		if len(line) == 0 {
			break
		}
		if !fast {
			continue // read the rest of the head for std
		}
		fast = req.header(line, f.s.opts.MaxBodyBytes)
	}
	if !fast || !req.hasLength || !req.hasHost {
		return req, nil, false, nil
	}
	// Nothing of the body is read for a caller who may not call: std refuses it as it does.
	if !f.authorize(&req) {
		return req, nil, false, nil
	}
	// The header timeout covers the head only, as with net/http; the body has --body-timeout
	// (a stalled client's connection is closed). A body already read in full needs no change
	// (the client watch sets the deadline for itself).
	if c.br.Buffered() < req.contentLength {
		var dl time.Time
		if t := f.s.opts.BodyTimeout; t > 0 {
			dl = time.Now().Add(t)
		}
		if err := c.nc.SetReadDeadline(dl); err != nil {
			return req, nil, false, err
		}
	}
	body = bodyPool.Get().(*bytes.Buffer)
	body.Reset()
	if err := readBody(c.br, req.contentLength, body); err != nil {
		bodyPool.Put(body)
		return req, nil, false, err
	}
	// Streams need std's disconnect detection; a body that does not parse, std's 400.
	fields, perr := readFields(body.Bytes())
	req.fields = fields
	return req, body, perr == nil && !fields.stream, nil
}

// readBody reads n bytes of br into body; a body that fits the read buffer (the usual one
// does, and has mostly arrived with its head) is copied from it in one piece.
func readBody(br *bufio.Reader, n int, body *bytes.Buffer) error {
	if n > br.Size() {
		_, err := io.CopyN(body, br, int64(n))
		return err
	}
	data, err := br.Peek(n)
	if err != nil {
		return err
	}
	body.Write(data)
	_, err = br.Discard(n)
	return err
}

// parseRequestLine accepts "POST <fast route> HTTP/1.1" only.
func parseRequestLine(line []byte) (string, bool) {
	method, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok || string(method) != http.MethodPost {
		return "", false
	}
	target, proto, ok := bytes.Cut(rest, []byte(" "))
	if !ok || string(proto) != "HTTP/1.1" {
		return "", false
	}
	route, ok := h1Routes[string(target)]
	return route, ok
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// serveCall answers one non-streamed call; false means the connection is done.
func (f *h1Front) serveCall(c *h1Conn, req h1Request, body *bytes.Buffer) bool {
	p := req.principal
	f.served.Add(1)
	// No context per call: the client watch ends a call through the connection's abort hook,
	// and the request timeout is a deadline on the engine connection.
	c.abort.reset()
	c.watch.start(c)
	c.sink.started = false
	call := Call{Route: req.route, Body: body.Bytes(), parsed: req.fields, hasParsed: true, abort: c.abort}
	_, fail := f.s.Exchange(context.Background(), p, call, &c.sink)
	if !c.watch.stop() {
		return false
	}
	if fail != nil && !c.sink.started {
		if fail.Status == 499 {
			return false // the client left, or shutdown gave up: nobody to answer
		}
		f.writeFailure(c, fail, false, nil)
	}
	return true // the answer is sent by serveConn, as it awaits the next request
}

// h1WatchAfter is how long a call runs before the fast path starts watching its client: a
// client that leaves a long generation cancels the engine's work, as with net/http, while
// the short calls that make up the load pay nothing for it.
const h1WatchAfter = 500 * time.Millisecond

// clientWatch notices a client closing its connection while its call runs. A connection's
// calls share one (and its timer): a timer and a channel per call were a good part of what
// the fast path allocated.
type clientWatch struct {
	c     *h1Conn
	timer *time.Timer
	done  chan struct{} // a value each time the watch has run
	gone  bool

	mu       sync.Mutex // orders run's clearing of the read deadline and stop's setting it
	stopping bool
}

// start watches c for its call, after h1WatchAfter: a read that ends (EOF, reset) aborts
// the call. A pipelined request arriving instead stays buffered for the next turn.
func (w *clientWatch) start(c *h1Conn) {
	w.gone = false
	if w.timer == nil {
		w.c, w.done = c, make(chan struct{}, 1)
		w.timer = time.AfterFunc(h1WatchAfter, w.run)
		return
	}
	w.timer.Reset(h1WatchAfter)
}

func (w *clientWatch) run() {
	defer func() { w.done <- struct{}{} }()
	// Whatever read deadline the request left (its head's, or the wait's) does not apply to
	// the watch, unless stop has begun.
	w.mu.Lock()
	if w.stopping {
		w.mu.Unlock()
		return
	}
	_ = w.c.nc.SetReadDeadline(time.Time{})
	w.mu.Unlock()
	if _, err := w.c.br.Peek(1); err != nil && !isTimeout(err) {
		w.gone = true
		w.c.abort.abort()
	}
}

// stop ends the watch; false means the client has gone.
func (w *clientWatch) stop() bool {
	if w.timer.Stop() {
		return true // it never started
	}
	// Running or done: unblock its read and wait. The next turn sets its own deadline.
	w.mu.Lock()
	w.stopping = true
	_ = w.c.nc.SetReadDeadline(time.Unix(1, 0))
	w.mu.Unlock()
	<-w.done
	w.mu.Lock()
	w.stopping = false
	w.mu.Unlock()
	return !w.gone
}

// errHeadTooLarge is a request head over --max-header-bytes.
var errHeadTooLarge = errors.New("request head too large")

// refuseHead answers a head over the cap with an OpenAI-shaped 431, and closes: the rest of
// the head is not worth reading. The client's unread bytes are drained for a moment first,
// as net/http waits before closing, so that the close is not a reset that could destroy the
// answer before the client reads it.
func (f *h1Front) refuseHead(c *h1Conn) {
	fail := headerTooLarge(f.s.maxHeaderBytes())
	f.s.countRejection(fail, "")
	f.writeFailure(c, fail, true, f.s.headCORS(c.head))
	if c.flush() != nil {
		return
	}
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(h1DrainTimeout))
	_, _ = io.Copy(io.Discard, io.LimitReader(c.nc, h1DrainLimit))
}

// After a refused head, the client's unsent rest is read for up to h1DrainTimeout (net/http
// waits as long) or h1DrainLimit bytes before the connection closes.
const (
	h1DrainTimeout = 500 * time.Millisecond
	h1DrainLimit   = 1 << 20
)

// writeFailure writes an OpenAI-shaped error, the same bytes the net/http handler would, with
// header's fields besides (header is written to; nil for none); closing adds Connection: close.
func (f *h1Front) writeFailure(c *h1Conn, fail *Failure, closing bool, header http.Header) {
	if header == nil {
		header = http.Header{}
	}
	rec := &h1Recorder{header: header}
	fail.writeHTTP(rec)
	writeStatusLine(c.bw, rec.status)
	for k, vs := range rec.header {
		for _, v := range vs {
			_, _ = fmt.Fprintf(c.bw, "%s: %s\r\n", k, v)
		}
	}
	f.endHead(c, len(rec.body), closing)
	_, _ = c.bw.Write(rec.body)
}

func writeStatusLine(bw *bufio.Writer, status int) {
	_, _ = bw.WriteString("HTTP/1.1 ")
	_, _ = bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(status), 10))
	_ = bw.WriteByte(' ')
	if text := http.StatusText(status); text != "" {
		_, _ = bw.WriteString(text)
	} else {
		_, _ = bw.WriteString("status code ") // as net/http words an unknown status
		_, _ = bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(status), 10))
	}
	_, _ = bw.WriteString("\r\n")
}

// endHead writes Content-Length (none when length < 0), Date, Connection: close while
// shutting down or when closing, and the blank line that ends the head.
func (f *h1Front) endHead(c *h1Conn, length int, closing bool) {
	bw := c.bw
	if length >= 0 {
		_, _ = bw.WriteString("Content-Length: ")
		_, _ = bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(length), 10))
		_, _ = bw.WriteString("\r\n")
	}
	_, _ = bw.WriteString("Date: ")
	_, _ = bw.WriteString(httpDate())
	if closing || f.closing.Load() {
		_, _ = bw.WriteString("\r\nConnection: close")
	}
	_, _ = bw.WriteString("\r\n\r\n")
}

// handOff gives c, with the bytes read so far replayed first, to std.
func (f *h1Front) handOff(c *h1Conn, body *bytes.Buffer) {
	prefix := append([]byte(nil), c.head...)
	if body != nil {
		prefix = append(prefix, body.Bytes()...)
		bodyPool.Put(body)
	}
	if n := c.br.Buffered(); n > 0 {
		rest, _ := c.br.Peek(n)
		prefix = append(prefix, rest...)
	}
	_ = c.nc.SetReadDeadline(time.Time{})
	rc := &replayConn{Conn: c.nc, r: io.MultiReader(bytes.NewReader(prefix), c.nc)}
	select {
	case f.handoff.ch <- rc:
	case <-f.handoff.done:
		_ = c.nc.Close()
	}
}

// h1Sink writes a whole answer into the connection's buffer; the fast path never streams.
type h1Sink struct {
	f       *h1Front
	c       *h1Conn
	started bool
}

var errNotStreaming = errors.New("the fast HTTP path does not stream")

func (h *h1Sink) Chunk([]byte) error { return errNotStreaming }
func (h *h1Sink) End() error         { return errNotStreaming }

func (h *h1Sink) Complete(status int, contentType string, body []byte) error {
	h.started = true
	if contentType == "" {
		contentType = "application/json"
	}
	bw := h.c.bw
	writeStatusLine(bw, status)
	_, _ = bw.WriteString("Content-Type: ")
	_, _ = bw.WriteString(contentType)
	_, _ = bw.WriteString("\r\n")
	if bodyless(status) {
		// No body, and no Content-Length either (RFC 9110 §8.6), as net/http answers them.
		h.f.endHead(h.c, -1, false)
		return nil
	}
	h.f.endHead(h.c, len(body), false)
	_, err := bw.Write(body)
	return err
}

// h1Recorder collects what an http.Handler-style writer produces, for writeFailure.
type h1Recorder struct {
	header http.Header
	status int
	body   []byte
}

func (r *h1Recorder) Header() http.Header { return r.header }
func (r *h1Recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

func (r *h1Recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.body = append(r.body, p...)
	return len(p), nil
}

// httpDate is the Date header value, formatted once a second.
func httpDate() string {
	now := time.Now()
	if d := cachedDate.Load(); d != nil && d.sec == now.Unix() {
		return d.text
	}
	d := &dateText{sec: now.Unix(), text: now.UTC().Format(http.TimeFormat)}
	cachedDate.Store(d)
	return d.text
}

type dateText struct {
	sec  int64
	text string
}

var cachedDate atomic.Pointer[dateText]

// connQueue is the net.Listener std serves: the connections the fast path hands off.
type connQueue struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }

// replayConn reads the bytes the fast path already consumed before the connection's own.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite lets net/http half-close before closing (after a 413 or 431), as it does on
// the connections it accepts itself, so the client reads the answer rather than a reset.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
