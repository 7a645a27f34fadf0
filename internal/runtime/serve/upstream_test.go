package serve

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// rawEngine is a test double of an engine that answers each request, in order across its
// connections, with the next scripted answer written byte for byte, so the tests control the
// framing an engine may use. An answer ending in "\x00" is followed by closing the connection.
type rawEngine struct {
	url      string
	answers  chan string
	accepted atomic.Int32
	paths    chan string
}

func newRawEngine(t *testing.T, answers ...string) *rawEngine {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	e := &rawEngine{url: "http://" + ln.Addr().String(), answers: make(chan string, len(answers)), paths: make(chan string, len(answers)+8)}
	for _, a := range answers {
		e.answers <- a
	}
	close(e.answers)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.accepted.Add(1)
			go e.serve(c)
		}
	}()
	return e
}

func (e *rawEngine) serve(c net.Conn) {
	defer func() { _ = c.Close() }()
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		e.paths <- req.URL.Path
		a, ok := <-e.answers
		if !ok {
			return
		}
		closeAfter := strings.HasSuffix(a, "\x00")
		if _, err := io.WriteString(c, strings.TrimSuffix(a, "\x00")); err != nil || closeAfter {
			return
		}
	}
}

// call posts one request through u and returns the answer's status, type and body.
func call(t *testing.T, u *upstream) (int, string, string, error) {
	t.Helper()
	resp, err := u.post(upCall{ctx: context.Background(), deadline: time.Now().Add(10 * time.Second)}, RouteChatCompletions, []byte(`{}`), "application/json")
	if err != nil {
		return 0, "", "", err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.ContentType, string(body), err
}

func TestUpstreamFraming(t *testing.T) {
	type want struct {
		status int
		ctype  string
		body   string
	}
	cases := []struct {
		name     string
		answers  []string
		want     []want
		accepted int32 // connections the engine saw: 1 when the connection was reused
	}{{
		name: "Content-Length, reused",
		answers: []string{
			"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
			"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\nContent-Type: text/plain\r\n\r\nno",
		},
		want:     []want{{200, "application/json", `{"a":1}`}, {404, "text/plain", "no"}},
		accepted: 1,
	}, {
		name: "chunked with trailers, reused",
		answers: []string{
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n",
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n1\r\nf\r\n0\r\n\r\n",
			"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\ng",
		},
		want:     []want{{200, "", "abcde"}, {200, "", "f"}, {200, "", "g"}},
		accepted: 1,
	}, {
		name: "informational answers skipped, no body on 204",
		answers: []string{
			"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
			"HTTP/1.1 204 No Content\r\n\r\n",
			"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		},
		want:     []want{{200, "", "ok"}, {204, "", ""}, {200, "", ""}},
		accepted: 1,
	}, {
		name: "Connection: close and HTTP/1.0 are not reused",
		answers: []string{
			"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 1\r\n\r\na",
			"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb",
			"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc",
		},
		want:     []want{{200, "", "a"}, {200, "", "b"}, {200, "", "c"}},
		accepted: 3,
	}, {
		name: "a body ended by the engine closing",
		answers: []string{
			"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"until\":\"close\"}\x00",
			"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nd",
		},
		want:     []want{{200, "application/json", `{"until":"close"}`}, {200, "", "d"}},
		accepted: 2,
	}, {
		name: "both framings: chunked wins and the connection is not reused",
		answers: []string{
			"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n1\r\ne\r\n0\r\n\r\n",
			"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nf",
		},
		want:     []want{{200, "", "e"}, {200, "", "f"}},
		accepted: 2,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newRawEngine(t, tc.answers...)
			u, err := newUpstream(e.url)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(u.closeIdle)
			for i, w := range tc.want {
				status, ctype, body, err := call(t, u)
				if err != nil {
					t.Fatalf("answer %d: %v", i, err)
				}
				if got := (want{status, ctype, body}); got != w {
					t.Fatalf("answer %d: got %+v, want %+v", i, got, w)
				}
			}
			if got := e.accepted.Load(); got != tc.accepted {
				t.Errorf("engine accepted %d connections, want %d", got, tc.accepted)
			}
		})
	}
}

func TestUpstreamRefusesMalformedAnswers(t *testing.T) {
	for _, answer := range []string{
		"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\na",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\rX-Injected: yes\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
		"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", maxEngineHead) + "\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort\x00",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab\x00",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: 1\r\n\x00",
		"HTTP/1.1 200 OK\r\nContent-Le\x00",
	} {
		e := newRawEngine(t, answer)
		u, err := newUpstream(e.url)
		if err != nil {
			t.Fatal(err)
		}
		status, _, body, err := call(t, u)
		if err == nil {
			t.Errorf("%.60q: no error (status %d, body %.20q)", answer, status, body)
		}
		if n := len(u.idle); n != 0 {
			t.Errorf("%.60q: the connection went back to the pool", answer)
		}
		u.closeIdle()
	}
}

