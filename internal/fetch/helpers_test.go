package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
)

// randomBytes returns n deterministic pseudo-random bytes.
func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	return b
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// fileServer is a plain HTTP file server for tests (ranges, HEAD, ETag via ServeContent),
// counting what it sends and optionally slowed down so a test can interrupt a download.
type fileServer struct {
	*httptest.Server
	mu       sync.Mutex
	files    map[string][]byte
	token    string // when set, requests need "Authorization: Bearer <token>"
	sent     atomic.Int64
	requests atomic.Int64
	delay    time.Duration // per 64 KiB written
}

func newFileServer(t *testing.T, files map[string][]byte) *fileServer {
	fs := &fileServer{files: files}
	fs.Server = httptest.NewServer(http.HandlerFunc(fs.serve))
	t.Cleanup(fs.Close)
	return fs
}

func (fs *fileServer) serve(w http.ResponseWriter, r *http.Request) {
	fs.requests.Add(1)
	fs.mu.Lock()
	b, ok := fs.files[strings.TrimPrefix(r.URL.Path, "/")]
	delay, token := fs.delay, fs.token
	fs.mu.Unlock()
	if token != "" && r.Header.Get("Authorization") != "Bearer "+token {
		http.Error(w, "bad credentials", http.StatusUnauthorized)
		return
	}
	if !ok {
		http.NotFound(w, r)
		return
	}
	http.ServeContent(&countingWriter{ResponseWriter: w, n: &fs.sent, delay: delay}, r, "", time.Time{}, bytes.NewReader(b))
}

func (fs *fileServer) set(delay time.Duration, token string) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.delay, fs.token = delay, token
}

type countingWriter struct {
	http.ResponseWriter
	n     *atomic.Int64
	delay time.Duration
}

func (c *countingWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		k := min(len(p), 64<<10)
		if c.delay > 0 {
			time.Sleep(c.delay)
		}
		n, err := c.ResponseWriter.Write(p[:k])
		written += n
		c.n.Add(int64(n))
		if err != nil {
			return written, err
		}
		p = p[k:]
	}
	return written, nil
}

// testOptions fetch into a fresh directory with small chunks, so even small test files are
// split into several ranges.
func testOptions(t *testing.T, uri string) Options {
	return Options{URI: uri, Dest: filepath.Join(t.TempDir(), "model"), ChunkSize: 256 << 10, Concurrency: 4,
		Log: testr.New(t), ProgressInterval: time.Second, Credentials: Credentials{Getenv: func(string) string { return "" }}}
}

// assertFiles checks dest holds exactly want (plus the completion marker).
func assertFiles(t *testing.T, dest string, want map[string][]byte) {
	t.Helper()
	got := map[string]bool{}
	err := filepath.WalkDir(dest, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dest, p)
		got[filepath.ToSlash(rel)] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range want {
		b, err := os.ReadFile(filepath.Join(dest, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !bytes.Equal(b, content) {
			t.Errorf("%s: %d bytes differ from the source's %d", name, len(b), len(content))
		}
		delete(got, name)
	}
	delete(got, markerName)
	delete(got, lockName)
	if len(got) > 0 {
		t.Errorf("unexpected files in %s: %v", dest, got)
	}
	if _, err := os.Stat(filepath.Join(dest, partialDirName)); !os.IsNotExist(err) {
		t.Errorf("the partial directory is still there: %v", err)
	}
}

func mustRun(t *testing.T, opts Options) Summary {
	t.Helper()
	sum, err := Run(context.Background(), opts)
	if err != nil {
		t.Fatalf("fetch %s: %v", opts.URI, err)
	}
	t.Logf("%s", sum)
	return sum
}

func wantKind(t *testing.T, err error, kind Kind, msgParts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want a %s error, got none", kind)
	}
	if KindOf(err) != kind {
		t.Fatalf("want a %s error, got %s: %v", kind, KindOf(err), err)
	}
	for _, p := range msgParts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not say %q", err, p)
		}
	}
}
