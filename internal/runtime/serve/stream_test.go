package serve

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/test/testengine"
)

// TestStreamIsNotBuffered: with an engine that sends a chunk every 100 ms, each chunk
// reaches the client right after the engine flushed it, not batched with the next one.
// The bound is 20 ms between the engine's flush and the client's read.
func TestStreamIsNotBuffered(t *testing.T) {
	r := newRig(t, testengine.Config{Record: true, ChunkInterval: 100 * time.Millisecond}, nil)
	key := r.addKey("app", nil)
	resp := r.post(RouteChatCompletions, key, streamBody(false))
	sc := bufio.NewScanner(resp.Body)
	var seen []time.Time
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "data: ") && line != "data: [DONE]" {
			seen = append(seen, time.Now())
		}
	}
	// The engine records a stream once its handler returns, which may be just after the
	// client has read the end.
	var streams []testengine.StreamRecord
	for deadline := time.Now().Add(5 * time.Second); len(streams) == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		streams = r.engine.Streams()
	}
	if len(streams) != 1 {
		t.Fatalf("engine streams %d", len(streams))
	}
	flushed := streams[0].Chunks
	if len(seen) < 3 || len(flushed) < len(seen) {
		t.Fatalf("client saw %d chunks, engine flushed %d", len(seen), len(flushed))
	}
	var worst time.Duration
	for i, at := range seen {
		worst = max(worst, at.Sub(flushed[i].FlushedAt))
	}
	first := seen[0].Sub(flushed[0].FlushedAt)
	t.Logf("first chunk reached the client %v after the engine flushed it; worst of %d chunks %v", first, len(seen), worst)
	if first > 20*time.Millisecond {
		t.Errorf("first chunk arrived %v after the engine sent it, want within 20ms", first)
	}
	// Chunks 100 ms apart at the engine stay apart at the client: nothing holds them back.
	if gap := seen[2].Sub(seen[1]); gap < 50*time.Millisecond {
		t.Errorf("chunks 100ms apart at the engine arrived %v apart: buffered", gap)
	}
}

// TestGracefulShutdownFinishesStreams: on shutdown a stream in flight runs to its end
// while readiness fails and new connections are refused.
func TestGracefulShutdownFinishesStreams(t *testing.T) {
	_, base, sigterm, wait := runServe(t, testengine.Config{ChunkInterval: 50 * time.Millisecond}, servingv1alpha1.AuthModeNone,
		func(o *Options) { o.ShutdownTimeout = 10 * time.Second })
	body := strings.Replace(streamBody(false), `"max_tokens":5`, `"max_tokens":20`, 1)
	resp, err := http.Post(base+RouteChatCompletions, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	first, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(first, "data: ") {
		t.Fatalf("first line %q: %v", first, err)
	}
	sigterm() // the stream has about a second to go
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("stream cut on shutdown: %v", err)
	}
	if !strings.Contains(string(rest), "data: [DONE]") {
		t.Fatalf("stream did not finish on shutdown: %q", rest)
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("a new connection was accepted after shutdown")
	}
}

// TestMetricsByModelAndKey: the metrics endpoint counts requests, tokens and rejections by
// model and public key ID, and has latency and time-to-first-token histograms.
func TestMetricsByModelAndKey(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	key := r.addKey("app", nil)
	keyID := key[len("hfk_"):strings.LastIndexByte(key, '_')]
	r.post(RouteChatCompletions, key, chatBody)
	if _, err := io.Copy(io.Discard, r.post(RouteChatCompletions, key, streamBody(false)).Body); err != nil {
		t.Fatal(err)
	}
	r.post(RouteChatCompletions, "hfk_bad_key", chatBody)

	text := r.series()
	for _, want := range []string{
		"helixflow_runtime_requests_total code=200 key_id=" + keyID + " model=" + testengine.DefaultModel,
		"helixflow_runtime_tokens_total direction=completion key_id=" + keyID,
		"helixflow_runtime_rejections_total key_id= model=" + testengine.DefaultModel + " reason=auth",
		"helixflow_runtime_time_to_first_token_seconds model=" + testengine.DefaultModel,
		"helixflow_runtime_request_duration_seconds model=" + testengine.DefaultModel,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("no series %q in\n%s", want, text)
		}
	}
	if strings.Contains(text, key) {
		t.Error("a metric carries the key")
	}
}

// series lists the runtime's metric series, one per line: the name, then name=value for
// each label.
func (r *rig) series() string {
	r.t.Helper()
	families, err := r.s.Metrics().Registry().Gather()
	if err != nil {
		r.t.Fatal(err)
	}
	var text strings.Builder
	for _, f := range families {
		for _, m := range f.GetMetric() {
			text.WriteString(f.GetName())
			for _, l := range m.GetLabel() {
				text.WriteString(" " + l.GetName() + "=" + l.GetValue())
			}
			text.WriteString("\n")
		}
	}
	return text.String()
}

