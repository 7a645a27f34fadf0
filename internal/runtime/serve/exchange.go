package serve

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
)

// Routes the engine serves that the runtime forwards.
const (
	RouteChatCompletions = "/v1/chat/completions"
	RouteCompletions     = "/v1/completions"
	RouteEmbeddings      = "/v1/embeddings"
)

// maxResponseBytes caps a non-streamed engine answer held in memory (a large embeddings
// batch is the biggest legitimate one).
const maxResponseBytes = 64 << 20

// Usage is the engine's token count for one call.
type Usage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

// Sink receives the engine's answer to one call, in the shape each front needs.
type Sink interface {
	// Chunk is one streamed chunk: the JSON object of an SSE data line, as the engine sent it.
	Chunk(data []byte) error
	// End follows the last chunk of a stream.
	End() error
	// Complete is a whole answer (not streamed, or an engine error): status, type and body.
	Complete(status int, contentType string, body []byte) error
}

// Call is one inference call as a front received it: the route and the OpenAI JSON body.
type Call struct {
	Route string
	Body  []byte
	// parsed is what a front already read of Body (the fast HTTP path does, to route the
	// call), so that it is not parsed twice; valid when hasParsed.
	parsed    callFields
	hasParsed bool
	// abort ends the call early, for a front whose context is not cancellable; nil for others.
	abort *callAbort
}

// callFields are what the runtime reads of a request body.
type callFields struct {
	model             []byte
	stream, wantUsage bool
}

// fields returns what the runtime reads of the call's body.
func (c Call) fields() (callFields, error) {
	if c.hasParsed {
		return c.parsed, nil
	}
	return readFields(c.Body)
}

func readFields(body []byte) (callFields, error) {
	model, stream, wantUsage, err := parseCall(body)
	return callFields{model: model, stream: stream, wantUsage: wantUsage}, err
}

// Outcome is what a completed call did, for metrics and logs.
type Outcome struct {
	Status int
	Usage  Usage
	// streamEnded is true when the engine finished a stream: the sink's End is due, once
	// the usage is settled (so a client that reads the end and asks again sees it counted).
	streamEnded bool
}

// errClientGone means the client stopped reading a stream.
var errClientGone = errors.New("client went away")

// Exchange runs one inference call for p: model and scope checks, the key's limits, the
// engine call, the answer to sink, then usage and limits settled. HTTP, WebSocket and gRPC
// all go through it, so the rules are the same whichever way a client comes in.
func (s *Server) Exchange(ctx context.Context, p *auth.Principal, call Call, sink Sink) (Outcome, *Failure) {
	s.exchanges.Add(1)
	defer s.exchanges.Add(-1)
	start := time.Now()
	st := s.model.Load()
	fields, err := call.fields()
	model, stream, wantUsage := fields.model, fields.stream, fields.wantUsage
	var fe fieldError
	switch {
	case errors.As(err, &fe):
		return s.reject(st, p, badRequest("invalid_field", "%s", fe))
	case err != nil:
		return s.reject(st, p, badRequest("invalid_json", "request body is not a valid JSON object: %v", err))
	}
	if !st.known && s.opts.Kube != nil {
		return s.reject(st, p, errNotReady)
	}
	if len(model) == 0 {
		return s.reject(st, p, badRequest("missing_model", "request body has no \"model\""))
	}
	if string(model) != st.name {
		return s.reject(st, p, modelNotFound(string(model)))
	}
	if !p.HasScope(servingv1alpha1.ScopeInference) {
		return s.reject(st, p, fromAuth(auth.ErrScopeMissing(servingv1alpha1.ScopeInference)))
	}
	if !p.AllowsModel(st.name) {
		return s.reject(st, p, fromAuth(auth.ErrModelNotAllowed(st.name)))
	}
	adm, fail := s.limits.Admit(p)
	if fail != nil {
		return s.reject(st, p, fail)
	}
	cm := s.metrics.forCall(st.name, call.Route, p.KeyID)
	cm.inFlight.Inc()
	released := false
	defer func() {
		if !released {
			// A panic is unwinding, which the front recovers: give back the key's
			// concurrency slot and the gauge, or each one would hold them until a restart.
			cm.inFlight.Dec()
			adm.Done(0)
		}
	}()
	body := call.Body
	if stream && !wantUsage {
		// Exact usage needs the engine's count for streams too: ask for it, and strip the
		// extra chunk from what the client sees.
		body = withIncludeUsage(body)
	}
	uc := upCall{ctx: ctx, deadline: start.Add(s.opts.RequestTimeout), abort: call.abort}
	if dl, ok := ctx.Deadline(); ok && dl.Before(uc.deadline) {
		uc.deadline = dl
	}
	out, fail := s.forward(uc, st, call.Route, body, stream, wantUsage, sink, start)
	released = true
	cm.inFlight.Dec()
	adm.Done(out.Usage.PromptTokens + out.Usage.CompletionTokens)
	s.settle(st, p, cm, call.Route, out, fail, start)
	if out.streamEnded {
		_ = sink.End() // a client gone by now has its usage counted all the same
	}
	return out, fail
}

