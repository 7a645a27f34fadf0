// Package testengine is a TEST DOUBLE of an OpenAI-compatible inference engine (a stand-in for
// vLLM, llama.cpp server, TGI and the like). It is not an engine: it generates no text, loads no
// model and has no tokenizer. It exists so that the HelixFlow data plane (`runtime serve`) can be
// tested and benchmarked against something that speaks the same HTTP API as a real engine, with
// deterministic answers and knobs for timing and failures.
//
// # Endpoints
//
//   - GET  /v1/models            the configured model names, OpenAI list shape.
//   - POST /v1/chat/completions  chat.completion, or chat.completion.chunk Server-Sent Events
//     with "stream": true.
//   - POST /v1/completions       text_completion, streamed the same way.
//   - POST /v1/embeddings        one deterministic unit vector per input ("float" or "base64").
//   - GET  /health               200 with an empty body, like vLLM (subject to Mode).
//
// # Deterministic token counts
//
// Prompt tokens are the number of whitespace-separated words (unicode.IsSpace, as
// strings.Fields splits) in:
//   - chat: the content of every message (a string, or the "text" of each text part of an array
//     of content parts), summed over all messages; roles and the chat template count nothing;
//   - completions: the prompt string(s); a prompt given as token ids counts one token per id;
//   - embeddings: the input string(s), or one token per id for token-id inputs.
//
// Completion tokens are the request's "max_completion_tokens" or "max_tokens" when positive,
// else Config.DefaultTokens. finish_reason is "length" when the request set a limit, else "stop".
// The completion text is that many tokens taken in order from a fixed word list (see TokenText),
// the first without a leading space and the others with one, so concatenating stream deltas gives
// exactly the non-stream content. usage is {prompt_tokens, completion_tokens, total_tokens} as
// OpenAI and vLLM return it (embeddings: {prompt_tokens, total_tokens}).
//
// # Streaming
//
// With "stream": true the answer is "text/event-stream": each chunk is written as
// "data: <json>\n\n" and flushed on its own; the stream ends with "data: [DONE]\n\n". Chat
// streams send a first chunk with delta {"role":"assistant","content":""} after
// Config.FirstTokenDelay, then one chunk per token, each Config.ChunkInterval after the previous
// one, then a chunk with an empty delta and the finish_reason. When the request has
// "stream_options": {"include_usage": true}, a last chunk with "choices": [] and the usage
// follows (as OpenAI and vLLM send it); without it the stream carries no usage at all.
// Completion streams are the same without the role chunk. A client disconnect (request context
// cancelled, or a failed write) stops the stream and is recorded (StreamRecord.Cancelled).
//
// Non-stream answers take the same time as the stream would (FirstTokenDelay + tokens x
// ChunkInterval), so timeouts can be tested without streaming; with both set to zero they are
// answered at once, which is what the "direct" baseline of the data-plane benchmark uses.
//
// # Knobs and recording
//
// Mode (settable while serving, SetMode) makes every endpoint, /health included, answer normally,
// fail with 500, hang until the client gives up, or (streams) stall after the first chunk.
// With Config.Record the engine keeps every request body it received (Requests) and, for
// every stream, the instant each chunk was flushed (Streams); hooks (OnRequest, OnChunk,
// OnStreamEnd) see the same records as they happen. Recording is off by default so the
// non-stream path stays cheap.
package testengine

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Mode selects how the test engine answers. It applies to every endpoint, /health included.
type Mode int32

const (
	// ModeNormal answers as described in the package documentation.
	ModeNormal Mode = iota
	// ModeFail answers every request with Config.FailStatus (default 500) and an OpenAI-shaped
	// error body.
	ModeFail
	// ModeHang reads the request and then writes nothing until the client goes away (or the
	// engine is closed), like an engine that is wedged.
	ModeHang
	// ModeStall answers streams with headers and the first chunk, then writes nothing more
	// until the client goes away (or the engine is closed). Non-stream requests hang as in
	// ModeHang.
	ModeStall
)

