package serve

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/internal/runtime/grpc/inferencev1"
)

// grpcHealthInterval is how often the health service's status is recomputed for Watch
// streams; Check and List recompute it on every call.
const grpcHealthInterval = 5 * time.Second

// grpcServer listens on addr and serves the gRPC front: helixflow.inference.v1.Inference,
// grpc.health.v1.Health and server reflection.
func (s *Server) grpcServer(addr string) (server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return server{}, fmt.Errorf("listening on %s: %w", addr, err)
	}
	return s.grpcServeOn(ln), nil
}

// recoverUnary and recoverStream turn a handler's panic into an Internal error for that
// call, as net/http does for HTTP: grpc-go would let it end the process, and every client's
// calls with it.
func (s *Server) recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (_ any, err error) {
	defer s.recoverCall(info.FullMethod, &err)
	return h(ctx, req)
}

func (s *Server) recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
	defer s.recoverCall(info.FullMethod, &err)
	return h(srv, ss)
}

func (s *Server) recoverCall(method string, err *error) {
	if v := recover(); v != nil {
		s.opts.Log.Error(fmt.Errorf("%v", v), "panic serving a gRPC call", "method", method, "stack", string(debug.Stack()))
		*err = status.Error(codes.Internal, "internal error")
	}
}

// grpcServeOn is the gRPC front on ln.
func (s *Server) grpcServeOn(ln net.Listener) server {
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(s.recoverUnary),
		grpc.ChainStreamInterceptor(s.recoverStream),
		grpc.MaxRecvMsgSize(int(min(s.opts.MaxBodyBytes, math.MaxInt32))),
		// Clients may ping every 10 s, idle or not (the default enforcement, one ping per 5
		// minutes, answers common client settings with GOAWAY "too_many_pings").
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// The server pings quiet connections, so a vanished client's stream is cancelled (and
		// its engine call with it) within Time + Timeout.
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: 15 * time.Minute,
			Time:              time.Minute,
			Timeout:           20 * time.Second,
		}),
	}
	if s.opts.MaxHeaderBytes > 0 {
		// The metadata (the authorization value among it) has the HTTP header cap.
		opts = append(opts, grpc.MaxHeaderListSize(uint32(min(s.opts.MaxHeaderBytes, math.MaxInt32))))
	}
	gs := grpc.NewServer(opts...)
	inf := &grpcInference{s: s}
	inferencev1.RegisterInferenceServer(gs, inf)
	hs := &grpcHealth{Server: health.NewServer(), s: s, ending: make(chan struct{})}
	hs.set(false)
	healthgrpc.RegisterHealthServer(gs, hs)
	reflection.Register(gs)

	stopRefresh := make(chan struct{})
	var stopOnce sync.Once
	return server{
		addr: ln.Addr(),
		serve: func() error {
			go hs.run(stopRefresh)
			if err := gs.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				return fmt.Errorf("serving gRPC on %s: %w", ln.Addr(), err)
			}
			return nil
		},
		stop: func(ctx context.Context) {
			stopOnce.Do(func() { close(stopRefresh) })
			hs.Shutdown() // NOT_SERVING from now on, to Check and to Watch streams
			done := make(chan struct{})
			go func() { gs.GracefulStop(); close(done) }()
			// GracefulStop waits for every stream, health Watch streams included, which never
			// end on their own: end them once the inference calls have finished.
			go func() {
				inf.waitIdle(ctx)
				hs.endWatches()
			}()
			select {
			case <-done:
			case <-ctx.Done():
				gs.Stop()
				<-done
			}
		},
	}
}

// grpcHealth is the standard health service with the runtime's readiness as the status of
// "" (the whole server) and of helixflow.inference.v1.Inference.
type grpcHealth struct {
	*health.Server
	s       *Server
	ending  chan struct{}
	endOnce sync.Once
}

func (h *grpcHealth) set(ok bool) {
	st := healthgrpc.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthgrpc.HealthCheckResponse_SERVING
	}
	h.SetServingStatus("", st)
	h.SetServingStatus(inferencev1.Inference_ServiceDesc.ServiceName, st)
}

func (h *grpcHealth) refresh(ctx context.Context) {
	ok, _ := h.s.Ready(ctx)
	h.set(ok)
}

// run refreshes the status for Watch streams until stop is closed.
func (h *grpcHealth) run(stop <-chan struct{}) {
	t := time.NewTicker(grpcHealthInterval)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), grpcHealthInterval)
		h.refresh(ctx)
		cancel()
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// Check answers with the readiness of now (the engine's health is cached for a second).
func (h *grpcHealth) Check(ctx context.Context, in *healthgrpc.HealthCheckRequest) (*healthgrpc.HealthCheckResponse, error) {
	h.refresh(ctx)
	return h.Server.Check(ctx, in)
}

// List answers with the readiness of now.
func (h *grpcHealth) List(ctx context.Context, in *healthgrpc.HealthListRequest) (*healthgrpc.HealthListResponse, error) {
	h.refresh(ctx)
	return h.Server.List(ctx, in)
}

