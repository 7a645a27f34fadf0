package serve

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/runtime/grpc/inferencev1"
	"github.com/helixflow/helixflow/test/testengine"
)

// grpcFront is the rig's gRPC front on a loopback port and a real client connected to it.
type grpcFront struct {
	srv  server
	conn *grpc.ClientConn
	inf  inferencev1.InferenceClient
}

func (r *rig) grpc() *grpcFront {
	r.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.t.Fatal(err)
	}
	// The health refresh and a call may race for an engine connection, leaving one that never
	// carried a request, which the test engine's Shutdown only closes after 5 s: close it.
	r.t.Cleanup(r.s.up.closeIdle)
	srv := r.s.grpcServeOn(ln)
	served := make(chan error, 1)
	go func() { served <- srv.serve() }()
	r.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.stop(ctx)
		if err := <-served; err != nil {
			r.t.Errorf("gRPC serve: %v", err)
		}
	})
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { _ = conn.Close() })
	return &grpcFront{srv: srv, conn: conn, inf: inferencev1.NewInferenceClient(conn)}
}

func withKey(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

func chatRequest(maxTokens uint32) *inferencev1.GenerateRequest {
	return &inferencev1.GenerateRequest{
		Model:     testengine.DefaultModel,
		Messages:  []*inferencev1.Message{{Role: "user", Content: "one two three"}},
		MaxTokens: proto.Uint32(maxTokens),
	}
}

// generate runs Generate to the end and returns its messages, or the error that ended it.
func generate(ctx context.Context, f *grpcFront, req *inferencev1.GenerateRequest) ([]*inferencev1.GenerateResponse, error) {
	stream, err := f.inf.Generate(ctx, req)
	if err != nil {
		return nil, err
	}
	var out []*inferencev1.GenerateResponse
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, msg)
	}
}

func wantCode(t *testing.T, err error, want codes.Code) *status.Status {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != want {
		t.Fatalf("error %v, want code %v", err, want)
	}
	if st.Message() == "" {
		t.Fatalf("status %v has no message", st.Code())
	}
	return st
}