// String returns the flag spelling of m.
func (m Mode) String() string {
	switch m {
	case ModeNormal:
		return "normal"
	case ModeFail:
		return "fail"
	case ModeHang:
		return "hang"
	case ModeStall:
		return "stall"
	}
	return fmt.Sprintf("Mode(%d)", int32(m))
}

// ParseMode parses the flag spelling of a Mode ("normal", "fail", "hang", "stall").
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{ModeNormal, ModeFail, ModeHang, ModeStall} {
		if m.String() == s {
			return m, nil
		}
	}
	return ModeNormal, fmt.Errorf("unknown mode %q (want normal, fail, hang or stall)", s)
}

// Defaults used when the Config field is zero.
const (
	DefaultModel        = "test-model"
	DefaultTokens       = 16
	DefaultEmbeddingDim = 8
	DefaultMaxBodyBytes = 8 << 20
	ownedBy             = "helixflow-test-engine"
)

// Config configures a test engine. The zero value serves DefaultModel with no delays.
type Config struct {
	// Models are the served model names (GET /v1/models, and the only names accepted in
	// requests). Empty means []string{DefaultModel}.
	Models []string
	// DefaultTokens is the completion length when a request sets neither max_tokens nor
	// max_completion_tokens. Zero means DefaultTokens.
	DefaultTokens int
	// ChunkInterval is the time between two stream chunks (and, per token, the duration of
	// a non-stream generation).
	ChunkInterval time.Duration
	// FirstTokenDelay is the time before the first chunk of a stream (and before a
	// non-stream generation starts).
	FirstTokenDelay time.Duration
	// Mode is the initial Mode; SetMode changes it while serving.
	Mode Mode
	// FailStatus is the HTTP status of ModeFail answers. Zero means 500.
	FailStatus int
	// EmbeddingDim is the length of each embedding vector. Zero means DefaultEmbeddingDim.
	EmbeddingDim int
	// MaxBodyBytes caps request bodies (413 above it). Zero means DefaultMaxBodyBytes.
	MaxBodyBytes int64

	// Record keeps every request (Requests) and every stream with its chunk flush instants
	// (Streams) in memory.
	Record bool
	// OnRequest, when set, is called with each request once its body has been read, before
	// it is answered. The header and body are copies: the hook may keep them.
	OnRequest func(req RecordedRequest)
	// OnChunk, when set, is called right after each stream chunk has been flushed.
	OnChunk func(streamID string, chunk ChunkRecord)
	// OnStreamEnd, when set, is called once per stream when it ends, completed or cancelled.
	OnStreamEnd func(stream StreamRecord)
}

// RecordedRequest is one request as the test engine received it.
type RecordedRequest struct {
	// Method and Path of the request (Path without the query).
	Method, Path string
	// Header is a copy of the request headers.
	Header http.Header
	// Body is the exact request body.
	Body []byte
	// Received is when the body had been read.
	Received time.Time
}

// ChunkRecord is one Server-Sent Event the test engine flushed.
type ChunkRecord struct {
	// Index counts the chunks of a stream from 0; the final "[DONE]" event is included.
	Index int
	// Data is the event payload, the JSON chunk without "data: " and the blank line
	// ("[DONE]" for the last event).
	Data []byte
	// FlushedAt is the instant right after the chunk was written and flushed.
	FlushedAt time.Time
}

// StreamRecord is one streamed answer.
type StreamRecord struct {
	// ID is the chunk "id" field shared by all the chunks of the stream.
	ID string
	// Path and Model of the request.
	Path, Model string
	// Started is when the request was accepted; Ended when the stream stopped.
	Started, Ended time.Time
	// Chunks are the events flushed, in order.
	Chunks []ChunkRecord
	// Done is true when "data: [DONE]" was flushed.
	Done bool
	// Cancelled is true when the client went away (context cancelled or a write failed)
	// before the stream completed.
	Cancelled bool
}

// Stats are counters the engine always keeps (cheap atomics, recording or not).
type Stats struct {
	Requests, Streams, CompletedStreams, CancelledRequests int64
}