// Watch streams status changes until the client leaves or the server stops.
func (h *grpcHealth) Watch(in *healthgrpc.HealthCheckRequest, stream healthgrpc.Health_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	go func() {
		select {
		case <-h.ending:
			cancel()
		case <-ctx.Done():
		}
	}()
	return h.Server.Watch(in, &watchStream{Health_WatchServer: stream, ctx: ctx})
}

func (h *grpcHealth) endWatches() { h.endOnce.Do(func() { close(h.ending) }) }

// watchStream is a Watch stream whose context also ends when the server stops.
type watchStream struct {
	healthgrpc.Health_WatchServer
	ctx context.Context
}

func (w *watchStream) Context() context.Context { return w.ctx }

// grpcInference is helixflow.inference.v1.Inference.
type grpcInference struct {
	inferencev1.UnimplementedInferenceServer
	s        *Server
	inFlight atomic.Int64
}

// waitIdle returns when no inference call is in flight, or ctx ends.
func (g *grpcInference) waitIdle(ctx context.Context) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for g.inFlight.Load() > 0 {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// principal authenticates the call's "authorization" metadata with the HTTP header rules.
func (g *grpcInference) principal(ctx context.Context) (*auth.Principal, error) {
	var header string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("authorization"); len(v) > 0 {
			header = v[0]
		}
	}
	p, fail := g.s.Authenticate(header)
	if fail != nil {
		g.s.countRejection(fail, fail.KeyID)
		return nil, grpcError(ctx, fail)
	}
	return p, nil
}

// grpcError is f as a gRPC status; a 429's wait goes in the "retry-after" trailer (seconds).
func grpcError(ctx context.Context, f *Failure) error {
	if f.Status == 499 {
		return status.Error(codes.Canceled, f.Message)
	}
	if f.RetryAfter > 0 {
		_ = grpc.SetTrailer(ctx, metadata.Pairs("retry-after", retryAfterHeader(f.RetryAfter)))
	}
	return status.Error(f.GRPCCode(), f.Message)
}

// ListModels is GET /v1/models.
func (g *grpcInference) ListModels(ctx context.Context, _ *inferencev1.ListModelsRequest) (*inferencev1.ListModelsResponse, error) {
	g.inFlight.Add(1)
	defer g.inFlight.Add(-1)
	p, err := g.principal(ctx)
	if err != nil {
		return nil, err
	}
	list, fail := g.s.Models(p)
	if fail != nil {
		return nil, grpcError(ctx, fail)
	}
	out := &inferencev1.ListModelsResponse{Models: make([]*inferencev1.Model, 0, len(list.Data))}
	for _, m := range list.Data {
		out.Models = append(out.Models, &inferencev1.Model{Id: m.ID, Created: m.Created, OwnedBy: m.OwnedBy})
	}
	return out, nil
}

// Generate is POST /v1/chat/completions (or /v1/completions with a prompt) with stream:
// true, one GenerateResponse per chunk; the last carries finish_reason and the exact usage.
func (g *grpcInference) Generate(req *inferencev1.GenerateRequest, stream grpc.ServerStreamingServer[inferencev1.GenerateResponse]) error {
	g.inFlight.Add(1)
	defer g.inFlight.Add(-1)
	ctx := stream.Context()
	p, err := g.principal(ctx)
	if err != nil {
		return err
	}
	call, fail := generateCall(req)
	if fail != nil {
		g.s.countRejection(fail, p.KeyID)
		return grpcError(ctx, fail)
	}
	start := time.Now()
	sink := &grpcSink{stream: stream}
	out, fail := g.s.Exchange(ctx, p, call, sink)
	switch {
	case fail != nil:
		return grpcError(ctx, fail)
	case sink.err != nil:
		return sink.err
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	case sink.status != 0 && sink.status != http.StatusOK:
		f := engineFailure(sink.status, sink.body)
		return status.Error(f.GRPCCode(), f.Message)
	case sink.status == 0 && !sink.ended:
		f := g.s.brokenStream(start)
		return status.Error(f.GRPCCode(), f.Message)
	}
	return sink.finish(out.Usage)
}

// generateBody is the OpenAI request a GenerateRequest becomes.
type generateBody struct {
	Model            string            `json:"model"`
	Messages         []generateMessage `json:"messages,omitempty"`
	Prompt           *string           `json:"prompt,omitempty"`
	MaxTokens        *uint32           `json:"max_tokens,omitempty"`
	Temperature      *float32          `json:"temperature,omitempty"`
	TopP             *float32          `json:"top_p,omitempty"`
	Stop             []string          `json:"stop,omitempty"`
	PresencePenalty  *float32          `json:"presence_penalty,omitempty"`
	FrequencyPenalty *float32          `json:"frequency_penalty,omitempty"`
	Seed             *int64            `json:"seed,omitempty"`
	User             *string           `json:"user,omitempty"`
	Stream           bool              `json:"stream"`
}

type generateMessage struct {
	Role    string  `json:"role"`
	Content string  `json:"content"`
	Name    *string `json:"name,omitempty"`
}