// countRejection counts a request refused before the engine saw it; keyID is the caller's
// public key ID where known (for a refused known key, the Failure names it).
func (s *Server) countRejection(f *Failure, keyID string) {
	s.metrics.Rejections.WithLabelValues(s.model.Load().name, f.Reason, keyID).Inc()
}

// reject counts a call refused before the engine saw it.
func (s *Server) reject(st *modelState, p *auth.Principal, f *Failure) (Outcome, *Failure) {
	s.metrics.Rejections.WithLabelValues(st.name, f.Reason, p.KeyID).Inc()
	return Outcome{Status: f.Status}, f
}

// settle records what a call used: metrics, and usage for the manager's aggregator.
func (s *Server) settle(st *modelState, p *auth.Principal, cm *callMetrics, route string, out Outcome, fail *Failure, start time.Time) {
	status := out.Status
	if fail != nil {
		status = fail.Status
	}
	if status == http.StatusOK {
		cm.ok.Inc()
	} else {
		s.metrics.Requests.WithLabelValues(st.name, route, s.metrics.code(status), p.KeyID).Inc()
	}
	cm.latency.Observe(time.Since(start).Seconds())
	u := out.Usage
	if u.PromptTokens == 0 && u.CompletionTokens == 0 {
		return
	}
	cm.prompt.Add(float64(u.PromptTokens))
	cm.completion.Add(float64(u.CompletionTokens))
	if p.Name != "" && s.usage != nil {
		s.usage.Record(p.Namespace, p.Name, p.UID, u.PromptTokens, u.CompletionTokens)
	}
}

// withIncludeUsage sets stream_options.include_usage in a JSON object body. The common case
// (no stream_options) is an append; otherwise the object is re-encoded.
func withIncludeUsage(body []byte) []byte {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return body // Exchange already parsed it; unreachable in practice
	}
	opts := map[string]json.RawMessage{}
	if raw, ok := fields["stream_options"]; ok && !bytes.Equal(raw, []byte("null")) {
		_ = json.Unmarshal(raw, &opts)
	}
	opts["include_usage"] = json.RawMessage("true")
	enc, _ := json.Marshal(opts)
	fields["stream_options"] = enc
	out, err := json.Marshal(fields)
	if err != nil {
		return body
	}
	return out
}

