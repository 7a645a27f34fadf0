package serve

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"
)

// upstream is the runtime's HTTP/1.1 client to its engine. The engine is one address on
// localhost, so the general machinery of http.Transport (two goroutines per connection and a
// channel hand-off for every request and response) is most of the cost of a proxied call;
// here the request's own goroutine writes the request and reads the answer on a pooled
// keep-alive connection.
type upstream struct {
	host    string // host:port to dial
	dialer  net.Dialer
	maxIdle int

	mu   sync.Mutex
	idle []*upConn
}

type upConn struct {
	conn  net.Conn
	br    *bufio.Reader
	bw    *bufio.Writer
	flush func() error // bw.Flush, bound once
	await awaiter      // nil where reads and writes are not raw

	// The answer being read: a connection carries one at a time, so these are reused.
	body   upBody
	length lengthBody
}

func newUpstream(base string) (*upstream, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("--upstream %q: %w", base, err)
	}
	if u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("--upstream %q: want http://host:port (the engine on localhost)", base)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	return &upstream{host: host, dialer: net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}, maxIdle: 1024}, nil
}

// upResponse is the engine's answer. Body must be closed once, which returns the connection
// to the pool when the body was read to its end; it is the connection's, reused for its next
// answer, so it is not touched after Close.
type upResponse struct {
	StatusCode  int
	ContentType string
	Length      int64 // -1 when the engine did not say
	Body        io.ReadCloser
}

// upCall is how one engine call ends early: its deadline (the request timeout, body
// included), its context ending, or its abort hook firing (fronts without a cancellable
// context per call). Any of them unblocks a read or write at once.
type upCall struct {
	ctx      context.Context
	deadline time.Time
	abort    *callAbort // nil unless the front has one
}

// ended reports whether the call's context ended or its abort hook fired.
func (call upCall) ended() bool { return call.ctx.Err() != nil || call.abort.isAborted() }

// post sends body to path and returns the engine's answer.
func (u *upstream) post(call upCall, path string, body []byte, accept string) (upResponse, error) {
	for attempt := 0; ; attempt++ {
		c, reused, err := u.get(call)
		if err != nil {
			return upResponse{}, err
		}
		resp, err := u.roundTrip(call, c, path, body, accept)
		switch {
		case err == nil:
			return resp, nil
		case errors.Is(err, errAborted):
			u.put(c) // never used
			return upResponse{}, err
		}
		_ = c.conn.Close()
		// A kept-alive connection the engine closed while idle fails before any answer:
		// nothing was processed, so one retry on a new connection is safe. Not when the
		// call's time is up or it was ended: the retry could only fail the same way.
		if !reused || attempt > 0 || call.ended() || !errors.Is(err, errNoAnswer) || errors.Is(err, os.ErrDeadlineExceeded) {
			return upResponse{}, err
		}
	}
}

// errNoAnswer marks a failure before the first byte of the engine's answer.
var errNoAnswer = errors.New("connection closed before an answer")

func (u *upstream) roundTrip(call upCall, c *upConn, path string, body []byte, accept string) (upResponse, error) {
	ctx := call.ctx
	_ = c.conn.SetDeadline(call.deadline)
	stop := endEarly(call, c.conn)
	if stop == nil {
		return upResponse{}, errAborted
	}
	bw := c.bw
	_, _ = bw.WriteString("POST ")
	_, _ = bw.WriteString(path)
	_, _ = bw.WriteString(" HTTP/1.1\r\nHost: ")
	_, _ = bw.WriteString(u.host)
	_, _ = bw.WriteString("\r\nContent-Type: application/json\r\nAccept: ")
	_, _ = bw.WriteString(accept)
	_, _ = bw.WriteString("\r\nContent-Length: ")
	_, _ = bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(len(body)), 10))
	_, _ = bw.WriteString("\r\n\r\n")
	_, _ = bw.Write(body)
	if err := c.send(call); err != nil {
		stop()
		return upResponse{}, fmt.Errorf("%w: %w", errNoAnswer, err)
	}
	if _, err := c.br.Peek(1); err != nil {
		stop()
		if ctx.Err() != nil {
			return upResponse{}, ctx.Err()
		}
		return upResponse{}, fmt.Errorf("%w: %w", errNoAnswer, err)
	}
	head, err := readUpHead(c.br)
	if err != nil {
		stop()
		return upResponse{}, fmt.Errorf("reading the engine's answer: %w", err)
	}
	rb, keep := head.bodyReader(c.br, &c.length)
	c.body = upBody{u: u, c: c, body: rb, stop: stop, keep: keep}
	return upResponse{StatusCode: head.status, ContentType: head.contentType, Length: head.length, Body: &c.body}, nil
}

// awaiter sends a message and waits for its reply to arrive (rawConn, on Linux).
type awaiter interface {
	sendAndAwait(send func() error) (readable bool, err error)
}

// awaitCheck bounds a wait that sends (awaiter): what such a wait cannot see (a request the
// client pipelined, an engine connection closed while pooled) is read this long after the
// wait began, at the latest.
const awaitCheck = 50 * time.Millisecond

