package serve

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/apierror"
	"github.com/helixflow/helixflow/internal/auth"
)

// anonymous is the principal of auth mode None (trusted networks only): it may do anything.
var anonymous = &auth.Principal{
	Method: auth.MethodNone, AllModels: true,
	Scopes: []servingv1alpha1.Scope{servingv1alpha1.ScopeInference, servingv1alpha1.ScopeListModels},
}

// Handler is the HTTP API: health, the OpenAI routes, and the WebSocket stream.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", s.serveReadyz)
	mux.HandleFunc("GET /v1/models", s.serveModels)
	mux.HandleFunc("GET /v1/models/{model...}", s.serveModel)
	for _, route := range []string{RouteChatCompletions, RouteCompletions, RouteEmbeddings} {
		mux.HandleFunc("POST "+route, s.serveInference(route))
	}
	mux.HandleFunc("GET "+RouteStream, s.serveWebSocket)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		apierror.Write(w, http.StatusNotFound, apierror.TypeNotFound, "unknown_route", "Unknown request URL: "+r.Method+" "+r.URL.Path)
	})
	return s.cors(s.headerCap(s.bodyDeadline(mux)))
}

// headerCap refuses a request whose head is over --max-header-bytes with an OpenAI-shaped
// 431. The fast path refuses those before they get here; this covers the connections net/http
// serves, whose own refusal (beyond twice the cap, see httpFront) is plain text.
func (s *Server) headerCap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if headSize(r) > s.maxHeaderBytes() {
			fail := headerTooLarge(s.maxHeaderBytes())
			s.countRejection(fail, "")
			w.Header().Set("Connection", "close")
			fail.writeHTTP(w)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// headSize is the size of r's head as it came on the wire, near enough: the request line,
// and each header line ("Name: value\r\n").
func headSize(r *http.Request) int {
	n := len(r.Method) + len(r.RequestURI) + len(r.Proto) + 4
	if r.Host != "" {
		n += len("Host: ") + len(r.Host) + 2
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + 2 + len(v) + 2
		}
	}
	return n + 2
}

// bodyDeadline bounds the time a client may take to send a request body (--body-timeout).
// net/http's ReadTimeout would bound it too, but would then also cut the read that notices
// a streaming client leaving. A handler that reads the body lifts the bound once it has
// (serveInference); for one that does not, it bounds net/http's read of the unread rest
// before it answers, which would otherwise wait for a stalled client indefinitely.
func (s *Server) bodyDeadline(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 && s.opts.BodyTimeout > 0 {
			_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.opts.BodyTimeout))
		}
		h.ServeHTTP(w, r)
	})
}

func (s *Server) serveReadyz(w http.ResponseWriter, r *http.Request) {
	if ok, why := s.Ready(r.Context()); !ok {
		http.Error(w, why, http.StatusServiceUnavailable)
		return
	}
	_, _ = io.WriteString(w, "ok\n")
}

// Authenticate checks an Authorization header against the model's auth mode.
func (s *Server) Authenticate(header string) (*auth.Principal, *Failure) {
	st := s.model.Load()
	if st.mode == servingv1alpha1.AuthModeNone {
		return anonymous, nil
	}
	p, err := s.auth.Authenticate(header)
	switch {
	case err != nil:
		return nil, fromAuth(err)
	case st.mode == servingv1alpha1.AuthModeAPIKey && p.Method == auth.MethodJWT:
		return nil, fromAuth(auth.ErrTokensNotAccepted)
	case st.mode == servingv1alpha1.AuthModeJWT && p.Method == auth.MethodAPIKey:
		return nil, fromAuth(auth.ErrAPIKeysNotAccepted)
	}
	return p, nil
}

// authenticateHTTP authenticates a request; a refusal is written and counted.
func (s *Server) authenticateHTTP(w http.ResponseWriter, r *http.Request) *auth.Principal {
	p, fail := s.Authenticate(r.Header.Get("Authorization"))
	if fail != nil {
		s.countRejection(fail, fail.KeyID)
		fail.writeHTTP(w)
		return nil
	}
	return p
}

// ModelList is the answer of GET /v1/models.
type ModelList struct {
	Object string       `json:"object"`
	Data   []ModelEntry `json:"data"`
}

// ModelEntry is one model of ModelList.
type ModelEntry struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// startedAt is reported as the model's "created": when this runtime began serving it.
var startedAt = time.Now().Unix()

// Models lists the models p may use: the served model, if allowed.
func (s *Server) Models(p *auth.Principal) (ModelList, *Failure) {
	if !p.HasScope(servingv1alpha1.ScopeListModels) {
		return ModelList{}, fromAuth(auth.ErrScopeMissing(servingv1alpha1.ScopeListModels))
	}
	list := ModelList{Object: "list", Data: []ModelEntry{}}
	if name := s.model.Load().name; p.AllowsModel(name) {
		list.Data = append(list.Data, ModelEntry{ID: name, Object: "model", Created: startedAt, OwnedBy: "helixflow"})
	}
	return list, nil
}

