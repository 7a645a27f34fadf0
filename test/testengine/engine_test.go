package testengine_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/helixflow/helixflow/test/testengine"
)

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type chatResponse struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index   int `json:"index"`
		Message struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		Text         string `json:"text"`
		FinishReason string `json:"finish_reason"`
		Delta        *delta `json:"delta"`
	} `json:"choices"`
	Usage *usage `json:"usage"`
}

type delta struct {
	Role    string  `json:"role"`
	Content *string `json:"content"`
}

type apiError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func post(t *testing.T, ctx context.Context, url, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func decode(t *testing.T, resp *http.Response, wantStatus int, v any) {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != wantStatus {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, wantStatus, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
}

func TestModels(t *testing.T) {
	_, url := testengine.NewTestServer(t, testengine.Config{Models: []string{"llama-3-8b", "tiny"}})
	resp, err := http.Get(url + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Object string `json:"object"`
		Data   []struct {
			ID      string `json:"id"`
			Object  string `json:"object"`
			OwnedBy string `json:"owned_by"`
		} `json:"data"`
	}
	decode(t, resp, http.StatusOK, &list)
	if list.Object != "list" || len(list.Data) != 2 || list.Data[0].ID != "llama-3-8b" || list.Data[1].ID != "tiny" ||
		list.Data[0].Object != "model" || list.Data[0].OwnedBy == "" {
		t.Fatalf("unexpected model list %+v", list)
	}
	resp, err = http.Get(url + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("health: %d", resp.StatusCode)
	}
}

func TestChatNonStream(t *testing.T) {
	e, url := testengine.NewTestServer(t, testengine.Config{Record: true})
	body := `{"model":"test-model","messages":[{"role":"system","content":"You are  terse."},` +
		`{"role":"user","content":[{"type":"text","text":"say\nhello world"},{"type":"image_url","image_url":{"url":"x"}}]}],` +
		`"max_tokens":5,"temperature":0.2}`
	var got chatResponse
	decode(t, post(t, context.Background(), url+"/v1/chat/completions", body), http.StatusOK, &got)
	if got.Object != "chat.completion" || got.Model != "test-model" || !strings.HasPrefix(got.ID, "chatcmpl-") || got.Created == 0 {
		t.Fatalf("unexpected envelope %+v", got)
	}
	if len(got.Choices) != 1 || got.Choices[0].Message.Role != "assistant" ||
		got.Choices[0].Message.Content != testengine.CompletionText(5) || got.Choices[0].FinishReason != "length" {
		t.Fatalf("unexpected choices %+v", got.Choices)
	}
	// prompt: "You are terse." (3) + "say hello world" (3)
	if want := (usage{6, 5, 11}); got.Usage == nil || *got.Usage != want {
		t.Fatalf("usage %+v, want %+v", got.Usage, want)
	}
	reqs := e.Requests()
	if len(reqs) != 1 || string(reqs[0].Body) != body || reqs[0].Path != "/v1/chat/completions" ||
		reqs[0].Header.Get("Content-Type") != "application/json" {
		t.Fatalf("recorded requests %+v", reqs)
	}

	// No limit in the request: Config.DefaultTokens and finish "stop".
	decode(t, post(t, context.Background(), url+"/v1/chat/completions",
		`{"model":"test-model","messages":[{"role":"user","content":"hi"}]}`), http.StatusOK, &got)
	if got.Choices[0].FinishReason != "stop" || *got.Usage != (usage{1, testengine.DefaultTokens, 1 + testengine.DefaultTokens}) {
		t.Fatalf("default length: %+v %+v", got.Choices, got.Usage)
	}
}

func TestCompletionNonStream(t *testing.T) {
	_, url := testengine.NewTestServer(t, testengine.Config{DefaultTokens: 3})
	for _, tc := range []struct {
		prompt string
		want   int
	}{
		{`"one two three four"`, 4},
		{`["one two", "three"]`, 3},
		{`[1, 2, 3, 4, 5]`, 5},
		{`[[1, 2], [3]]`, 3},
	} {
		var got chatResponse
		decode(t, post(t, context.Background(), url+"/v1/completions",
			`{"model":"test-model","prompt":`+tc.prompt+`,"max_completion_tokens":2}`), http.StatusOK, &got)
		if got.Object != "text_completion" || got.Choices[0].Text != testengine.CompletionText(2) {
			t.Fatalf("%s: %+v", tc.prompt, got)
		}
		if *got.Usage != (usage{tc.want, 2, tc.want + 2}) {
			t.Fatalf("%s: usage %+v, want prompt %d", tc.prompt, *got.Usage, tc.want)
		}
	}
}

// sseEvent is one received "data:" payload and when the client read it.
type sseEvent struct {
	data string
	at   time.Time
}

func readSSE(t *testing.T, r io.Reader) []sseEvent {
	t.Helper()
	var out []sseEvent
	sc := bufio.NewScanner(r)
	blank := true
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			blank = true
			continue
		}
		if !blank {
			t.Fatalf("event without a blank line before it: %q", line)
		}
		blank = false
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("unexpected SSE line %q", line)
		}
		out = append(out, sseEvent{data: data, at: time.Now()})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestChatStream(t *testing.T) {
	for _, includeUsage := range []bool{false, true} {
		t.Run(map[bool]string{false: "no-usage", true: "include-usage"}[includeUsage], func(t *testing.T) {
			var chunks []testengine.ChunkRecord
			cfg := testengine.Config{ChunkInterval: 5 * time.Millisecond, Record: true}
			e, url := testengine.NewTestServer(t, cfg)
			body := `{"model":"test-model","stream":true,"max_tokens":4,"messages":[{"role":"user","content":"a b c"}]}`
			if includeUsage {
				body = `{"model":"test-model","stream":true,"max_tokens":4,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"a b c"}]}`
			}
			resp := post(t, context.Background(), url+"/v1/chat/completions", body)
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			events := readSSE(t, resp.Body)
			if events[len(events)-1].data != "[DONE]" {
				t.Fatalf("last event %q, want [DONE]", events[len(events)-1].data)
			}
			events = events[:len(events)-1]
			want := 1 + 4 + 1 // role, 4 tokens, finish
			if includeUsage {
				want++
			}
			if len(events) != want {
				t.Fatalf("%d chunks, want %d: %v", len(events), want, events)
			}
			var content strings.Builder
			var id string
			for i, ev := range events {
				var c chatResponse
				if err := json.Unmarshal([]byte(ev.data), &c); err != nil {
					t.Fatalf("chunk %d %q: %v", i, ev.data, err)
				}
				if c.Object != "chat.completion.chunk" || c.Model != "test-model" {
					t.Fatalf("chunk %d envelope %q", i, ev.data)
				}
				if id == "" {
					id = c.ID
				} else if c.ID != id {
					t.Fatalf("chunk %d id %q, want %q", i, c.ID, id)
				}
				hasUsage := strings.Contains(ev.data, `"usage"`)
				switch {
				case i == 0:
					if c.Choices[0].Delta == nil || c.Choices[0].Delta.Role != "assistant" {
						t.Fatalf("first chunk %q has no role", ev.data)
					}
				case includeUsage && i == len(events)-1:
					if len(c.Choices) != 0 || c.Usage == nil || *c.Usage != (usage{3, 4, 7}) {
						t.Fatalf("usage chunk %q", ev.data)
					}
					continue
				case i == 5:
					if c.Choices[0].FinishReason != "length" || c.Choices[0].Delta.Content != nil {
						t.Fatalf("finish chunk %q", ev.data)
					}
				default:
					if c.Choices[0].FinishReason != "" || c.Choices[0].Delta.Content == nil {
						t.Fatalf("content chunk %q", ev.data)
					}
					content.WriteString(*c.Choices[0].Delta.Content)
				}
				if hasUsage {
					t.Fatalf("chunk %d carries usage: %q", i, ev.data)
				}
			}
			if content.String() != testengine.CompletionText(4) {
				t.Fatalf("assembled %q, want %q", content.String(), testengine.CompletionText(4))
			}

			streams := e.Streams()
			if len(streams) != 1 || !streams[0].Done || streams[0].Cancelled || streams[0].ID != id {
				t.Fatalf("stream record %+v", streams)
			}
			chunks = streams[0].Chunks
			if len(chunks) != len(events)+1 {
				t.Fatalf("%d recorded chunks, %d received", len(chunks), len(events)+1)
			}
			for i := range events {
				if string(chunks[i].Data) != events[i].data {
					t.Fatalf("recorded chunk %d %q, received %q", i, chunks[i].Data, events[i].data)
				}
			}
			// Content chunks are ChunkInterval apart (only a lower bound is reliable).
			for i := 2; i <= 4; i++ {
				if d := chunks[i].FlushedAt.Sub(chunks[i-1].FlushedAt); d < cfg.ChunkInterval {
					t.Fatalf("chunks %d and %d flushed %v apart, want >= %v", i-1, i, d, cfg.ChunkInterval)
				}
			}
		})
	}
}

func TestCompletionStreamWithUsage(t *testing.T) {
	_, url := testengine.NewTestServer(t, testengine.Config{})
	resp := post(t, context.Background(), url+"/v1/completions",
		`{"model":"test-model","stream":true,"max_tokens":3,"prompt":"x y","stream_options":{"include_usage":true}}`)
	defer resp.Body.Close()
	events := readSSE(t, resp.Body)
	if len(events) != 3+1+1+1 { // 3 tokens, finish, usage, [DONE]
		t.Fatalf("events %v", events)
	}
	var text strings.Builder
	for _, ev := range events[:3] {
		var c chatResponse
		if err := json.Unmarshal([]byte(ev.data), &c); err != nil {
			t.Fatal(err)
		}
		if c.Object != "text_completion" {
			t.Fatalf("chunk %q", ev.data)
		}
		text.WriteString(c.Choices[0].Text)
	}
	if text.String() != testengine.CompletionText(3) {
		t.Fatalf("assembled %q", text.String())
	}
	var u chatResponse
	if err := json.Unmarshal([]byte(events[4].data), &u); err != nil || len(u.Choices) != 0 || *u.Usage != (usage{2, 3, 5}) {
		t.Fatalf("usage chunk %q: %v", events[4].data, err)
	}
}

func TestStreamFirstTokenDelayAndCancel(t *testing.T) {
	ended := make(chan testengine.StreamRecord, 1)
	flushed := make(chan testengine.ChunkRecord, 100)
	e, url := testengine.NewTestServer(t, testengine.Config{
		FirstTokenDelay: 30 * time.Millisecond,
		ChunkInterval:   20 * time.Millisecond,
		DefaultTokens:   1000,
		OnChunk:         func(_ string, c testengine.ChunkRecord) { flushed <- c },
		OnStreamEnd:     func(s testengine.StreamRecord) { ended <- s },
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	resp := post(t, ctx, url+"/v1/chat/completions", `{"model":"test-model","stream":true,"messages":[{"role":"user","content":"go"}]}`)
	br := bufio.NewReader(resp.Body)
	for range 3 { // role chunk and two tokens
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if _, err := br.ReadString('\n'); err != nil { // blank line
			t.Fatal(err)
		}
		c := <-flushed
		if !strings.HasPrefix(line, "data: ") || strings.TrimSpace(line[6:]) != string(c.Data) {
			t.Fatalf("received %q, engine flushed %q", line, c.Data)
		}
		if c.Index == 0 && c.FlushedAt.Sub(start) < 30*time.Millisecond {
			t.Fatalf("first chunk after %v, want >= first-token delay", c.FlushedAt.Sub(start))
		}
	}
	cancel()
	resp.Body.Close()
	select {
	case s := <-ended:
		if !s.Cancelled || s.Done {
			t.Fatalf("stream record %+v, want cancelled", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the engine did not notice the client going away")
	}
	if st := e.Stats(); st.CancelledRequests != 1 || st.Streams != 1 || st.CompletedStreams != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestEmbeddings(t *testing.T) {
	_, url := testengine.NewTestServer(t, testengine.Config{EmbeddingDim: 16})
	var got struct {
		Object string `json:"object"`
		Model  string `json:"model"`
		Data   []struct {
			Object    string          `json:"object"`
			Index     int             `json:"index"`
			Embedding json.RawMessage `json:"embedding"`
		} `json:"data"`
		Usage map[string]int `json:"usage"`
	}
	decode(t, post(t, context.Background(), url+"/v1/embeddings",
		`{"model":"test-model","input":["hello world","hello world","a b c"]}`), http.StatusOK, &got)
	if got.Object != "list" || got.Model != "test-model" || len(got.Data) != 3 {
		t.Fatalf("unexpected %+v", got)
	}
	if len(got.Usage) != 2 || got.Usage["prompt_tokens"] != 7 || got.Usage["total_tokens"] != 7 {
		t.Fatalf("usage %v", got.Usage)
	}
	vecs := make([][]float32, 3)
	for i, d := range got.Data {
		if d.Object != "embedding" || d.Index != i {
			t.Fatalf("item %d: %+v", i, d)
		}
		if err := json.Unmarshal(d.Embedding, &vecs[i]); err != nil {
			t.Fatal(err)
		}
		var norm float64
		for _, v := range vecs[i] {
			norm += float64(v) * float64(v)
		}
		if len(vecs[i]) != 16 || math.Abs(norm-1) > 1e-4 {
			t.Fatalf("item %d: len %d norm %v", i, len(vecs[i]), norm)
		}
	}
	want := testengine.EmbeddingOf("hello world", 16)
	for j := range want {
		if vecs[0][j] != want[j] || vecs[1][j] != want[j] {
			t.Fatalf("not deterministic: %v %v %v", vecs[0], vecs[1], want)
		}
	}
	if vecs[2][0] == vecs[0][0] && vecs[2][1] == vecs[0][1] {
		t.Fatalf("different inputs gave the same vector")
	}

	// base64, as the openai SDKs ask for by default: little-endian float32s.
	decode(t, post(t, context.Background(), url+"/v1/embeddings",
		`{"model":"test-model","input":"hello world","encoding_format":"base64","dimensions":4}`), http.StatusOK, &got)
	var s string
	if err := json.Unmarshal(got.Data[0].Embedding, &s); err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(raw) != 16 {
		t.Fatalf("base64 %q: %v", s, err)
	}
	want = testengine.EmbeddingOf("hello world", 4)
	for j := range want {
		if v := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*j:])); v != want[j] {
			t.Fatalf("base64 component %d = %v, want %v", j, v, want[j])
		}
	}
}

func TestErrors(t *testing.T) {
	e, url := testengine.NewTestServer(t, testengine.Config{MaxBodyBytes: 1024})
	var ae apiError
	decode(t, post(t, context.Background(), url+"/v1/chat/completions",
		`{"model":"nope","messages":[{"role":"user","content":"hi"}]}`), http.StatusNotFound, &ae)
	if ae.Error.Code == nil || *ae.Error.Code != "model_not_found" || ae.Error.Type != "invalid_request_error" ||
		!strings.Contains(ae.Error.Message, "nope") {
		t.Fatalf("unknown model error %+v", ae)
	}
	decode(t, post(t, context.Background(), url+"/v1/completions", `{"model":`), http.StatusBadRequest, &ae)
	decode(t, post(t, context.Background(), url+"/v1/embeddings", `{"model":"test-model","input":"`+strings.Repeat("x", 2000)+`"}`),
		http.StatusRequestEntityTooLarge, &ae)

	e.SetMode(testengine.ModeFail)
	decode(t, post(t, context.Background(), url+"/v1/chat/completions",
		`{"model":"test-model","messages":[{"role":"user","content":"hi"}]}`), http.StatusInternalServerError, &ae)
	if ae.Error.Message == "" {
		t.Fatalf("fail mode error %+v", ae)
	}
	resp, err := http.Get(url + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("health in fail mode: %d", resp.StatusCode)
	}

	for _, m := range []testengine.Mode{testengine.ModeHang, testengine.ModeStall} {
		e.SetMode(m)
		before := e.Stats().CancelledRequests
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/chat/completions",
			strings.NewReader(`{"model":"test-model","messages":[{"role":"user","content":"hi"}]}`))
		_, err := http.DefaultClient.Do(req)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%v: err %v, want a client timeout", m, err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for e.Stats().CancelledRequests == before && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if e.Stats().CancelledRequests != before+1 {
			t.Fatalf("%v: the engine did not record the cancellation", m)
		}
	}

	// Stall: headers and the first chunk arrive, then nothing; the stream ends cancelled.
	streamBody := `{"model":"test-model","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	before := e.Stats()
	ctx, cancel := context.WithCancel(context.Background())
	resp = post(t, ctx, url+"/v1/chat/completions", streamBody)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.Contains(line, `"role":"assistant"`) {
		t.Fatalf("stall: first line %q, %v", line, err)
	}
	cancel()
	resp.Body.Close()

	// Hang: a stream gets nothing at all, not even headers.
	e.SetMode(testengine.ModeHang)
	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/chat/completions", strings.NewReader(streamBody))
	if _, err := http.DefaultClient.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hanging stream: err %v, want a client timeout", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.Stats().CancelledRequests < before.CancelledRequests+2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if st := e.Stats(); st.Streams != before.Streams+2 || st.CancelledRequests != before.CancelledRequests+2 {
		t.Fatalf("stats %+v after a stalled and a hanging stream, before %+v", st, before)
	}
}

func TestParseMode(t *testing.T) {
	for _, m := range []testengine.Mode{testengine.ModeNormal, testengine.ModeFail, testengine.ModeHang, testengine.ModeStall} {
		got, err := testengine.ParseMode(m.String())
		if err != nil || got != m {
			t.Fatalf("%v: %v %v", m, got, err)
		}
	}
	if _, err := testengine.ParseMode("bogus"); err == nil {
		t.Fatal("bogus mode accepted")
	}
}

func TestCountWords(t *testing.T) {
	for _, s := range []string{"", "  ", "a", " a  b\tc\n", "héllo wörld", "a\u00a0b", "x\u2003y z"} {
		if got, want := testengine.CountWords(s), len(strings.Fields(s)); got != want {
			t.Errorf("CountWords(%q) = %d, want %d", s, got, want)
		}
	}
}

// BenchmarkChatNonStream measures the handler alone (no network): it is the floor the
// "direct" path of the data-plane benchmark starts from.
func BenchmarkChatNonStream(b *testing.B) {
	e := testengine.New(testengine.Config{})
	body := []byte(`{"model":"test-model","messages":[{"role":"user","content":"Say hello to the world in a few words"}],"max_tokens":16}`)
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", bytes.NewReader(body))
		w := httptest.NewRecorder()
		e.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatal(w.Code)
		}
	}
}
