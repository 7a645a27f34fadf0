package cli

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// `runtime fetch` end to end: the weights land in --dest and the outcome, success or the
// error with its kind, is what the kubelet finds in the termination log.
func TestFetchCommandWritesWeightsAndTerminationMessage(t *testing.T) {
	weights := bytes.Repeat([]byte("gguf"), 1<<16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/tiny.gguf" {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "tiny.gguf", time.Time{}, bytes.NewReader(weights))
	}))
	defer srv.Close()
	dir := t.TempDir()
	dest := filepath.Join(dir, "models", "tiny")
	termLog := filepath.Join(dir, "termination-log")
	if err := os.WriteFile(termLog, nil, 0o644); err != nil { // the kubelet creates it
		t.Fatal(err)
	}

	var stdout, stderr bytes.Buffer
	args := []string{"fetch", "--uri=" + srv.URL + "/tiny.gguf", "--dest=" + dest, "--format=gguf", "--termination-log=" + termLog}
	if code := Execute(args, &stdout, &stderr); code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	got, err := os.ReadFile(filepath.Join(dest, ".helixflow-model.gguf"))
	if err != nil || !bytes.Equal(got, weights) {
		t.Fatalf("the weights did not arrive behind the GGUF link: %v", err)
	}
	if msg, _ := os.ReadFile(termLog); !strings.HasPrefix(string(msg), "fetched 1 files") {
		t.Errorf("termination message %q, want the summary", msg)
	}

	stderr.Reset()
	args = []string{"fetch", "--uri=" + srv.URL + "/missing.gguf", "--dest=" + filepath.Join(dir, "m2"), "--termination-log=" + termLog}
	if code := Execute(args, &stdout, &stderr); code != ExitError {
		t.Fatalf("exit %d for a missing file, want %d", code, ExitError)
	}
	if msg, _ := os.ReadFile(termLog); !strings.HasPrefix(string(msg), "NotFound: revision/file not found") {
		t.Errorf("termination message %q, want the NotFound error", msg)
	}
	if !strings.Contains(stderr.String(), "revision/file not found") {
		t.Errorf("stderr %q does not say what failed", stderr.String())
	}

	// Out of a pod there is no termination log; nothing is created in its place.
	missingLog := filepath.Join(dir, "no-such-dir", "termination-log")
	args = []string{"fetch", "--uri=" + srv.URL + "/tiny.gguf", "--dest=" + filepath.Join(dir, "m3"), "--termination-log=" + missingLog}
	if code := Execute(args, &stdout, &stderr); code != ExitOK {
		t.Fatalf("exit %d without a termination log", code)
	}
	if _, err := os.Stat(missingLog); !os.IsNotExist(err) {
		t.Errorf("the termination log was created: %v", err)
	}
}