// Model is one model p may use, by name (OpenAI's retrieve model): the served model, if
// allowed; any other name is not found.
func (s *Server) Model(p *auth.Principal, name string) (ModelEntry, *Failure) {
	list, fail := s.Models(p)
	if fail != nil {
		return ModelEntry{}, fail
	}
	for _, m := range list.Data {
		if m.ID == name {
			return m, nil
		}
	}
	return ModelEntry{}, modelNotFound(name)
}

func (s *Server) serveModels(w http.ResponseWriter, r *http.Request) {
	p := s.authenticateHTTP(w, r)
	if p == nil {
		return
	}
	list, fail := s.Models(p)
	writeJSON(w, list, fail)
}

// serveModel is GET /v1/models/{model}; a name with a slash ("org/model") may come escaped
// (as the OpenAI SDKs send it) or not.
func (s *Server) serveModel(w http.ResponseWriter, r *http.Request) {
	p := s.authenticateHTTP(w, r)
	if p == nil {
		return
	}
	m, fail := s.Model(p, r.PathValue("model"))
	writeJSON(w, m, fail)
}

// writeJSON answers v, or fail when not nil. Neither is stored by caches: what a credential
// may see changes with its ApiKey (as errors are not: apierror).
func writeJSON(w http.ResponseWriter, v any, fail *Failure) {
	if fail != nil {
		fail.writeHTTP(w)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

// bodyPool recycles request body buffers: bodies are read whole (the model field decides
// everything) and dropped when the call ends.
var bodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (s *Server) serveInference(route string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p := s.authenticateHTTP(w, r)
		if p == nil {
			return
		}
		buf := bodyPool.Get().(*bytes.Buffer)
		buf.Reset()
		defer bodyPool.Put(buf)
		if fail := s.readBody(w, r, buf); fail != nil {
			s.countRejection(fail, p.KeyID)
			fail.writeHTTP(w)
			return
		}
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Time{}) // the body is in: a stream may take its time
		sink := &httpSink{w: w, rc: rc}
		start := time.Now()
		_, fail := s.Exchange(r.Context(), p, Call{Route: route, Body: buf.Bytes()}, sink)
		switch {
		case fail != nil && fail.Status != 499 && !sink.started:
			fail.writeHTTP(w)
		case r.Context().Err() != nil:
			// The client left: nobody to tell.
		case fail == nil && !sink.started:
			// The engine began a stream and ended it before its first chunk: nothing was
			// written yet, so the status can say so.
			s.brokenStream(start).writeHTTP(w)
		case sink.streaming && !sink.ended:
			// The engine broke the stream off, or the request timeout cut it: say so, as
			// the WebSocket and gRPC fronts do. A plain end would read as a whole answer;
			// OpenAI's SDKs raise an error event as an APIError.
			sink.fail(s.brokenStream(start))
		}
	}
}

// readBody reads the body into buf, refusing more than MaxBodyBytes with 413.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, buf *bytes.Buffer) *Failure {
	limit := s.opts.MaxBodyBytes
	if r.ContentLength > limit {
		return tooLarge(limit)
	}
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit)); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return tooLarge(limit)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return &Failure{Status: http.StatusRequestTimeout, Type: apierror.TypeInvalidRequest, Code: "request_timeout",
				Message: fmt.Sprintf("the request body did not arrive within %s", s.opts.BodyTimeout), Reason: "bad_request"}
		}
		return badRequest("unreadable_body", "reading request body: %v", err)
	}
	return nil
}

// httpSink writes the engine's answer to an HTTP client: chunks as Server-Sent Events,
// each flushed at once, so the client sees a token as soon as the engine sends it.
type httpSink struct {
	w                http.ResponseWriter
	rc               *http.ResponseController
	started          bool // the status is written
	streaming, ended bool // an event stream began, and ended with [DONE]
	buf              []byte
}

func (h *httpSink) start() {
	if h.started {
		return
	}
	h.started, h.streaming = true, true
	hd := h.w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-cache")
	// Tells nginx-style proxies in front not to buffer the stream either.
	hd.Set("X-Accel-Buffering", "no")
	h.w.WriteHeader(http.StatusOK)
}

func (h *httpSink) Chunk(data []byte) error {
	h.start()
	h.buf = append(append(append(h.buf[:0], "data: "...), data...), "\n\n"...)
	if _, err := h.w.Write(h.buf); err != nil {
		return err
	}
	return h.rc.Flush()
}

func (h *httpSink) End() error {
	h.start()
	h.ended = true
	if _, err := io.WriteString(h.w, "data: [DONE]\n\n"); err != nil {
		return err
	}
	return h.rc.Flush()
}

// fail ends a stream with an error event (an OpenAI error object) and no [DONE].
func (h *httpSink) fail(f *Failure) { _ = h.Chunk(f.body()) }

func (h *httpSink) Complete(status int, contentType string, body []byte) error {
	h.started = true
	if contentType == "" {
		contentType = "application/json"
	}
	h.w.Header().Set("Content-Type", contentType)
	h.w.WriteHeader(status)
	_, err := h.w.Write(body)
	return err
}
