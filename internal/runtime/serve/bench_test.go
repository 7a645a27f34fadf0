package serve

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/helixflow/helixflow/test/testengine"
)

// BenchmarkChatThroughRuntime is one non-streamed chat completion through the runtime's
// HTTP front (the fast path; auth, limits, metrics, the engine call) over loopback, for profiling the
// request path (go test -bench ChatThroughRuntime -cpuprofile). Whole-system figures
// against nginx come from test/bench/dataplane.
func BenchmarkChatThroughRuntime(b *testing.B) {
	t := &testing.T{}
	r := newRig(t, testengine.Config{}, nil)
	key := r.addKey("bench", nil)
	url := r.url + RouteChatCompletions // the production front: the fast path for these calls
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	body := []byte(chatBody)
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+key)
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}
