package dataplane_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/test/testengine"
)

// chat sends one chat completion of a known size: 3 prompt words (the test engine counts
// words) and maxTokens completion tokens; stream picks SSE.
func chat(t *testing.T, url, key string, maxTokens int, stream bool) {
	t.Helper()
	body := fmt.Sprintf(`{"model":%q,"max_tokens":%d,"stream":%v,"messages":[{"role":"user","content":"count these tokens"}]}`,
		testengine.DefaultModel, maxTokens, stream)
	req, err := http.NewRequest(http.MethodPost, url+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, data)
	}
}

// TestUsageExactAcrossRestarts: N requests of known token counts, with the runtime and then
// the manager restarted in the middle, end as exactly their sum in the ApiKey's status.
func TestUsageExactAcrossRestarts(t *testing.T) {
	c := newCluster(t, testengine.Config{})
	key := c.apiKey("metered", nil)
	var wantTokens, wantRequests int64
	send := func(n int) {
		for i := range n {
			maxTokens := 1 + i%7
			chat(t, c.runtimeURL, key, maxTokens, i%2 == 0)
			wantTokens += int64(3 + maxTokens)
			wantRequests++
		}
	}
	send(20)
	c.stopRuntime() // drains and flushes its usage
	c.startRuntime()
	send(20)
	c.stopManager()
	c.stopManager = startManager(t, c.cfg)
	send(20)

	ak := &servingv1alpha1.ApiKey{}
	eventually(t, "usage in the ApiKey status", func() error {
		if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: c.ns, Name: "metered"}, ak); err != nil {
			return err
		}
		u := ak.Status.Usage
		if u == nil || u.Tokens != wantTokens || u.Requests != wantRequests {
			return fmt.Errorf("usage %+v, want %d tokens in %d requests", u, wantTokens, wantRequests)
		}
		return nil
	})
	// Nothing more arrives later (a double count would show up after the exact total).
	time.Sleep(3 * time.Second)
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: c.ns, Name: "metered"}, ak); err != nil {
		t.Fatal(err)
	}
	if ak.Status.Usage.Tokens != wantTokens || ak.Status.Usage.Requests != wantRequests {
		t.Fatalf("usage moved to %+v after reaching the exact total", ak.Status.Usage)
	}
	t.Logf("%d requests, %d tokens counted exactly across a runtime and a manager restart", wantRequests, wantTokens)
}
