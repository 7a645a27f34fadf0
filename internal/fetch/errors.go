package fetch

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Kind says what went wrong in a way a person (and the InferenceModel's WeightsReady
// condition) can act on.
type Kind string

const (
	// KindUnauthorized: the source refused the credentials, or there were none (401/403).
	KindUnauthorized Kind = "Unauthorized"
	// KindNotFound: the repository, revision, bucket, prefix or file does not exist (404).
	KindNotFound Kind = "NotFound"
	// KindChecksumMismatch: the bytes do not match the digest the source published.
	KindChecksumMismatch Kind = "ChecksumMismatch"
	// KindDiskFull: the destination has not enough free space.
	KindDiskFull Kind = "DiskFull"
	// KindInvalid: the URI or the source's answer makes no sense (a bad path, an empty model).
	KindInvalid Kind = "InvalidSource"
	// KindUnavailable: the source kept failing (network errors, 5xx, 429) after retries.
	KindUnavailable Kind = "SourceUnavailable"
)

// Error is a fetch failure with its Kind. Its message names the source and what to do.
type Error struct {
	Kind Kind
	Msg  string
	Err  error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

func errorf(kind Kind, format string, args ...any) *Error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// KindOf returns the Kind of err, KindUnavailable when it has none.
func KindOf(err error) Kind {
	var fe *Error
	if errors.As(err, &fe) {
		return fe.Kind
	}
	return KindUnavailable
}

// httpStatusError turns a refused HTTP answer into an Error. what names the thing asked for
// ("hf://org/repo", "file config.json"); hint is added to 401/403 (which credential to set).
// The body's first bytes are kept: sources put the reason there.
func httpStatusError(resp *http.Response, what, hint string) error {
	body := readSnippet(resp)
	code := resp.Header.Get("X-Error-Code") // the Hugging Face Hub says RepoNotFound, GatedRepo, ...
	detail := strings.TrimSpace(strings.Join(nonEmpty(code, body), ": "))
	if detail != "" {
		detail = " (" + detail + ")"
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return errorf(KindUnauthorized, "token missing or not allowed for %s: HTTP %d%s; %s", what, resp.StatusCode, detail, hint)
	case http.StatusNotFound:
		return errorf(KindNotFound, "revision/file not found: %s: HTTP 404%s", what, detail)
	case http.StatusRequestedRangeNotSatisfiable:
		return errorf(KindInvalid, "%s: the source refused a byte range (HTTP 416): the file changed while it was being fetched", what)
	default:
		return &Error{Kind: KindUnavailable, Msg: fmt.Sprintf("%s: HTTP %d%s", what, resp.StatusCode, detail)}
	}
}

func nonEmpty(ss ...string) []string {
	out := ss[:0:0]
	for _, s := range ss {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// retryable says whether trying again may help: not for answers that will not change.
func retryable(err error) bool {
	var fe *Error
	if errors.As(err, &fe) {
		return fe.Kind == KindUnavailable
	}
	return true
}