// TestDeletedKeysLeaveMetricsAndLimits: once an ApiKey is deleted, the runtime drops its
// limiter state at once and, after a wait (run here when the test says), its key ID's series
// and cached metric children; the other keys' stay, and so do those of a key brought back
// within the wait. Without it every key a namespace ever had would stay.
func TestDeletedKeysLeaveMetricsAndLimits(t *testing.T) {
	r := newRig(t, testengine.Config{}, nil)
	var later []func()
	r.s.forgetLater = func(f func()) { later = append(later, f) }
	forgetNow := func() {
		for _, f := range later {
			f()
		}
		later = nil
	}
	limited := func(id *string) func(*servingv1alpha1.ApiKey) {
		return func(ak *servingv1alpha1.ApiKey) {
			ak.Spec.RateLimit = &servingv1alpha1.KeyRateLimit{RequestsPerMinute: 1}
			if id != nil {
				*id = ak.Status.KeyID
			}
		}
	}
	var goneID, keptID, backID string
	gone, kept := r.addKey("gone", limited(&goneID)), r.addKey("kept", limited(&keptID))
	var backAK *servingv1alpha1.ApiKey
	back := r.addKey("back", func(ak *servingv1alpha1.ApiKey) { limited(&backID)(ak); backAK = ak })
	for _, key := range []string{gone, kept, back} {
		if resp := r.post(RouteChatCompletions, key, chatBody); resp.StatusCode != http.StatusOK {
			t.Fatalf("first call: status %d", resp.StatusCode)
		}
		wantError(t, r.post(RouteChatCompletions, key, chatBody), http.StatusTooManyRequests, "rate_limit_exceeded")
	}
	// Requests, tokens (prompt, completion) and rejections of each key.
	seriesOf := func(id string) int { return strings.Count(r.series(), "key_id="+id+" ") }
	if n := seriesOf(goneID); n != 4 {
		t.Fatalf("%d series of the key before its deletion, want 4:\n%s", n, r.series())
	}

	r.s.auth.Keys().Delete("gone")
	r.s.auth.Keys().Delete("back")
	r.s.limits.mu.Lock()
	_, held := r.s.limits.keys[keyRef{testNS, "gone"}]
	r.s.limits.mu.Unlock()
	if held {
		t.Error("the limiter still holds the deleted ApiKey's state")
	}
	if n := seriesOf(goneID); n != 4 {
		t.Errorf("%d series of the deleted key before the wait, want its 4 (calls admitted before still count)", n)
	}
	if err := r.s.auth.Keys().Upsert(backAK); err != nil { // the same key, brought back
		t.Fatal(err)
	}
	forgetNow()
	if n := seriesOf(goneID); n != 0 {
		t.Errorf("%d series of the deleted key after the wait, want none:\n%s", n, r.series())
	}
	r.s.metrics.calls.Range(func(k, _ any) bool {
		if k.(callMetricsKey).keyID == goneID {
			t.Errorf("cached metric children of the deleted key: %+v", k)
		}
		return true
	})
	if n := seriesOf(keptID); n != 4 {
		t.Errorf("%d series of the other key, want its 4:\n%s", n, r.series())
	}
	if n := seriesOf(backID); n != 4 {
		t.Errorf("%d series of the key brought back within the wait, want its 4:\n%s", n, r.series())
	}

	// An ApiKey created again under the name is a new key, with empty windows.
	again := r.addKey("gone", limited(nil))
	if resp := r.post(RouteChatCompletions, again, chatBody); resp.StatusCode != http.StatusOK {
		t.Errorf("the re-created ApiKey's first call: status %d, want 200", resp.StatusCode)
	}
}

// TestCutStreamIsChargedItsChunks: a client that leaves a stream before the engine's usage
// chunk is charged one completion token per chunk with output the engine had sent (a lower
// bound), not nothing; the stream is counted in streams_without_usage.
func TestCutStreamIsChargedItsChunks(t *testing.T) {
	r := newRig(t, testengine.Config{ChunkInterval: 20 * time.Millisecond}, nil)
	key := r.addKey("leaver", nil)
	const maxTokens = 40
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	body := strings.Replace(streamBody(false), `"max_tokens":5`, fmt.Sprintf(`"max_tokens":%d`, maxTokens), 1)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, r.url+RouteChatCompletions, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	seen := 0
	for seen < 3 && sc.Scan() {
		if strings.Contains(sc.Text(), `"content":"`) && !strings.Contains(sc.Text(), `"content":""`) {
			seen++
		}
	}
	cancel()
	_ = resp.Body.Close()
	var got int64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if got = r.usage.total(testNS + "/leaver"); got > 0 {
			break
		}
	}
	if got < 3 || got >= maxTokens {
		t.Fatalf("charged %d tokens for a stream left after 3 of %d chunks, want at least 3 and fewer than %d", got, maxTokens, maxTokens)
	}
	if n := testutil.ToFloat64(r.s.metrics.StreamsWithoutUsage.WithLabelValues(testengine.DefaultModel)); n != 1 {
		t.Fatalf("streams_without_usage = %v, want 1", n)
	}
	if want := "helixflow_runtime_requests_total code=499"; !strings.Contains(r.series(), want) {
		t.Fatalf("the stream the client left is not counted as 499:\n%s", r.series())
	}
	if strings.Contains(r.series(), "helixflow_runtime_upstream_errors_total") {
		t.Fatalf("a client leaving counted as an engine failure:\n%s", r.series())
	}
}