func TestGRPCListModelsAndGenerate(t *testing.T) {
	r := newRig(t, testengine.Config{Record: true}, nil)
	key := r.addKey("app", nil)
	f := r.grpc()
	ctx := withKey(t.Context(), key)

	list, err := f.inf.ListModels(ctx, &inferencev1.ListModelsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetModels()) != 1 || list.GetModels()[0].GetId() != testengine.DefaultModel || list.GetModels()[0].GetOwnedBy() == "" {
		t.Fatalf("models %v", list.GetModels())
	}

	req := chatRequest(5)
	req.Temperature, req.TopP = proto.Float32(0.5), proto.Float32(0.9)
	req.PresencePenalty, req.FrequencyPenalty = proto.Float32(0.25), proto.Float32(-0.5)
	req.Stop, req.Seed, req.User = []string{"\n\n"}, proto.Int64(42), proto.String("end-user-1")
	msgs, err := generate(ctx, f, req)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) < 2 {
		t.Fatalf("%d messages, want one per token and a last one", len(msgs))
	}
	var text strings.Builder
	for i, m := range msgs {
		text.WriteString(m.GetDelta())
		if m.GetId() == "" || m.GetId() != msgs[0].GetId() || m.GetModel() != testengine.DefaultModel || m.GetCreated() == 0 {
			t.Fatalf("message %d: id/model/created %q %q %d", i, m.GetId(), m.GetModel(), m.GetCreated())
		}
		if last := i == len(msgs)-1; (m.GetUsage() != nil) != last || (m.GetFinishReason() != "") != last {
			t.Fatalf("message %d of %d: usage %v, finish_reason %q (only the last carries them)", i, len(msgs), m.GetUsage(), m.GetFinishReason())
		}
	}
	if got, want := text.String(), testengine.CompletionText(5); got != want {
		t.Fatalf("deltas make %q, want %q", got, want)
	}
	last := msgs[len(msgs)-1]
	if u := last.GetUsage(); u.GetPromptTokens() != 3 || u.GetCompletionTokens() != 5 || u.GetTotalTokens() != 8 {
		t.Fatalf("usage %v, want 3+5=8", u)
	}
	if last.GetFinishReason() != "length" {
		t.Fatalf("finish_reason %q", last.GetFinishReason())
	}
	if got := r.usage.total(testNS + "/app"); got != 8 {
		t.Fatalf("recorded %d tokens, want 8", got)
	}

	// The engine got an OpenAI streaming request with every parameter copied.
	reqs := r.engine.Requests()
	if len(reqs) != 1 || reqs[0].Path != RouteChatCompletions {
		t.Fatalf("engine requests %v", reqs)
	}
	var sent map[string]any
	if err := json.Unmarshal(reqs[0].Body, &sent); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"model": testengine.DefaultModel, "stream": true, "max_tokens": 5.0, "temperature": 0.5, "top_p": 0.9,
		"presence_penalty": 0.25, "frequency_penalty": -0.5, "seed": 42.0, "user": "end-user-1",
	} {
		if sent[k] != want {
			t.Errorf("engine request %s = %v, want %v", k, sent[k], want)
		}
	}
	if stop, _ := sent["stop"].([]any); len(stop) != 1 || stop[0] != "\n\n" {
		t.Errorf("engine request stop = %v", sent["stop"])
	}

	// A prompt is a plain completion.
	msgs, err = generate(ctx, f, &inferencev1.GenerateRequest{Model: testengine.DefaultModel, Prompt: proto.String("a b"), MaxTokens: proto.Uint32(4)})
	if err != nil {
		t.Fatal(err)
	}
	text.Reset()
	for _, m := range msgs {
		text.WriteString(m.GetDelta())
	}
	if got, want := text.String(), testengine.CompletionText(4); got != want {
		t.Fatalf("completion deltas make %q, want %q", got, want)
	}
	if u := msgs[len(msgs)-1].GetUsage(); u.GetPromptTokens() != 2 || u.GetCompletionTokens() != 4 || u.GetTotalTokens() != 6 {
		t.Fatalf("completion usage %v", u)
	}
	if reqs := r.engine.Requests(); reqs[len(reqs)-1].Path != RouteCompletions {
		t.Fatalf("a prompt went to %s", reqs[len(reqs)-1].Path)
	}
}

func TestGRPCRefusals(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	key := r.addKey("app", nil)
	narrow := r.addKey("narrow", func(ak *servingv1alpha1.ApiKey) { ak.Spec.Models = []string{"other-model"} })
	limited := r.addKey("limited", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.RateLimit = &servingv1alpha1.KeyRateLimit{RequestsPerMinute: 1}
	})
	f := r.grpc()
	ctx := t.Context()

	_, err := f.inf.ListModels(ctx, &inferencev1.ListModelsRequest{})
	wantCode(t, err, codes.Unauthenticated)
	_, err = generate(ctx, f, chatRequest(3))
	wantCode(t, err, codes.Unauthenticated)
	_, err = generate(withKey(ctx, "hfk_nope_nope"), f, chatRequest(3))
	st := wantCode(t, err, codes.Unauthenticated)
	if strings.Contains(st.Message(), "hfk_nope") {
		t.Fatal("an error message contains the key")
	}
	_, err = generate(withKey(ctx, narrow), f, chatRequest(3))
	wantCode(t, err, codes.PermissionDenied)

	wrong := chatRequest(3)
	wrong.Model = "gpt-17"
	_, err = generate(withKey(ctx, key), f, wrong)
	wantCode(t, err, codes.NotFound)

	both := chatRequest(3)
	both.Prompt = proto.String("x")
	_, err = generate(withKey(ctx, key), f, both)
	wantCode(t, err, codes.InvalidArgument)
	_, err = generate(withKey(ctx, key), f, &inferencev1.GenerateRequest{Messages: chatRequest(1).Messages})
	wantCode(t, err, codes.InvalidArgument)

	// Over the key's limit: RESOURCE_EXHAUSTED with the wait in the trailer.
	if _, err := generate(withKey(ctx, limited), f, chatRequest(1)); err != nil {
		t.Fatal(err)
	}
	var trailer metadata.MD
	stream, err := f.inf.Generate(withKey(ctx, limited), chatRequest(1), grpc.Trailer(&trailer))
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.ResourceExhausted)
	if ra := trailer.Get("retry-after"); len(ra) != 1 || ra[0] == "0" {
		t.Fatalf("retry-after trailer %v", ra)
	}

	// An engine error: its status mapped, its message passed on.
	r.engine.SetMode(testengine.ModeFail)
	_, err = generate(withKey(ctx, key), f, chatRequest(3))
	st = wantCode(t, err, codes.Internal)
	if !strings.Contains(st.Message(), "failure injected") {
		t.Fatalf("engine message lost: %q", st.Message())
	}
}