// Engine is the test double. It is an http.Handler; use New and serve it with any server,
// or NewTestServer in tests.
type Engine struct {
	cfg        Config
	mode       atomic.Int32
	seq        atomic.Uint64
	closed     chan struct{}
	closeOnce  sync.Once
	modelsJSON []byte
	models     map[string]struct{}

	requests, streams, completed, cancelled atomic.Int64

	mu          sync.Mutex
	recRequests []RecordedRequest
	recStreams  []StreamRecord
}

// New returns a test engine for cfg (defaults applied).
func New(cfg Config) *Engine {
	if len(cfg.Models) == 0 {
		cfg.Models = []string{DefaultModel}
	}
	if cfg.DefaultTokens <= 0 {
		cfg.DefaultTokens = DefaultTokens
	}
	if cfg.FailStatus == 0 {
		cfg.FailStatus = http.StatusInternalServerError
	}
	if cfg.EmbeddingDim <= 0 {
		cfg.EmbeddingDim = DefaultEmbeddingDim
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	e := &Engine{cfg: cfg, closed: make(chan struct{}), models: make(map[string]struct{}, len(cfg.Models))}
	e.mode.Store(int32(cfg.Mode))
	created := time.Now().Unix()
	b := []byte(`{"object":"list","data":[`)
	for i, m := range cfg.Models {
		e.models[m] = struct{}{}
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":`...)
		b = appendJSONString(b, m)
		b = append(b, `,"object":"model","created":`...)
		b = fmt.Appendf(b, "%d", created)
		b = append(b, `,"owned_by":"`+ownedBy+`","root":`...)
		b = appendJSONString(b, m)
		b = append(b, `,"parent":null}`...)
	}
	b = append(b, "]}"...)
	e.modelsJSON = b
	return e
}

// Config returns the configuration in use, defaults applied.
func (e *Engine) Config() Config { return e.cfg }

// Mode returns the current mode.
func (e *Engine) Mode() Mode { return Mode(e.mode.Load()) }

// SetMode changes how the engine answers from the next request on (streams already past
// their mode check go on as they were).
func (e *Engine) SetMode(m Mode) { e.mode.Store(int32(m)) }

// Close releases every request held by ModeHang or ModeStall (they end as cancelled) and makes
// later ones answer 503. Call it before closing the HTTP server, which waits for handlers.
func (e *Engine) Close() { e.closeOnce.Do(func() { close(e.closed) }) }

// Stats returns the counters.
func (e *Engine) Stats() Stats {
	return Stats{
		Requests:          e.requests.Load(),
		Streams:           e.streams.Load(),
		CompletedStreams:  e.completed.Load(),
		CancelledRequests: e.cancelled.Load(),
	}
}

// Requests returns the recorded requests (Config.Record), oldest first.
func (e *Engine) Requests() []RecordedRequest {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]RecordedRequest(nil), e.recRequests...)
}

// Streams returns the recorded streams that have ended (Config.Record), in the order they
// ended.
func (e *Engine) Streams() []StreamRecord {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]StreamRecord(nil), e.recStreams...)
}

// Reset forgets the recorded requests and streams (the Stats counters are kept).
func (e *Engine) Reset() {
	e.mu.Lock()
	e.recRequests, e.recStreams = nil, nil
	e.mu.Unlock()
}

// NewTestServer starts cfg's engine on an httptest-style loopback server and returns the
// engine and its base URL (like "http://127.0.0.1:34567", without /v1). Both are closed when
// the test ends.
func NewTestServer(tb testing.TB, cfg Config) (*Engine, string) {
	tb.Helper()
	e := New(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("test engine: listen: %v", err)
	}
	srv := &http.Server{Handler: e, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	tb.Cleanup(func() {
		e.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			_ = srv.Close()
		}
	})
	return e, "http://" + ln.Addr().String()
}

// ServeHTTP implements http.Handler.
func (e *Engine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.requests.Add(1)
	switch r.URL.Path {
	case "/health":
		e.serveHealth(w, r)
	case "/v1/models":
		if r.Method != http.MethodGet {
			writeError(w, http.StatusMethodNotAllowed, "method not allowed", "invalid_request_error", "")
			return
		}
		if e.failOrHang(w, r) {
			return
		}
		h := w.Header()
		h["Content-Type"] = jsonContentType
		_, _ = w.Write(e.modelsJSON)
	case "/v1/chat/completions":
		e.serveGenerate(w, r, kindChat)
	case "/v1/completions":
		e.serveGenerate(w, r, kindCompletion)
	case "/v1/embeddings":
		e.serveEmbeddings(w, r)
	default:
		writeError(w, http.StatusNotFound, "unknown path "+r.URL.Path, "invalid_request_error", "")
	}
}

