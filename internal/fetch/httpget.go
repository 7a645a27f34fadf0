package fetch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// newHTTPClient is tuned for large downloads: no transparent gzip (weights do not compress
// and the byte counts must be the file's), big read buffers, enough idle connections for
// every worker, and no overall timeout (a 10 GB file takes what it takes); a stalled
// connection is caught by the response header timeout and TCP keep-alives.
func newHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	tuneTransport(t)
	return &http.Client{Transport: t}
}

func tuneTransport(t *http.Transport) {
	t.DisableCompression = true
	t.MaxIdleConnsPerHost = 64
	t.MaxConnsPerHost = 0
	t.ReadBufferSize = 256 << 10
	t.WriteBufferSize = 64 << 10
	t.ResponseHeaderTimeout = 2 * time.Minute
	t.DialContext = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
}

// rangeGet GETs url from off to end (exclusive, -1 for the end). It asks for a range only
// when one is needed, and refuses an answer that does not start at off.
func rangeGet(ctx context.Context, c *http.Client, url string, header http.Header, off, end int64, what, hint string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, errorf(KindInvalid, "%s: %v", what, err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	ranged := off > 0 || end >= 0
	if ranged {
		r := fmt.Sprintf("bytes=%d-", off)
		if end >= 0 {
			r = fmt.Sprintf("bytes=%d-%d", off, end-1)
		}
		req.Header.Set("Range", r)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, &Error{Kind: KindUnavailable, Msg: what, Err: withoutURL(err)}
	}
	switch {
	case resp.StatusCode == http.StatusPartialContent && ranged:
		if !strings.HasPrefix(resp.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-", off)) {
			resp.Body.Close()
			return nil, errorf(KindInvalid, "%s: asked for bytes from %d, the source answered %q", what, off, resp.Header.Get("Content-Range"))
		}
		return resp.Body, nil
	case resp.StatusCode == http.StatusOK && off == 0:
		// A whole file where a range was asked from its start is fine: the caller stops at end.
		return resp.Body, nil
	case resp.StatusCode == http.StatusOK:
		resp.Body.Close()
		return nil, errorf(KindInvalid, "%s: the source ignored a byte range request", what)
	default:
		defer resp.Body.Close()
		return nil, httpStatusError(resp, what, hint)
	}
}

// getJSON GETs a listing or metadata URL into v and returns the response's headers. what
// names the source in messages; hint is added to a 401/403.
func getJSON(ctx context.Context, c *http.Client, u string, header http.Header, v any, what, hint string) (http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, errorf(KindInvalid, "%s: %v", what, err)
	}
	req.Header = header
	resp, err := c.Do(req)
	if err != nil {
		return nil, &Error{Kind: KindUnavailable, Msg: what, Err: withoutURL(err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, httpStatusError(resp, what, hint)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(v); err != nil {
		return nil, &Error{Kind: KindUnavailable, Msg: what + ": reading the listing", Err: err}
	}
	return resp.Header, nil
}

// withoutURL drops the request URL net/http puts in its errors: it may carry a signature
// (a presigned URL, the Hub's CDN link), and the message names the source already.
func withoutURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}

// readSnippet returns the start of an error body, for messages.
func readSnippet(resp *http.Response) string {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	s := strings.TrimSpace(string(b))
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	return s
}