// forward sends the call to the engine and relays its answer.
func (s *Server) forward(call upCall, st *modelState, route string, body []byte, stream, wantUsage bool, sink Sink, start time.Time) (Outcome, *Failure) {
	accept := "application/json"
	if stream {
		accept = "text/event-stream"
	}
	resp, err := s.up.post(call, route, body, accept)
	if err != nil {
		return Outcome{}, s.upstreamError(st, call, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if stream && resp.StatusCode == http.StatusOK && isEventStream(resp.ContentType) {
		u, err := s.relayStream(st, resp.Body, wantUsage, sink, start)
		out := Outcome{Status: http.StatusOK, Usage: u, streamEnded: err == nil}
		// requests_total counts a stream by how it ended, though its 200 went out first.
		switch {
		case err == nil:
		case errors.Is(err, errClientGone) || clientLeft(call):
			out.Status = 499
		default:
			s.metrics.UpstreamErrors.WithLabelValues(st.name, "stream").Inc()
			out.Status = s.brokenStream(start).Status
		}
		return out, nil
	}
	if !stream && resp.StatusCode == http.StatusOK && isEventStream(resp.ContentType) {
		// The engine read a stream in a call the runtime read as none (parseCall refuses
		// every such body it knows of): its usage would go unmetered, so nothing is passed on.
		s.metrics.UpstreamErrors.WithLabelValues(st.name, "stream").Inc()
		return Outcome{}, upstreamFailure(http.StatusBadGateway, "the engine streamed its answer to a call that did not ask for a stream")
	}
	if resp.Length > maxResponseBytes {
		return Outcome{}, errAnswerTooLarge()
	}
	var src io.Reader = resp.Body // a declared length is already within the cap
	if resp.Length < 0 {
		src = io.LimitReader(resp.Body, maxResponseBytes+1)
	}
	buf := bodyPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer bodyPool.Put(buf)
	if _, err := buf.ReadFrom(src); err != nil {
		return Outcome{}, s.upstreamError(st, call, err)
	}
	data := buf.Bytes()
	if len(data) > maxResponseBytes {
		return Outcome{}, errAnswerTooLarge()
	}
	out := Outcome{Status: resp.StatusCode}
	contentType := resp.ContentType
	switch {
	case resp.StatusCode == http.StatusOK:
		out.Usage = usageOf(data)
	case resp.StatusCode >= 400:
		s.metrics.UpstreamErrors.WithLabelValues(st.name, "status").Inc()
		if !isOpenAIError(data) {
			// An engine's own error shape (TGI's {"error": "..."}, plain text) is rewritten as
			// OpenAI's, with the engine's message and status, so SDKs read it as any other.
			data, contentType = engineFailure(resp.StatusCode, data).body(), "application/json"
		}
	}
	_ = sink.Complete(resp.StatusCode, contentType, data)
	return out, nil
}

// isOpenAIError reports whether body is an OpenAI error: {"error": {"message": "...", ...}}.
func isOpenAIError(body []byte) bool {
	var v struct {
		Error *struct {
			Message *string `json:"message"`
		} `json:"error"`
	}
	return json.Unmarshal(body, &v) == nil && v.Error != nil && v.Error.Message != nil
}

func errAnswerTooLarge() *Failure {
	return upstreamFailure(http.StatusBadGateway, "engine answer is larger than %d bytes", maxResponseBytes)
}

// upstreamError maps a failed engine call: the client leaving is not the engine's fault;
// the request timeout is 504; anything else (refused, reset) is 502.
func (s *Server) upstreamError(st *modelState, call upCall, err error) *Failure {
	switch {
	case clientLeft(call):
		return &Failure{Status: 499, Type: "client_closed", Code: "client_closed", Message: "client closed the request", Reason: "client_closed"}
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) || errors.Is(call.ctx.Err(), context.DeadlineExceeded):
		s.metrics.UpstreamErrors.WithLabelValues(st.name, "timeout").Inc()
		return upstreamFailure(http.StatusGatewayTimeout, "the engine did not answer within %s", s.opts.RequestTimeout)
	}
	s.metrics.UpstreamErrors.WithLabelValues(st.name, "connect").Inc()
	return upstreamFailure(http.StatusBadGateway, "the engine is unreachable: %v", unwrapURLError(err))
}

// clientLeft reports whether call ended because its client went away (not the engine's
// fault, and not the request timeout, which is a deadline).
func clientLeft(call upCall) bool {
	return errors.Is(context.Cause(call.ctx), context.Canceled) || call.abort.isAborted()
}

// unwrapURLError drops the URL from a client error: it is the engine's loopback address,
// of no use to a remote client.
func unwrapURLError(err error) error {
	if u := errors.Unwrap(err); u != nil {
		return u
	}
	return err
}

func isEventStream(contentType string) bool {
	return len(contentType) >= 17 && contentType[:17] == "text/event-stream"
}

var (
	dataPrefix = []byte("data:")
	doneMarker = []byte("[DONE]")
	usageKey   = []byte(`"usage"`)
)

// relayStream passes the engine's SSE chunks to sink one by one as they arrive (no
// buffering beyond one line), takes the usage from the usage chunk, and drops that chunk
// when the client did not ask for it. It returns nil when the engine ended the stream
// ([DONE] or EOF); the caller then ends it for the client.
//
// A stream that ends without the usage chunk (the client left, the engine broke it off or
// ran past the request timeout, or the engine does not send usage) is charged one
// completion token per chunk with output: a lower bound, as each such chunk holds at least
// one token. Its prompt cannot be counted without the engine.
func (s *Server) relayStream(st *modelState, body io.Reader, wantUsage bool, sink Sink, start time.Time) (Usage, error) {
	var rs relayed
	err := s.relayChunks(st, body, wantUsage, sink, start, &rs)
	if !rs.sawUsage {
		s.metrics.StreamsWithoutUsage.WithLabelValues(st.name).Inc()
		return Usage{CompletionTokens: rs.withText, TotalTokens: rs.withText}, err
	}
	return rs.usage, err
}

// relayed is what relayChunks saw of a stream.
type relayed struct {
	usage    Usage
	sawUsage bool
	withText int64 // chunks with generated output
}

func (s *Server) relayChunks(st *modelState, body io.Reader, wantUsage bool, sink Sink, start time.Time, rs *relayed) error {
	r := bufio.NewReaderSize(body, 64<<10)
	first := true
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return fmt.Errorf("engine sent an SSE line longer than %d bytes", r.Size())
		}
		if payload, ok := ssePayload(line); ok {
			if bytes.Equal(payload, doneMarker) {
				return nil
			}
			if bytes.Contains(payload, usageKey) {
				if u, onlyUsage := topLevelUsage(payload); u != nil {
					rs.usage, rs.sawUsage = *u, true
					if onlyUsage && !wantUsage {
						continue
					}
				}
			}
			if chunkCarriesText(payload) {
				rs.withText++
			}
			if first {
				first = false
				s.metrics.TimeToFirstTok.WithLabelValues(st.name).Observe(time.Since(start).Seconds())
			}
			if werr := sink.Chunk(payload); werr != nil {
				// The client left; closing the engine's body (deferred) cancels its work.
				return fmt.Errorf("%w: %w", errClientGone, werr)
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// ssePayload returns the data of a "data:" line, without the optional space and line end.
func ssePayload(line []byte) ([]byte, bool) {
	if !bytes.HasPrefix(line, dataPrefix) {
		return nil, false
	}
	p := bytes.TrimRight(line[len(dataPrefix):], "\r\n")
	if len(p) > 0 && p[0] == ' ' {
		p = p[1:]
	}
	return p, len(p) > 0
}