// A read of a chunked body past its end does not read the next answer as a trailer.
func TestChunkedBodyEndsOnce(t *testing.T) {
	br := bufio.NewReader(strings.NewReader("1\r\na\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"))
	b, _ := upHead{status: 200, length: -1, chunked: true}.bodyReader(br, &lengthBody{})
	got, err := io.ReadAll(b)
	if err != nil || string(got) != "a" {
		t.Fatalf("ReadAll = %q, %v", got, err)
	}
	if n, err := b.Read(make([]byte, 8)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read past the end = %d, %v; want 0, EOF", n, err)
	}
	if rest, _ := br.ReadString('\n'); rest != "HTTP/1.1 200 OK\r\n" {
		t.Fatalf("left %q for the next answer", rest)
	}
}

// pairEngine is a test double of an engine that answers each request with "ok"; first, if
// set, runs on each new connection after its first answer.
func pairEngine(t *testing.T, hang *atomic.Bool, first func(net.Conn)) (*upstream, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	conns := &atomic.Int32{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := conns.Add(1)
			go func() {
				defer func() { _ = c.Close() }()
				br := bufio.NewReader(c)
				for answered := false; ; answered = true {
					if answered && first != nil && n == 1 {
						first(c)
						return
					}
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					if hang != nil && hang.Load() {
						continue
					}
					_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
			}()
		}
	}()
	u, err := newUpstream("http://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.closeIdle)
	return u, conns
}

func postWithin(u *upstream, d time.Duration) error {
	resp, err := u.post(upCall{ctx: context.Background(), deadline: time.Now().Add(d)}, RouteChatCompletions, []byte(`{}`), "application/json")
	if err != nil {
		return err
	}
	_, err = io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	return err
}

// An engine that half-closed a pooled connection (and still reads, as a lingering close
// does) never answers on it: the call is retried on a new connection rather than waiting
// out its deadline (the wait that sends the request does not see the earlier close).
func TestUpstreamEngineClosedWhileIdle(t *testing.T) {
	u, conns := pairEngine(t, nil, func(c net.Conn) {
		_ = c.(*net.TCPConn).CloseWrite()
		_, _ = io.Copy(io.Discard, c)
	})
	if err := postWithin(u, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // the engine's FIN arrives while the connection idles
	if err := postWithin(u, 5*time.Second); err != nil {
		t.Fatalf("call after the engine closed the pooled connection: %v", err)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("engine saw %d connections, want 2", n)
	}
}

// A call whose time runs out is not retried: the retry would fail the same way, and close
// another pooled connection that was fine.
func TestUpstreamTimeoutLeavesOtherConnections(t *testing.T) {
	var hang atomic.Bool
	u, _ := pairEngine(t, &hang, nil)
	// Two calls at once: two pooled connections.
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- postWithin(u, 5*time.Second) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	pooled := len(u.idle)
	hang.Store(true)
	if err := postWithin(u, 100*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("call to a hung engine: %v, want a deadline error", err)
	}
	if got := len(u.idle); got != pooled-1 {
		t.Errorf("%d pooled connections after the timeout, want %d (only the timed-out one closed)", got, pooled-1)
	}
}
