package fetch

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/go-logr/logr"
)

// BenchmarkFetch downloads one 256 MiB file served from disk (sendfile) over loopback with 1
// and 8 connections, verifying its sha256: the fetcher's own cost per byte, without a
// second process. `make bench-fetch` compares whole processes against curl.
func BenchmarkFetch(b *testing.B) {
	const size = 256 << 20
	dir := b.TempDir()
	content := randomBytes(99, size)
	src := filepath.Join(dir, "model.safetensors")
	if err := os.WriteFile(src, content, 0o644); err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	defer srv.Close()
	uri := srv.URL + "/model.safetensors#sha256=" + sha256Hex(content)
	for _, conns := range []int{1, 8} {
		b.Run("connections="+strconv.Itoa(conns), func(b *testing.B) {
			b.SetBytes(size)
			for i := 0; b.Loop(); i++ {
				dest := filepath.Join(dir, "dest"+strconv.Itoa(i))
				_, err := Run(context.Background(), Options{URI: uri, Dest: dest, Concurrency: conns, Log: logr.Discard()})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				_ = os.RemoveAll(dest)
				b.StartTimer()
			}
		})
	}
}