var jsonContentType = []string{"application/json"}

func (e *Engine) serveHealth(w http.ResponseWriter, r *http.Request) {
	if e.failOrHang(w, r) {
		return
	}
	w.WriteHeader(http.StatusOK)
}

// failOrHang answers per the current mode when it is not ModeNormal (ModeStall hangs like
// ModeHang outside streams) and reports whether it did.
func (e *Engine) failOrHang(w http.ResponseWriter, r *http.Request) bool {
	if e.failed(w) {
		return true
	}
	if e.Mode() == ModeNormal {
		return false
	}
	e.wait(r.Context())
	e.cancelled.Add(1)
	return true
}

// failed writes the error answer of a closed engine or of ModeFail and reports whether it did.
func (e *Engine) failed(w http.ResponseWriter) bool {
	select {
	case <-e.closed:
		writeError(w, http.StatusServiceUnavailable, "test engine is closed", "internal_error", "")
		return true
	default:
	}
	if e.Mode() == ModeFail {
		writeError(w, e.cfg.FailStatus, "test engine: failure injected (mode fail)", "internal_error", "")
		return true
	}
	return false
}

// wait blocks until the client goes away or the engine is closed.
func (e *Engine) wait(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-e.closed:
	}
}

type kind int

const (
	kindChat kind = iota
	kindCompletion
)

// request is the subset of an OpenAI request body the test engine looks at. Everything else
// (temperature, top_p, stop, n, tools, ...) is accepted and ignored.
type request struct {
	Model               string          `json:"model"`
	Messages            []message       `json:"messages"`
	Prompt              json.RawMessage `json:"prompt"`
	Input               json.RawMessage `json:"input"`
	MaxTokens           int             `json:"max_tokens"`
	MaxCompletionTokens int             `json:"max_completion_tokens"`
	Stream              bool            `json:"stream"`
	StreamOptions       *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	EncodingFormat string `json:"encoding_format"`
	Dimensions     int    `json:"dimensions"`
}

type message struct {
	// Content is decoded straight into its word count (see contentWords).
	Content contentWords `json:"content"`
}

// scratch holds the per-request buffers, pooled so the non-stream path allocates little.
type scratch struct {
	body, out []byte
}

var scratchPool = sync.Pool{New: func() any {
	return &scratch{body: make([]byte, 0, 4096), out: make([]byte, 0, 4096)}
}}

func getScratch() *scratch { return scratchPool.Get().(*scratch) }

func putScratch(s *scratch) {
	if cap(s.body) > 1<<20 || cap(s.out) > 1<<20 {
		return // let a rare huge buffer go
	}
	s.body, s.out = s.body[:0], s.out[:0]
	scratchPool.Put(s)
}

