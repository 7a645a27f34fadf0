package clients_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/helixflow/helixflow/test/clients"
	"github.com/helixflow/helixflow/test/testengine"
)

type sdkUsage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// TestOpenAINodeSDKAgainstTestEngine proves that the npm install works and that the test engine
// speaks the OpenAI API as the official SDK expects it, streaming and errors included.
func TestOpenAINodeSDKAgainstTestEngine(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatalf("node is not installed: %v", err)
	}
	_, url := testengine.NewTestServer(t, testengine.Config{Models: []string{"smoke-model", "other"}})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := clients.NodeCommand(ctx, t, "smoke.mjs")
	cmd.Env = append(os.Environ(), "OPENAI_BASE_URL="+url+"/v1", "OPENAI_API_KEY=sk-test")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("node smoke.mjs: %v\n%s", err, stderr.String())
	}
	var got struct {
		SDKVersion string   `json:"sdkVersion"`
		Models     []string `json:"models"`
		Chat       struct {
			Content      string   `json:"content"`
			FinishReason string   `json:"finishReason"`
			Usage        sdkUsage `json:"usage"`
		} `json:"chat"`
		Stream struct {
			Content      string    `json:"content"`
			Chunks       int       `json:"chunks"`
			FinishReason string    `json:"finishReason"`
			Usage        *sdkUsage `json:"usage"`
		} `json:"stream"`
		Embeddings struct {
			Count int            `json:"count"`
			Dim   int            `json:"dim"`
			Usage map[string]int `json:"usage"`
		} `json:"embeddings"`
		NotFound *struct {
			Class  string `json:"class"`
			Status int    `json:"status"`
			Code   string `json:"code"`
		} `json:"notFound"`
	}
	if err := json.Unmarshal(stdout, &got); err != nil {
		t.Fatalf("decoding %q: %v", stdout, err)
	}
	t.Logf("openai SDK %s", got.SDKVersion)
	if !strings.HasPrefix(got.SDKVersion, "6.") {
		t.Errorf("SDK version %q, want 6.x", got.SDKVersion)
	}
	if strings.Join(got.Models, ",") != "smoke-model,other" {
		t.Errorf("models %v", got.Models)
	}
	// "hello there world" is 3 prompt tokens.
	if got.Chat.Content != testengine.CompletionText(5) || got.Chat.FinishReason != "length" ||
		got.Chat.Usage != (sdkUsage{3, 5, 8}) {
		t.Errorf("chat %+v", got.Chat)
	}
	// role chunk + 4 tokens + finish chunk + usage chunk
	if got.Stream.Content != testengine.CompletionText(4) || got.Stream.Chunks != 7 ||
		got.Stream.FinishReason != "length" || got.Stream.Usage == nil || *got.Stream.Usage != (sdkUsage{3, 4, 7}) {
		t.Errorf("stream %+v usage %+v", got.Stream, got.Stream.Usage)
	}
	if got.Embeddings.Count != 2 || got.Embeddings.Dim != testengine.DefaultEmbeddingDim ||
		got.Embeddings.Usage["prompt_tokens"] != 3 {
		t.Errorf("embeddings %+v", got.Embeddings)
	}
	if got.NotFound == nil || got.NotFound.Class != "NotFoundError" || got.NotFound.Status != 404 ||
		got.NotFound.Code != "model_not_found" {
		t.Errorf("unknown model: %+v", got.NotFound)
	}
}

func TestNginxPath(t *testing.T) {
	if testing.Short() {
		t.Skip("installs nginx when missing")
	}
	path := clients.NginxPath(t)
	out, err := exec.Command(path, "-v").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "nginx/") {
		t.Fatalf("%s -v: %v %s", path, err, out)
	}
}
