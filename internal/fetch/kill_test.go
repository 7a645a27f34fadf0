package fetch

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestMain doubles as the fetch child process of TestResumeAfterSIGKILL.
func TestMain(m *testing.M) {
	if uri := os.Getenv("HELIXFLOW_FETCH_CHILD_URI"); uri != "" {
		_, err := Run(context.Background(), Options{URI: uri, Dest: os.Getenv("HELIXFLOW_FETCH_CHILD_DEST"), ChunkSize: 256 << 10, Concurrency: 4})
		if err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A killed init container (SIGKILL: no chance to save anything at exit) is restarted by the
// kubelet; the new fetch continues from the state the old one saved as it went.
func TestResumeAfterSIGKILL(t *testing.T) {
	content := randomBytes(7, 8<<20)
	srv := newFileServer(t, map[string][]byte{"model.bin": content})
	srv.set(20*time.Millisecond, "")
	opts := testOptions(t, srv.URL+"/model.bin#sha256="+sha256Hex(content))

	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), "HELIXFLOW_FETCH_CHILD_URI="+opts.URI, "HELIXFLOW_FETCH_CHILD_DEST="+opts.Dest)
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	statePath := filepath.Join(opts.Dest, partialDirName, "state", "model.bin.json")
	deadline := time.Now().Add(30 * time.Second)
	for savedBytes(statePath) == 0 {
		if time.Now().After(deadline) {
			_ = child.Process.Kill()
			t.Fatal("the child saved no progress in 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	saved, sentBefore := savedBytes(statePath), srv.sent.Load()
	if saved >= int64(len(content)) {
		t.Skipf("the child finished (%d bytes saved) before it could be killed", saved)
	}

	srv.set(0, "")
	sum := mustRun(t, opts)
	assertFiles(t, opts.Dest, map[string][]byte{"model.bin": content})
	if sum.Reused < saved || sum.Downloaded > int64(len(content))-saved {
		t.Errorf("after SIGKILL with %d bytes saved: reused %d, downloaded %d of %d", saved, sum.Reused, sum.Downloaded, len(content))
	}
	t.Logf("killed after %d bytes sent (%d saved); the restart downloaded %d", sentBefore, saved, srv.sent.Load()-sentBefore)
}

func savedBytes(statePath string) int64 {
	b, err := os.ReadFile(statePath)
	if err != nil {
		return 0
	}
	var st fileState
	if json.Unmarshal(b, &st) != nil {
		return 0
	}
	var n int64
	for _, d := range st.Done {
		n += d
	}
	return n
}
