package serve

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http/httputil"
	"strconv"
)

// The engine's answer is read here rather than with http.ReadResponse, which builds a
// Response, a header map and a textproto reader per answer: on a proxied call that was the
// largest cost left in reading from the engine. Only what the runtime uses is kept (status,
// Content-Type, how the body is framed, whether the connection may be reused); the framing
// rules are HTTP/1.1's (RFC 9112 section 6), and anything this reader does not accept is an
// error, which the caller answers with a 502.

// maxEngineHead caps the status line and headers of an engine answer.
const maxEngineHead = 1 << 20

// max1xx bounds the informational answers (103 Early Hints and the like) skipped before the
// real one, as net/http's client does.
const max1xx = 5

// upHead is what the runtime needs of an answer's head.
type upHead struct {
	status      int
	contentType string
	length      int64 // -1: not given
	chunked     bool
	close       bool // the engine closes the connection after this answer
}

// readUpHead reads one answer's head from br, skipping informational (1xx) answers.
func readUpHead(br *bufio.Reader) (upHead, error) {
	for range max1xx + 1 {
		h, err := readOneHead(br)
		if err != nil {
			return h, err
		}
		switch {
		case h.status == 101:
			return h, errors.New("the engine switched protocols")
		case h.status >= 100 && h.status < 200:
			continue
		}
		return h, nil
	}
	return upHead{}, fmt.Errorf("more than %d informational answers", max1xx)
}

func readOneHead(br *bufio.Reader) (upHead, error) {
	h := upHead{length: -1}
	size := 0
	line, err := readHeadLine(br, &size)
	if err != nil {
		return h, err
	}
	proto, rest, _ := bytes.Cut(line, []byte(" "))
	code, _, _ := bytes.Cut(rest, []byte(" "))
	switch string(proto) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		h.close = true // no keep-alive negotiation with a 1.0 engine: one answer per connection
	default:
		return h, fmt.Errorf("malformed status line %q", truncate(line))
	}
	if len(code) != 3 || code[0] < '1' || code[0] > '9' || code[1] < '0' || code[1] > '9' || code[2] < '0' || code[2] > '9' {
		return h, fmt.Errorf("malformed status line %q", truncate(line))
	}
	h.status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	for {
		line, err := readHeadLine(br, &size)
		if err != nil {
			return h, err
		}
		if len(line) == 0 {
			break
		}
		if err := h.header(line); err != nil {
			return h, err
		}
	}
	if h.chunked && h.length >= 0 {
		// Both framings: chunked wins, and the connection is not trusted with another answer.
		h.length, h.close = -1, true
	}
	return h, nil
}

// header takes one header line of an answer.
func (h *upHead) header(line []byte) error {
	name, value, ok := splitHeader(line)
	if !ok {
		return fmt.Errorf("malformed header line %q", truncate(line))
	}
	switch {
	case asciiEqualFold(name, "Content-Type"):
		h.contentType = contentTypeText(value)
	case asciiEqualFold(name, "Content-Length"):
		n, err := strconv.ParseUint(string(value), 10, 63) // digits only: no sign
		if err != nil || (h.length >= 0 && h.length != int64(n)) {
			return fmt.Errorf("bad Content-Length %q", truncate(value))
		}
		h.length = int64(n)
	case asciiEqualFold(name, "Transfer-Encoding"):
		if h.chunked || !asciiEqualFold(value, "chunked") {
			return fmt.Errorf("unsupported Transfer-Encoding %q", truncate(value))
		}
		h.chunked = true
	case asciiEqualFold(name, "Connection"):
		for tok := range bytes.SplitSeq(value, []byte(",")) {
			if asciiEqualFold(bytes.Trim(tok, " \t"), "close") {
				h.close = true
			}
		}
	}
	return nil
}

// contentTypeText returns value as a string, without allocating for the types engines send.
func contentTypeText(value []byte) string {
	for _, t := range [...]string{"application/json", "text/event-stream", "text/event-stream; charset=utf-8", "application/json; charset=utf-8"} {
		if string(value) == t {
			return t
		}
	}
	return string(value)
}

// readHeadLine reads one line of a head without its line end, counting into size.
func readHeadLine(br *bufio.Reader, size *int) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	*size += len(line)
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return nil, fmt.Errorf("a line of the answer head is longer than %d bytes", br.Size())
	case *size > maxEngineHead:
		return nil, fmt.Errorf("answer head longer than %d bytes", maxEngineHead)
	case errors.Is(err, io.EOF) && len(line) > 0:
		return nil, io.ErrUnexpectedEOF
	case err != nil:
		return nil, err
	}
	return bytes.TrimSuffix(line[:len(line)-1], []byte("\r")), nil
}

// truncate keeps error messages about a bad line short.
func truncate(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

// bodyless reports whether an answer with status has no body, whatever its head says:
// 204 and 304 (RFC 9110 §6.4.1). Such an answer is read, and passed on, without one.
func bodyless(status int) bool { return status == 204 || status == 304 }

// bodyReader returns a reader of the answer's body as h frames it (lb is used for a known
// length); keep reports whether the connection may carry another answer once the body has
// been read to its end.
func (h upHead) bodyReader(br *bufio.Reader, lb *lengthBody) (r io.Reader, keep bool) {
	switch {
	case bodyless(h.status):
		return eofReader{}, !h.close
	case h.chunked:
		return &chunkedBody{br: br, cr: httputil.NewChunkedReader(br)}, !h.close
	case h.length >= 0:
		*lb = lengthBody{br: br, left: h.length}
		return lb, !h.close
	}
	return br, false // delimited by the engine closing the connection
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// lengthBody reads a body of a known length.
type lengthBody struct {
	br   *bufio.Reader
	left int64
}

func (b *lengthBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	if errors.Is(err, io.EOF) {
		if b.left > 0 {
			return n, io.ErrUnexpectedEOF
		}
		err = nil
	}
	return n, err
}

// chunkedBody reads a chunked body, and the trailer section after the last chunk so that
// the connection is left at the start of the next answer.
type chunkedBody struct {
	br  *bufio.Reader
	cr  io.Reader
	end error // once the last chunk was read: io.EOF, or what failed in the trailers
}

func (b *chunkedBody) Read(p []byte) (int, error) {
	if b.end != nil {
		return 0, b.end
	}
	n, err := b.cr.Read(p)
	if errors.Is(err, io.EOF) {
		b.end = io.EOF
		size := 0
		for {
			line, terr := readHeadLine(b.br, &size)
			if terr != nil {
				b.end = fmt.Errorf("reading the engine's trailers: %w", eofUnexpected(terr))
				return n, b.end
			}
			if len(line) == 0 {
				break
			}
		}
	}
	return n, err
}

func eofUnexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
