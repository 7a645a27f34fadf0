package fetch

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strings"
)

// httpSource reads one file over HTTPS: the weights themselves (a .gguf, say) or an archive
// (.tar, .tar.gz, .tgz, .zip) unpacked into the destination. A "#sha256=<hex>" fragment
// gives the checksum to verify; a "token" (or HTTP_BEARER_TOKEN) credential is sent as a
// bearer token.
type httpSource struct {
	url    *url.URL
	digest Digest
	token  string
	client *http.Client
}

func newHTTPSource(raw string, creds Credentials) (*httpSource, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, errorf(KindInvalid, "uri %q is not a URL", redactURI(raw))
	}
	s := &httpSource{url: u, token: creds.value("HTTP_BEARER_TOKEN", "token"), client: newHTTPClient()}
	if algo, hexv, ok := strings.Cut(u.Fragment, "="); ok {
		if s.digest = hexDigest(algo, hexv); s.digest.IsZero() || algo != "sha256" {
			return nil, errorf(KindInvalid, "uri %q: the fragment must be #sha256=<64 hex digits>", redactURI(raw))
		}
	}
	u.Fragment = ""
	// Like curl and browsers, credentials do not follow a redirect to another host.
	s.client.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return fmt.Errorf("stopped after %d redirects", len(via))
		}
		if req.URL.Host != via[0].URL.Host {
			req.Header.Del("Authorization")
		}
		return nil
	}
	return s, nil
}

func (s *httpSource) String() string { return redactURI(s.url.String()) }

// redactURI drops what may be a credential from a URI for messages, logs and the
// termination message (which reaches the InferenceModel's status): user info and the query
// (a presigned URL's signature).
func redactURI(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if i := strings.IndexAny(raw, "?@"); i >= 0 {
			return raw[:i] + "..."
		}
		return raw
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = "..."
	}
	return u.String()
}

func (s *httpSource) header() http.Header {
	h := http.Header{"User-Agent": {"helixflow-runtime-fetch"}}
	if s.token != "" {
		h.Set("Authorization", "Bearer "+s.token)
	}
	return h
}

const httpHint = "set a token in the Secret named by spec.model.credentialsSecretRef (key \"token\"), or use a URL that needs none"

// List asks for the file's size and whether ranges work with a HEAD; servers that refuse
// HEAD get one plain streaming download.
func (s *httpSource) List(ctx context.Context) ([]File, string, error) {
	name := path.Base(s.url.Path)
	if name == "." || name == "/" || name == "" {
		name = "download"
	}
	f := File{Path: name, Size: -1, Digest: s.digest, Archive: archiveOf(name), ref: s.url.String()}
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, f.ref, nil)
	if err != nil {
		return nil, "", errorf(KindInvalid, "%s: %v", s, err)
	}
	req.Header = s.header()
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, "", &Error{Kind: KindUnavailable, Msg: s.String(), Err: withoutURL(err)}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	switch resp.StatusCode {
	case http.StatusOK:
		if resp.ContentLength >= 0 && resp.Header.Get("Content-Encoding") == "" {
			f.Size = resp.ContentLength
			f.Ranged = resp.Header.Get("Accept-Ranges") == "bytes"
		}
		f.ref = resp.Request.URL.String() // after redirects: ranges go straight there
	case http.StatusMethodNotAllowed, http.StatusNotImplemented:
	default:
		return nil, "", httpStatusError(resp, s.String(), httpHint)
	}
	return []File{f}, "", nil
}

func (s *httpSource) Open(ctx context.Context, f File, off, end int64) (io.ReadCloser, error) {
	h := s.header()
	if u, err := url.Parse(f.ref); err == nil && u.Host != s.url.Host {
		h.Del("Authorization")
	}
	return rangeGet(ctx, s.client, f.ref, h, off, end, s.String(), httpHint)
}