func TestGRPCHealthAndReflection(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	f := r.grpc()
	hc := healthgrpc.NewHealthClient(f.conn)
	for _, svc := range []string{"", inferencev1.Inference_ServiceDesc.ServiceName} {
		resp, err := hc.Check(t.Context(), &healthgrpc.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetStatus() != healthgrpc.HealthCheckResponse_SERVING {
			t.Fatalf("health of %q: %v", svc, resp.GetStatus())
		}
	}

	// Reflection lists the services (no credential needed, like health).
	rc, err := reflectionpb.NewServerReflectionClient(f.conn).ServerReflectionInfo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := rc.Recv()
	if err != nil {
		t.Fatal(err)
	}
	_ = rc.CloseSend()
	names := map[string]bool{}
	for _, s := range resp.GetListServicesResponse().GetService() {
		names[s.GetName()] = true
	}
	if !names[inferencev1.Inference_ServiceDesc.ServiceName] || !names[healthgrpc.Health_ServiceDesc.ServiceName] {
		t.Fatalf("reflection lists %v", names)
	}

	// Draining: NOT_SERVING.
	r.s.draining.Store(true)
	hresp, err := hc.Check(t.Context(), &healthgrpc.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if hresp.GetStatus() != healthgrpc.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health while draining: %v", hresp.GetStatus())
	}
}

func TestGRPCCancelStopsEngineStream(t *testing.T) {
	r := newRig(t, testengine.Config{Record: true, ChunkInterval: 20 * time.Millisecond}, nil)
	key := r.addKey("app", nil)
	f := r.grpc()
	ctx, cancel := context.WithCancel(withKey(t.Context(), key))
	stream, err := f.inf.Generate(ctx, chatRequest(500))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	waitCancelledStream(t, r)
}

// waitCancelledStream waits for the engine to record a stream the client cut short.
func waitCancelledStream(t *testing.T, r *rig) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, s := range r.engine.Streams() {
			if s.Cancelled {
				if s.Done {
					t.Fatal("a cancelled stream ran to [DONE]")
				}
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the engine stream was not cancelled: %+v", r.engine.Stats())
}

// TestGRPCGracefulStop: stopping lets a stream in flight finish, and health Watch streams do
// not hold the stop until its deadline.
func TestGRPCGracefulStop(t *testing.T) {
	r := newRig(t, testengine.Config{ChunkInterval: 10 * time.Millisecond}, nil)
	key := r.addKey("app", nil)
	f := r.grpc()
	watch, err := healthgrpc.NewHealthClient(f.conn).Watch(t.Context(), &healthgrpc.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatal(err)
	}
	stream, err := f.inf.Generate(withKey(t.Context(), key), chatRequest(30))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	r.s.draining.Store(true)
	stopped := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		f.srv.stop(ctx)
		stopped <- time.Since(start)
	}()
	n := 1
	var last *inferencev1.GenerateResponse
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the stream in flight was cut after %d messages: %v", n, err)
		}
		n++
		last = msg
	}
	if last.GetUsage().GetCompletionTokens() != 30 {
		t.Fatalf("last message %v", last)
	}
	select {
	case d := <-stopped:
		t.Logf("stopped in %v", d)
	case <-time.After(10 * time.Second):
		t.Fatal("stop waits on the health Watch stream")
	}
}