// readAll appends everything r yields to b, reading at most limit+1 bytes.
func readAll(r io.Reader, b []byte, limit int64) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		room := cap(b) - len(b)
		if rest := limit + 1 - int64(len(b)); int64(room) > rest {
			room = int(rest)
		}
		n, err := r.Read(b[len(b) : len(b)+room])
		b = b[:len(b)+n]
		if err == io.EOF || int64(len(b)) > limit {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// readRequest reads and decodes the body into s.body and req. On failure it has written the
// error answer and returns false.
func (e *Engine) readRequest(w http.ResponseWriter, r *http.Request, s *scratch, req *request) bool {
	if r.Method != http.MethodPost {
		writeError(w, http.StatusMethodNotAllowed, "method not allowed", "invalid_request_error", "")
		return false
	}
	var err error
	if s.body, err = readAll(r.Body, s.body[:0], e.cfg.MaxBodyBytes); err != nil {
		writeError(w, http.StatusBadRequest, "reading the request body: "+err.Error(), "invalid_request_error", "")
		return false
	}
	if int64(len(s.body)) > e.cfg.MaxBodyBytes {
		writeError(w, http.StatusRequestEntityTooLarge, "request body too large", "invalid_request_error", "")
		return false
	}
	if e.cfg.Record || e.cfg.OnRequest != nil {
		rr := RecordedRequest{
			Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(),
			Body: bytes.Clone(s.body), Received: time.Now(),
		}
		if e.cfg.Record {
			e.mu.Lock()
			e.recRequests = append(e.recRequests, rr)
			e.mu.Unlock()
		}
		if e.cfg.OnRequest != nil {
			e.cfg.OnRequest(rr)
		}
	}
	if err := json.Unmarshal(s.body, req); err != nil {
		writeError(w, http.StatusBadRequest, "malformed JSON body: "+err.Error(), "invalid_request_error", "")
		return false
	}
	if req.Model == "" {
		writeError(w, http.StatusBadRequest, "you must provide a model parameter", "invalid_request_error", "")
		return false
	}
	if _, ok := e.models[req.Model]; !ok {
		writeError(w, http.StatusNotFound, "The model `"+req.Model+"` does not exist.", "invalid_request_error", "model_not_found")
		return false
	}
	return true
}

func (e *Engine) serveGenerate(w http.ResponseWriter, r *http.Request, k kind) {
	s := getScratch()
	defer putScratch(s)
	var req request
	if !e.readRequest(w, r, s, &req) {
		return
	}
	var prompt int
	var err error
	if k == kindChat {
		if len(req.Messages) == 0 {
			writeError(w, http.StatusBadRequest, "messages must not be empty", "invalid_request_error", "")
			return
		}
		prompt = countMessages(req.Messages)
	} else {
		if len(req.Prompt) == 0 {
			writeError(w, http.StatusBadRequest, "prompt is required", "invalid_request_error", "")
			return
		}
		prompt, err = countInput(req.Prompt)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error(), "invalid_request_error", "")
		return
	}
	n, finish := e.cfg.DefaultTokens, "stop"
	if req.MaxCompletionTokens > 0 {
		n, finish = req.MaxCompletionTokens, "length"
	} else if req.MaxTokens > 0 {
		n, finish = req.MaxTokens, "length"
	}
	g := generation{kind: k, model: req.Model, prompt: prompt, tokens: n, finish: finish, created: time.Now().Unix(), seq: e.seq.Add(1)}
	if req.Stream {
		g.includeUsage = req.StreamOptions != nil && req.StreamOptions.IncludeUsage
		e.stream(w, r, &g)
		return
	}
	if e.failOrHang(w, r) {
		return
	}
	if d := e.cfg.FirstTokenDelay + time.Duration(n)*e.cfg.ChunkInterval; d > 0 {
		if !e.sleep(r.Context(), d) {
			e.cancelled.Add(1)
			return
		}
	}
	s.out = g.appendResponse(s.out[:0])
	h := w.Header()
	h["Content-Type"] = jsonContentType
	_, _ = w.Write(s.out)
}

// appendID appends the "id" of generation seq: "chatcmpl-test-<seq>" or "cmpl-test-<seq>".
func appendID(b []byte, k kind, seq uint64) []byte {
	if k == kindCompletion {
		b = append(b, "cmpl-test-"...)
	} else {
		b = append(b, "chatcmpl-test-"...)
	}
	return strconv.AppendUint(b, seq, 10)
}

// sleep waits d, or less if ctx ends or the engine closes; it reports whether d elapsed.
func (e *Engine) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-e.closed:
		return false
	}
}

// generation is one answer being produced.
type generation struct {
	kind         kind
	seq          uint64 // the id is appendID(kind, seq)
	model        string
	prompt       int
	tokens       int
	finish       string
	created      int64
	includeUsage bool
}

func (g *generation) object() string {
	if g.kind == kindChat {
		return "chat.completion"
	}
	return "text_completion"
}