// generateCall builds the OpenAI call of a GenerateRequest: messages make a chat
// completion, a prompt a plain completion.
func generateCall(req *inferencev1.GenerateRequest) (Call, *Failure) {
	if (len(req.GetMessages()) > 0) == (req.Prompt != nil) {
		return Call{}, badRequest("invalid_request", "set exactly one of messages and prompt")
	}
	b := generateBody{
		Model: req.GetModel(), Prompt: req.Prompt, MaxTokens: req.MaxTokens, Temperature: req.Temperature,
		TopP: req.TopP, Stop: req.GetStop(), PresencePenalty: req.PresencePenalty,
		FrequencyPenalty: req.FrequencyPenalty, Seed: req.Seed, User: req.User, Stream: true,
	}
	route := RouteCompletions
	if req.Prompt == nil {
		route = RouteChatCompletions
		b.Messages = make([]generateMessage, len(req.GetMessages()))
		for i, m := range req.GetMessages() {
			b.Messages[i] = generateMessage{Role: m.GetRole(), Content: m.GetContent(), Name: m.Name}
		}
	}
	body, err := json.Marshal(b)
	if err != nil {
		// Only a NaN or infinite float gets here.
		return Call{}, badRequest("invalid_request", "the request cannot be encoded as JSON: %v", err)
	}
	return Call{Route: route, Body: body}, nil
}

// engineChunk is what Generate reads of a chunk (chat or text completion), or of a whole
// answer from an engine that did not stream.
type engineChunk struct {
	ID      string `json:"id"`
	Model   string `json:"model"`
	Created int64  `json:"created"`
	Choices []struct {
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
		Message struct {
			Content string `json:"content"`
		} `json:"message"`
		Text         string `json:"text"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
}

// grpcSink turns chunks into GenerateResponses. The chunk with the finish_reason is held
// back until the stream ends so that it also carries the usage, as the last message.
type grpcSink struct {
	stream      grpc.ServerStreamingServer[inferencev1.GenerateResponse]
	id, model   string
	created     int64
	pending     *inferencev1.GenerateResponse
	ended       bool
	status      int
	body        []byte
	err         error
	sentHeaders bool
}

func (g *grpcSink) Chunk(data []byte) error {
	var c engineChunk
	if err := json.Unmarshal(data, &c); err != nil {
		g.err = status.Errorf(codes.Internal, "the engine sent a chunk that is not a completion chunk: %v", err)
		return g.err
	}
	return g.take(&c, false)
}

// take sends the message of chunk c (whole: a non-streamed answer).
func (g *grpcSink) take(c *engineChunk, whole bool) error {
	if c.ID != "" {
		g.id, g.model, g.created = c.ID, c.Model, c.Created
	}
	if len(c.Choices) == 0 {
		return nil // the usage chunk: usage comes from the Outcome
	}
	ch := c.Choices[0]
	delta := ch.Delta.Content + ch.Text
	if whole {
		delta = ch.Message.Content + ch.Text
	}
	if delta == "" && ch.FinishReason == "" {
		// The role chunk: nothing to pass on, but the response headers can go now.
		if !g.sentHeaders {
			g.sentHeaders = true
			_ = g.stream.SendHeader(nil)
		}
		return nil
	}
	if err := g.flush(); err != nil {
		return err
	}
	msg := &inferencev1.GenerateResponse{Id: g.id, Model: g.model, Created: g.created, Delta: delta, FinishReason: ch.FinishReason}
	if ch.FinishReason != "" {
		g.pending = msg
		return nil
	}
	return g.send(msg)
}

func (g *grpcSink) flush() error {
	if g.pending == nil {
		return nil
	}
	msg := g.pending
	g.pending = nil
	return g.send(msg)
}

func (g *grpcSink) send(msg *inferencev1.GenerateResponse) error {
	g.sentHeaders = true
	if err := g.stream.Send(msg); err != nil {
		g.err = err
		return err
	}
	return nil
}

func (g *grpcSink) End() error {
	g.ended = true
	return nil
}

func (g *grpcSink) Complete(code int, _ string, body []byte) error {
	g.status = code
	if code != http.StatusOK {
		g.body = body
		return nil
	}
	var c engineChunk
	if err := json.Unmarshal(body, &c); err != nil {
		g.err = status.Errorf(codes.Unavailable, "the engine's answer is not a completion: %v", err)
		return g.err
	}
	return g.take(&c, true)
}

// finish sends the last message: the held-back finish_reason chunk (or an empty one) with
// the usage.
func (g *grpcSink) finish(u Usage) error {
	msg := g.pending
	if msg == nil {
		msg = &inferencev1.GenerateResponse{Id: g.id, Model: g.model, Created: g.created}
	}
	g.pending = nil
	total := u.TotalTokens
	if total == 0 {
		total = u.PromptTokens + u.CompletionTokens
	}
	msg.Usage = &inferencev1.Usage{
		PromptTokens: clampUint32(u.PromptTokens), CompletionTokens: clampUint32(u.CompletionTokens), TotalTokens: clampUint32(total),
	}
	return g.send(msg)
}

func clampUint32(v int64) uint32 {
	return uint32(max(0, min(v, math.MaxUint32)))
}
