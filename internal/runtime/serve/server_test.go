package serve

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"k8s.io/apimachinery/pkg/types"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/test/testengine"
	"github.com/helixflow/helixflow/test/testenv"
)

// flushingUsage is a UsageRecorder with the reporter's Flush; it reports what state the
// flush's context was in when it was called.
type flushingUsage struct {
	recordedUsage
	flushed chan error
}

func (u *flushingUsage) Flush(ctx context.Context) error {
	u.flushed <- ctx.Err()
	return nil
}

// TestShutdownFlushesUsageAfterADrainThatRanOut: a stream that runs to --shutdown-timeout
// leaves the drain's context ended; the usage flush after it still gets time of its own.
func TestShutdownFlushesUsageAfterADrainThatRanOut(t *testing.T) {
	u := &flushingUsage{recordedUsage: newRecordedUsage(), flushed: make(chan error, 1)}
	opts := DefaultOptions()
	opts.Model, opts.Namespace = testengine.DefaultModel, testNS
	opts.Usage, opts.ShutdownTimeout = u, 50*time.Millisecond
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	s.shutdown([]server{{name: "a stream to the deadline", stop: func(ctx context.Context) { <-ctx.Done() }}})
	if err := <-u.flushed; err != nil {
		t.Fatalf("usage flushed with a context already ended: %v", err)
	}
}

// panickyUsage panics in its first Record, as a bug in the call path would, then records.
type panickyUsage struct {
	recordedUsage
	panicked atomic.Bool
}

func (u *panickyUsage) Record(ns, name string, uid types.UID, prompt, completion int64) {
	if u.panicked.CompareAndSwap(false, true) {
		panic("a bug in the call path")
	}
	u.recordedUsage.Record(ns, name, uid, prompt, completion)
}

// TestAPanicEndsOneCall: a panic while a call is served ends that call (the fast path closes
// its connection; gRPC answers Internal), not the process: the next call is served.
func TestAPanicEndsOneCall(t *testing.T) {
	u := &panickyUsage{recordedUsage: newRecordedUsage()}
	r := newRig(t, testengine.Config{}, func(o *Options) { o.Usage = u })
	key := r.addKey("app", nil)

	c := dialH1(t, r)
	c.send(h1Post(RouteChatCompletions, key, h1Chat))
	if _, err := c.br.ReadByte(); err == nil {
		t.Fatal("the fast path answered a call that panicked")
	}
	if resp := r.post(RouteChatCompletions, key, chatBody); resp.StatusCode != http.StatusOK {
		t.Fatalf("after the panic: status %d", resp.StatusCode)
	}

	u.panicked.Store(false)
	f := r.grpc()
	_, err := generate(withKey(t.Context(), key), f, chatRequest(5))
	wantCode(t, err, codes.Internal)
	if _, err := generate(withKey(t.Context(), key), f, chatRequest(5)); err != nil {
		t.Fatalf("gRPC after the panic: %v", err)
	}
}

// panickySink panics when the engine's answer arrives.
type panickySink struct{}

func (panickySink) Chunk([]byte) error                 { panic("sink") }
func (panickySink) End() error                         { panic("sink") }
func (panickySink) Complete(int, string, []byte) error { panic("sink") }

// TestAPanicGivesBackTheCallsSlot: a call that panics at the engine's answer gives back its
// key's concurrency slot and the in-flight gauge, or a key with maxConcurrent 1 would be
// refused until a restart.
func TestAPanicGivesBackTheCallsSlot(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	p, fail := r.s.Authenticate("Bearer " + r.addKey("one", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.RateLimit = &servingv1alpha1.KeyRateLimit{MaxConcurrent: 1}
	}))
	if fail != nil {
		t.Fatal(fail)
	}
	func() {
		defer func() { _ = recover() }()
		_, _ = r.s.Exchange(context.Background(), p, Call{Route: RouteChatCompletions, Body: []byte(chatBody)}, panickySink{})
		t.Fatal("the sink did not panic")
	}()
	if n := testutil.ToFloat64(r.s.metrics.InFlight.WithLabelValues(testengine.DefaultModel)); n != 0 {
		t.Fatalf("in flight after the panic: %v", n)
	}
	adm, fail := r.s.limits.Admit(p)
	if fail != nil {
		t.Fatalf("the key's only slot is still taken: %v", fail.Message)
	}
	adm.Done(0)
}

