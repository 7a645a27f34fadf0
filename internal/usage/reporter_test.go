package usage

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/types"

	"github.com/helixflow/helixflow/internal/usage/usagev1"
)

// fakeAggregator records every Report call; fail, when set, decides a call's answer.
type fakeAggregator struct {
	usagev1.UnimplementedUsageAggregatorServer
	mu    sync.Mutex
	calls []*usagev1.ReportRequest
	fail  func(call int) error
}

func (f *fakeAggregator) Report(_ context.Context, req *usagev1.ReportRequest) (*usagev1.ReportResponse, error) {
	f.mu.Lock()
	f.calls = append(f.calls, proto.Clone(req).(*usagev1.ReportRequest))
	n, fail := len(f.calls), f.fail
	f.mu.Unlock()
	if fail != nil {
		if err := fail(n); err != nil {
			return nil, err
		}
	}
	return &usagev1.ReportResponse{}, nil
}

func (f *fakeAggregator) received() []*usagev1.ReportRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*usagev1.ReportRequest(nil), f.calls...)
}

// startFake serves f on a loopback port and returns a Reporter (not running) for it.
func startFake(t *testing.T, f *fakeAggregator, opts ...ReporterOption) *Reporter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	usagev1.RegisterUsageAggregatorServer(srv, f)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	opts = append([]ReporterOption{WithBackoff(time.Millisecond, 5*time.Millisecond), WithCallTimeout(5 * time.Second)}, opts...)
	r, err := NewReporter(ln.Addr().String(), "pod-1-nonce", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func TestReporterResendsTheSameBatch(t *testing.T) {
	f := &fakeAggregator{}
	r := startFake(t, f)
	f.fail = func(call int) error {
		if call == 1 {
			r.Record("ns", "late", "uid-1", 100, 0) // recorded while batch 1 is on the wire
		}
		if call <= 3 {
			return status.Error(codes.Unavailable, "down")
		}
		return nil
	}
	r.Record("ns", "k", "uid-1", 3, 4)
	r.Record("ns", "k", "uid-1", 1, 0)
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	got := f.received()
	if len(got) != 5 {
		t.Fatalf("%d calls, want 4 tries of batch 1 and batch 2: %v", len(got), got)
	}
	first := &usagev1.ReportRequest{ReporterId: "pod-1-nonce", Seq: 1, Usage: []*usagev1.KeyUsage{
		{Namespace: "ns", ApiKey: "k", ApiKeyUid: "uid-1", PromptTokens: 4, CompletionTokens: 4, Requests: 2}}}
	for i := range 4 {
		if !proto.Equal(got[i], first) {
			t.Errorf("try %d is %v, want %v", i+1, got[i], first)
		}
	}
	second := &usagev1.ReportRequest{ReporterId: "pod-1-nonce", Seq: 2, Usage: []*usagev1.KeyUsage{
		{Namespace: "ns", ApiKey: "late", ApiKeyUid: "uid-1", PromptTokens: 100, Requests: 1}}}
	if !proto.Equal(got[4], second) {
		t.Errorf("batch 2 is %v, want %v", got[4], second)
	}
	if st := r.Stats(); st != (ReporterStats{Seq: 2, Failures: 3}) {
		t.Errorf("stats %+v", st)
	}
}

// An aggregator out of reach shows in the log without a line per resend: the 1st, 2nd, 4th...
// failed call, then one line when reports get through again.
func TestReporterLogsFailureStreaks(t *testing.T) {
	f := &fakeAggregator{fail: func(call int) error {
		if call <= 5 {
			return status.Error(codes.Unavailable, "down")
		}
		return nil
	}}
	r := startFake(t, f)
	var logs logLines
	r.log = logs.logger(0)
	r.Record("ns", "k", "uid-1", 1, 1)
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	lines := logs.get()
	var streaks []string
	for _, l := range lines {
		switch {
		case strings.Contains(l, "usage not reported yet"):
			_, calls, _ := strings.Cut(l, `"failedCalls"`)
			streaks = append(streaks, `"failedCalls"`+calls)
		case strings.Contains(l, "get through again") && strings.Contains(l, `"failedCalls"=5`):
			streaks = append(streaks, "recovered")
		}
	}
	want := []string{`"failedCalls"=1`, `"failedCalls"=2`, `"failedCalls"=4`, "recovered"}
	if len(streaks) != len(want) {
		t.Fatalf("log lines %q, want failed calls 1, 2, 4 and a recovery after 5", lines)
	}
	for i := range want {
		if !strings.HasPrefix(streaks[i], want[i]) {
			t.Fatalf("log lines %q, want failed calls 1, 2, 4 and a recovery after 5", lines)
		}
	}
}

// A key deleted and created again under the same name is another object: its usage is sent
// apart from the old one's, so the aggregator can charge each to its own.
func TestReporterKeepsKeyObjectsApart(t *testing.T) {
	f := &fakeAggregator{}
	r := startFake(t, f)
	r.Record("ns", "k", "uid-old", 3, 4)
	r.Record("ns", "k", "uid-new", 1, 0)
	r.Record("ns", "k", "uid-new", 2, 0)
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, b := range f.received() {
		for _, u := range b.GetUsage() {
			got[u.GetApiKeyUid()] += u.GetPromptTokens() + u.GetCompletionTokens()
		}
	}
	if want := map[string]int64{"uid-old": 7, "uid-new": 3}; !maps.Equal(got, want) {
		t.Fatalf("tokens by ApiKey uid %v, want %v", got, want)
	}
}

func TestReporterSplitsLargeBatches(t *testing.T) {
	f := &fakeAggregator{}
	r := startFake(t, f)
	const keys = 2*reporterBatchKeys + 10
	for i := range keys {
		r.Record("ns", fmt.Sprint("k", i), "uid-1", 1, 1)
	}
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i, b := range f.received() {
		if b.GetSeq() != uint64(i+1) || len(b.GetUsage()) > reporterBatchKeys {
			t.Errorf("batch %d: seq %d, %d keys", i, b.GetSeq(), len(b.GetUsage()))
		}
		for _, u := range b.GetUsage() {
			seen[u.GetApiKey()] = true
		}
	}
	if len(f.received()) != 3 || len(seen) != keys {
		t.Errorf("%d batches with %d keys, want 3 with %d", len(f.received()), len(seen), keys)
	}
}

func TestReporterDropsInvalidBatch(t *testing.T) {
	f := &fakeAggregator{fail: func(call int) error {
		if call == 1 {
			return status.Error(codes.InvalidArgument, "bad")
		}
		return nil
	}}
	r := startFake(t, f)
	r.Record("ns", "k", "uid-1", 1, 1)
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	r.Record("ns", "k", "uid-1", 2, 2)
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := f.received(); len(got) != 2 || got[1].GetSeq() != 2 {
		t.Fatalf("calls %v: the invalid batch must not block the next one", got)
	}
	if st := r.Stats(); st.Refused != 1 || st.Failures != 0 {
		t.Fatalf("stats %+v, want the refused batch counted as such", st)
	}
}

// A token file that is missing or empty fails the call before anything is sent, and the
// batch waits for the file: nothing is lost or counted as refused.
func TestReporterWaitsForItsTokenFile(t *testing.T) {
	f := &fakeAggregator{}
	file := filepath.Join(t.TempDir(), "token")
	writeToken := func(content string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Resends wait longer than each Flush below: its error is that of its one call.
	r := startFake(t, f, WithTokenFile(file), WithBackoff(time.Second, 2*time.Second))
	writeToken("a-token\n")
	r.Record("ns", "k", "uid-1", 1, 1)
	if err := r.Flush(t.Context()); err != nil { // connected, so the calls below fail fast
		t.Fatal(err)
	}
	r.Record("ns", "k", "uid-1", 2, 2)
	for _, tc := range []struct {
		name, want string
		prepare    func()
	}{
		{"missing", "reading the usage token", func() { _ = os.Remove(file) }},
		{"empty", "is empty", func() { writeToken(" \n") }},
	} {
		tc.prepare()
		if err := flushWithin(r, 300*time.Millisecond); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("flush with the token file %s: %v, want a failure that says %q", tc.name, err, tc.want)
		}
	}
	if got, st := f.received(), r.Stats(); len(got) != 1 || !st.Unacknowledged || st.Refused != 0 {
		t.Fatalf("sent %d calls, stats %+v; want only the first batch sent and the second kept", len(got), st)
	}
	writeToken("a-token\n")
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := f.received(); len(got) != 2 || got[1].GetSeq() != 2 {
		t.Fatalf("calls %v, want the kept batch once the token is there", got)
	}
}

func TestFlushEndsWithItsContext(t *testing.T) {
	addr := freeAddr(t) // nothing listens there
	r, err := NewReporter(addr, "pod-1-nonce", WithBackoff(time.Millisecond, 10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.Record("ns", "k", "uid-1", 1, 1)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	err = r.Flush(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Flush = %v, want the context's deadline", err)
	}
	if st := r.Stats(); !st.Unacknowledged || st.Failures == 0 {
		t.Fatalf("stats %+v, want the batch kept for later", st)
	}
}

func TestRecordSkipsWhatIsNotAKey(t *testing.T) {
	r, err := NewReporter("127.0.0.1:1", "id")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.Record("", "k", "uid-1", 1, 1)
	r.Record("ns", "", "uid-1", 1, 1)
	r.Record("ns", strings.Repeat("k", 254), "uid-1", 1, 1)
	r.Record("ns", "k", types.UID(strings.Repeat("u", 129)), 1, 1)
	if n := r.Stats().PendingKeys; n != 0 {
		t.Fatalf("%d keys pending", n)
	}
	r.Record("ns", "k", "uid-1", -5, 2)
	b, _ := r.current()
	if u := b.GetUsage()[0]; u.GetPromptTokens() != 0 || u.GetCompletionTokens() != 2 || u.GetRequests() != 1 {
		t.Fatalf("usage %v", u)
	}
}

func TestNewReporterID(t *testing.T) {
	t.Setenv("POD_NAME", "llama-7f9c-abcde")
	a, b := NewReporterID(), NewReporterID()
	if a == b || !strings.HasPrefix(a, "llama-7f9c-abcde-") {
		t.Fatalf("IDs %q and %q", a, b)
	}
	long := strings.Repeat("p", 253)
	t.Setenv("POD_NAME", long)
	// Cut to fit, and still what the aggregator holds that pod's runtime to.
	if id := NewReporterID(); len(id) != MaxReporterIDLength || !strings.HasPrefix(id, reporterIDPrefix(long)) {
		t.Fatalf("ID %q of %d characters", id, len(id))
	}
	if _, err := NewReporter("127.0.0.1:1", ""); err == nil {
		t.Fatal("empty reporter ID accepted")
	}
}

// BenchmarkRecord is the per-request cost a runtime pays: a mutex and a map update.
func BenchmarkRecord(b *testing.B) {
	r, err := NewReporter("127.0.0.1:1", "id")
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	keys := make([]string, 64)
	for i := range keys {
		keys[i] = fmt.Sprint("key-", i)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			r.Record("ns", keys[i%len(keys)], "uid-1", 100, 20)
			i++
		}
	})
}