func (g *generation) appendHead(b []byte, object string) []byte {
	b = append(b, `{"id":"`...)
	b = appendID(b, g.kind, g.seq)
	b = append(b, `","object":"`...)
	b = append(b, object...)
	b = append(b, `","created":`...)
	b = appendInt(b, g.created)
	b = append(b, `,"model":`...)
	return appendJSONString(b, g.model)
}

func (g *generation) appendUsage(b []byte) []byte {
	b = append(b, `"usage":{"prompt_tokens":`...)
	b = appendInt(b, int64(g.prompt))
	b = append(b, `,"completion_tokens":`...)
	b = appendInt(b, int64(g.tokens))
	b = append(b, `,"total_tokens":`...)
	b = appendInt(b, int64(g.prompt+g.tokens))
	return append(b, '}')
}

// appendResponse appends the non-stream JSON answer.
func (g *generation) appendResponse(b []byte) []byte {
	b = g.appendHead(b, g.object())
	if g.kind == kindChat {
		b = append(b, `,"choices":[{"index":0,"message":{"role":"assistant","content":`...)
		b = appendCompletionText(b, g.tokens)
		b = append(b, `},"logprobs":null,"finish_reason":"`...)
	} else {
		b = append(b, `,"choices":[{"index":0,"text":`...)
		b = appendCompletionText(b, g.tokens)
		b = append(b, `,"logprobs":null,"finish_reason":"`...)
	}
	b = append(b, g.finish...)
	b = append(b, `"}],`...)
	b = g.appendUsage(b)
	return append(b, '}')
}

// appendChunk appends one stream chunk: role (chat only) when token < 0, the token's delta
// when 0 <= token < g.tokens, the finish chunk when token == g.tokens, the usage chunk after.
func (g *generation) appendChunk(b []byte, token int) []byte {
	object := "chat.completion.chunk"
	if g.kind == kindCompletion {
		object = "text_completion"
	}
	b = g.appendHead(b, object)
	switch {
	case token > g.tokens:
		b = append(b, `,"choices":[],`...)
		b = g.appendUsage(b)
		return append(b, '}')
	case g.kind == kindChat:
		b = append(b, `,"choices":[{"index":0,"delta":{`...)
		switch {
		case token < 0:
			b = append(b, `"role":"assistant","content":""`...)
		case token < g.tokens:
			b = append(b, `"content":`...)
			b = appendJSONString(b, TokenText(token))
		}
		b = append(b, `},"logprobs":null,"finish_reason":`...)
	default:
		b = append(b, `,"choices":[{"index":0,"text":`...)
		if token < g.tokens {
			b = appendJSONString(b, TokenText(token))
		} else {
			b = append(b, `""`...)
		}
		b = append(b, `,"logprobs":null,"finish_reason":`...)
	}
	if token == g.tokens {
		b = append(b, '"')
		b = append(b, g.finish...)
		b = append(b, '"')
	} else {
		b = append(b, "null"...)
	}
	return append(b, "}]}"...)
}

var (
	sseData = []byte("data: ")
	sseEnd  = []byte("\n\n")
	sseDone = []byte("[DONE]")
)