// TestStreamCutBeforeItsFirstChunk: an engine that starts a stream and sends nothing before
// the request timeout gets the client a 504, not an empty 200.
func TestStreamCutBeforeItsFirstChunk(t *testing.T) {
	mute := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-req.Context().Done()
	}))
	t.Cleanup(mute.Close)
	r := newRig(t, testengine.Config{}, func(o *Options) {
		o.Upstream, o.RequestTimeout = mute.URL, 300*time.Millisecond
	})
	wantError(t, r.post(RouteChatCompletions, r.addKey("app", nil), streamBody(false)), http.StatusGatewayTimeout, "upstream_error")
}

// orderedUsage logs Record and Flush in the order they happen; Record takes a while, as a
// call unwinding after the fronts cut it at the deadline does.
type orderedUsage struct {
	mu  sync.Mutex
	log []string
}

func (u *orderedUsage) Record(_, _ string, _ types.UID, _, _ int64) {
	time.Sleep(300 * time.Millisecond)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.log = append(u.log, "record")
}

func (u *orderedUsage) Flush(context.Context) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.log = append(u.log, "flush")
	return nil
}

// TestShutdownFlushesAfterCutCallsRecord: a stream still running at --shutdown-timeout is
// cut; its usage (recorded as the call unwinds) is in the last flush, not after it.
func TestShutdownFlushesAfterCutCallsRecord(t *testing.T) {
	u := &orderedUsage{}
	s, base, sigterm, wait := runServe(t, testengine.Config{ChunkInterval: 100 * time.Millisecond}, "", func(o *Options) {
		o.Usage, o.ShutdownTimeout = u, 200*time.Millisecond
	})
	key := "Bearer " + addKeyTo(t, s, "app", nil)
	body := strings.Replace(streamBody(false), `"max_tokens":5`, `"max_tokens":100`, 1)
	req, _ := http.NewRequest(http.MethodPost, base+RouteChatCompletions, strings.NewReader(body))
	req.Header.Set("Authorization", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || !strings.HasPrefix(line, "data: ") {
		t.Fatalf("first line %q: %v", line, err)
	}
	sigterm() // the stream has 10 s to go, the drain 200 ms
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.log) != 2 || u.log[0] != "record" || u.log[1] != "flush" {
		t.Fatalf("on shutdown: %v, want [record flush]", u.log)
	}
}

// A runtime whose usage reports do not get through (the aggregator down or out of reach)
// says so in its metrics: the backlog and the failed calls.
func TestUsageReporterBacklogIsExported(t *testing.T) {
	dead, err := testenv.FreeAddr() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	opts := DefaultOptions()
	opts.Model, opts.Namespace, opts.Upstream, opts.UsageEndpoint = testengine.DefaultModel, testNS, "http://127.0.0.1:1", dead
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	s.usage.Record(testNS, "app", "app-uid", 3, 4)
	s.usage.Record(testNS, "other", "other-uid", 1, 0)
	if got := gauge(t, s, "helixflow_runtime_usage_pending_keys"); got != 2 {
		t.Fatalf("pending keys %v, want 2", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.reporter.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; _ = s.reporter.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for gauge(t, s, "helixflow_runtime_usage_report_failures_total") < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no failed usage report counted within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if gauge(t, s, "helixflow_runtime_usage_unacknowledged_batches") != 1 || gauge(t, s, "helixflow_runtime_usage_batches_total") != 1 ||
		gauge(t, s, "helixflow_runtime_usage_pending_keys") != 0 {
		t.Fatal("the batch in flight is not shown as unacknowledged")
	}
}

// gauge is the value of the runtime's metric name (a single series).
func gauge(t *testing.T, s *Server, name string) float64 {
	t.Helper()
	families, err := s.metrics.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			m := f.GetMetric()[0]
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