// errAborted is a call whose abort hook fired before it reached the engine.
var errAborted = errors.New("call aborted")

// endEarly arranges for the call on conn to be ended by its context or abort hook, by
// poisoning conn's deadline. The returned stop ends the arrangement and reports false when
// conn was poisoned; it is nil when the call was aborted already.
func endEarly(call upCall, conn net.Conn) func() bool {
	switch {
	case call.abort != nil:
		if !call.abort.attach(conn) {
			return nil
		}
		return call.abort.detachFn
	case call.ctx.Done() != nil:
		return context.AfterFunc(call.ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	}
	return notEnded
}

func notEnded() bool { return true }

// callAbort ends a call in flight from outside, for a front that has no cancellable context
// per call (the fast HTTP path's client watch: a context, its child registration and an
// AfterFunc per call were a good part of what the fast path spent outside system calls).
// One per connection, reset between calls.
type callAbort struct {
	mu       sync.Mutex
	conn     net.Conn // the engine connection of the call in flight, if any
	aborted  bool
	detachFn func() bool // detach, bound once
}

func newCallAbort() *callAbort {
	a := &callAbort{}
	a.detachFn = a.detach
	return a
}

func (a *callAbort) attach(conn net.Conn) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.aborted {
		return false
	}
	a.conn = conn
	return true
}

// detach reports false when abort poisoned the attached connection.
func (a *callAbort) detach() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.conn = nil
	return !a.aborted
}

// abort ends the call: at once if it is waiting on the engine, or before it reaches it.
func (a *callAbort) abort() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.aborted = true
	if a.conn != nil {
		_ = a.conn.SetDeadline(time.Unix(1, 0))
	}
}

// isAborted is safe on nil.
func (a *callAbort) isAborted() bool {
	if a == nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.aborted
}

// reset readies the hook for the connection's next call.
func (a *callAbort) reset() {
	a.mu.Lock()
	a.aborted, a.conn = false, nil
	a.mu.Unlock()
}

// send writes the buffered request and, where the connection can (see rawConn), waits for
// the answer to arrive before the first read. That wait is bounded by awaitCheck: it would
// not see the engine having closed the connection while it was pooled (a half-closed
// engine may never send anything more); the read that follows it does.
func (c *upConn) send(call upCall) error {
	if c.await == nil || c.br.Buffered() > 0 {
		return c.flush()
	}
	check := time.Now().Add(awaitCheck)
	bounded := check.Before(call.deadline)
	if bounded {
		_ = c.conn.SetReadDeadline(check)
	}
	_, err := c.await.sendAndAwait(c.flush)
	if bounded {
		_ = c.conn.SetReadDeadline(call.deadline)
		if call.ended() {
			// Ended while the check's deadline stood in for the poisoned one: poison it again.
			_ = c.conn.SetDeadline(time.Unix(1, 0))
		}
	}
	return err
}

// get returns an idle connection (newest first: it is the least likely to have been closed
// by the engine's idle timeout) or dials one, within the call's deadline.
func (u *upstream) get(call upCall) (*upConn, bool, error) {
	u.mu.Lock()
	if n := len(u.idle); n > 0 {
		c := u.idle[n-1]
		u.idle = u.idle[:n-1]
		u.mu.Unlock()
		return c, true, nil
	}
	u.mu.Unlock()
	d := u.dialer
	d.Deadline = call.deadline
	conn, err := d.DialContext(call.ctx, "tcp", u.host)
	if err != nil {
		return nil, false, err
	}
	conn = withRawIO(conn)
	c := &upConn{conn: conn, br: bufio.NewReaderSize(conn, 16<<10), bw: bufio.NewWriterSize(conn, 16<<10)}
	c.flush = c.bw.Flush
	c.await, _ = conn.(awaiter)
	return c, false, nil
}

func (u *upstream) put(c *upConn) {
	u.mu.Lock()
	if len(u.idle) < u.maxIdle {
		u.idle = append(u.idle, c)
		c = nil
	}
	u.mu.Unlock()
	if c != nil {
		_ = c.conn.Close()
	}
}

// closeIdle closes the pooled connections (shutdown, tests).
func (u *upstream) closeIdle() {
	u.mu.Lock()
	idle := u.idle
	u.idle = nil
	u.mu.Unlock()
	for _, c := range idle {
		_ = c.conn.Close()
	}
}

// upBody returns its connection to the pool once read to the end, and closes it otherwise
// (an unread rest would be read as the next answer).
type upBody struct {
	u      *upstream
	c      *upConn
	body   io.Reader
	stop   func() bool
	keep   bool
	eof    bool
	closed bool
}

func (b *upBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if errors.Is(err, io.EOF) {
		b.eof = true
	}
	return n, err
}

func (b *upBody) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	// stop is false when the call was ended early and the connection's deadline poisoned.
	if b.stop() && b.eof && b.keep {
		b.u.put(b.c)
		return nil
	}
	return b.c.conn.Close()
}