// stream answers g as Server-Sent Events. A stream that hangs (ModeHang) or stalls (ModeStall)
// is recorded as a cancelled stream when the client gives up; a failed one (ModeFail) is not a
// stream and is not recorded.
func (e *Engine) stream(w http.ResponseWriter, r *http.Request, g *generation) {
	if e.failed(w) {
		return
	}
	mode := e.Mode()
	e.streams.Add(1)
	id := string(appendID(nil, g.kind, g.seq))
	rec := StreamRecord{ID: id, Path: r.URL.Path, Model: g.model, Started: time.Now()}
	ctx := r.Context()
	end := func(cancelled bool) {
		rec.Ended, rec.Cancelled, rec.Done = time.Now(), cancelled, !cancelled
		if cancelled {
			e.cancelled.Add(1)
		} else {
			e.completed.Add(1)
		}
		if e.cfg.Record {
			e.mu.Lock()
			e.recStreams = append(e.recStreams, rec)
			e.mu.Unlock()
		}
		if e.cfg.OnStreamEnd != nil {
			e.cfg.OnStreamEnd(rec)
		}
	}
	if mode == ModeHang {
		e.wait(ctx)
		end(true)
		return
	}

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	keep := e.cfg.Record || e.cfg.OnChunk != nil
	var line []byte
	index := 0
	send := func(data []byte) bool {
		line = append(line[:0], sseData...)
		line = append(line, data...)
		line = append(line, sseEnd...)
		if _, err := w.Write(line); err != nil {
			return false
		}
		if err := rc.Flush(); err != nil {
			return false
		}
		if keep {
			c := ChunkRecord{Index: index, Data: bytes.Clone(data), FlushedAt: time.Now()}
			if e.cfg.Record {
				rec.Chunks = append(rec.Chunks, c)
			}
			if e.cfg.OnChunk != nil {
				e.cfg.OnChunk(id, c)
			}
		}
		index++
		return true
	}

	first := 0 // index of the first chunk: the role chunk for chat
	if g.kind == kindChat {
		first = -1
	}
	last := g.tokens // the finish chunk
	if g.includeUsage {
		last++ // the usage chunk
	}
	var chunk []byte
	for i := first; i <= last; i++ {
		var wait time.Duration
		switch {
		case i == first:
			wait = e.cfg.FirstTokenDelay
		case i < g.tokens:
			wait = e.cfg.ChunkInterval
		}
		if wait > 0 && !e.sleep(ctx, wait) {
			end(true)
			return
		}
		if ctx.Err() != nil {
			end(true)
			return
		}
		chunk = g.appendChunk(chunk[:0], i)
		if !send(chunk) {
			end(true)
			return
		}
		if mode == ModeStall {
			e.wait(ctx)
			end(true)
			return
		}
	}
	if !send(sseDone) {
		end(true)
		return
	}
	end(false)
}

func (e *Engine) serveEmbeddings(w http.ResponseWriter, r *http.Request) {
	s := getScratch()
	defer putScratch(s)
	var req request
	if !e.readRequest(w, r, s, &req) {
		return
	}
	inputs, err := embeddingInputs(req.Input)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error(), "invalid_request_error", "")
		return
	}
	dim := e.cfg.EmbeddingDim
	if req.Dimensions > 0 {
		dim = req.Dimensions
	}
	var base64 bool
	switch req.EncodingFormat {
	case "", "float":
	case "base64":
		base64 = true
	default:
		writeError(w, http.StatusBadRequest, "encoding_format must be float or base64", "invalid_request_error", "")
		return
	}
	if e.failOrHang(w, r) {
		return
	}
	if d := e.cfg.FirstTokenDelay; d > 0 && !e.sleep(r.Context(), d) {
		e.cancelled.Add(1)
		return
	}
	tokens := 0
	b := s.out[:0]
	b = append(b, `{"object":"list","data":[`...)
	vec := make([]float32, dim)
	for i, in := range inputs {
		tokens += in.tokens
		Embedding(vec, in.seed)
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"object":"embedding","index":`...)
		b = appendInt(b, int64(i))
		b = append(b, `,"embedding":`...)
		if base64 {
			b = appendBase64Floats(b, vec)
		} else {
			b = appendFloats(b, vec)
		}
		b = append(b, '}')
	}
	b = append(b, `],"model":`...)
	b = appendJSONString(b, req.Model)
	b = append(b, `,"usage":{"prompt_tokens":`...)
	b = appendInt(b, int64(tokens))
	b = append(b, `,"total_tokens":`...)
	b = appendInt(b, int64(tokens))
	b = append(b, "}}"...)
	h := w.Header()
	h["Content-Type"] = jsonContentType
	_, _ = w.Write(b)
	s.out = b
}

// writeError writes an OpenAI-shaped error: {"error":{"message","type","param","code"}}.
func writeError(w http.ResponseWriter, status int, msg, typ, code string) {
	b := make([]byte, 0, 128+len(msg))
	b = append(b, `{"error":{"message":`...)
	b = appendJSONString(b, msg)
	b = append(b, `,"type":`...)
	b = appendJSONString(b, typ)
	b = append(b, `,"param":null,"code":`...)
	if code == "" {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, code)
	}
	b = append(b, "}}"...)
	h := w.Header()
	h["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
