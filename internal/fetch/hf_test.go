package fetch

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/helixflow/helixflow/test/fakehub"
)

// tinyModel is a small model repository as the Hub holds one: safetensors shards (LFS),
// a legacy .bin copy of the weights, configs and a tokenizer (small files, plain Git).
func tinyModel() map[string][]byte {
	return map[string][]byte{
		"config.json":                      []byte(`{"architectures":["LlamaForCausalLM"],"hidden_size":64}`),
		"generation_config.json":           []byte(`{"temperature":0.6}`),
		"tokenizer.json":                   randomBytes(30, 40<<10),
		"model-00001-of-00002.safetensors": randomBytes(31, 1<<20+4096),
		"model-00002-of-00002.safetensors": randomBytes(32, 300<<10),
		"model.safetensors.index.json":     []byte(`{"weight_map":{}}`),
		"pytorch_model.bin":                randomBytes(33, 200<<10),
		"original/params.json":             []byte(`{"dim":64}`),
	}
}

func startHub(t *testing.T) *fakehub.Hub {
	t.Helper()
	hub := fakehub.New()
	t.Cleanup(hub.Close)
	return hub
}

func hfOptions(t *testing.T, hub *fakehub.Hub, uri string, env map[string]string) Options {
	opts := testOptions(t, uri)
	all := map[string]string{"HF_ENDPOINT": hub.URL()}
	for k, v := range env {
		all[k] = v
	}
	opts.Credentials.Getenv = envFrom(all)
	return opts
}

func TestHFRepositoryDownloadsVerifiedAndKeepsTheTokenFromTheCDN(t *testing.T) {
	hub := startHub(t)
	hub.SetTreePageSize(3) // the listing comes in pages, followed through the Link header
	files := tinyModel()
	if err := hub.AddRepo("acme/llama-tiny", fakehub.Repo{Files: files, Private: true, Tokens: []string{"hf_reader"}}); err != nil {
		t.Fatal(err)
	}
	opts := hfOptions(t, hub, "hf://acme/llama-tiny", map[string]string{"HF_TOKEN": "hf_reader"})
	opts.Format = FormatSafetensors
	sum := mustRun(t, opts)

	want := tinyModel()
	delete(want, "pytorch_model.bin") // vLLM loads the safetensors; the .bin copy is not fetched
	assertFiles(t, opts.Dest, want)
	if sum.Verified != len(want) {
		t.Errorf("%d of %d files verified (sha256 for LFS files, the Git blob id for the others)", sum.Verified, len(want))
	}
	if sum.Resolved != hub.Commit("acme/llama-tiny") {
		t.Errorf("resolved %q, want the commit %s", sum.Resolved, hub.Commit("acme/llama-tiny"))
	}
	st := hub.Stats()
	if st.Requests[fakehub.KindCDN] == 0 {
		t.Fatal("no LFS file came from the CDN: the test does not test the redirect")
	}
	for _, a := range st.Auth[fakehub.KindCDN] {
		if a != "" {
			t.Fatalf("the token was sent to the CDN: %q", a)
		}
	}
	for _, a := range st.Auth[fakehub.KindTree] {
		if a != "Bearer hf_reader" {
			t.Fatalf("the API got Authorization %q", a)
		}
	}

	hub.ResetStats()
	start := time.Now()
	if again := mustRun(t, opts); !again.NoOp || hub.Stats().TotalRequests() != 0 {
		t.Errorf("second run: NoOp=%v with %d requests, want a no-op without any", again.NoOp, hub.Stats().TotalRequests())
	}
	t.Logf("no-op run: %s", time.Since(start))
}

func TestHFErrorsSayWhatToDo(t *testing.T) {
	hub := startHub(t)
	if err := hub.AddRepo("acme/private", fakehub.Repo{Files: tinyModel(), Private: true, Tokens: []string{"hf_ok"}}); err != nil {
		t.Fatal(err)
	}
	if err := hub.AddRepo("acme/gated", fakehub.Repo{Files: tinyModel(), Gated: true, Tokens: []string{"hf_ok"}}); err != nil {
		t.Fatal(err)
	}
	hub.AddToken("hf_other")
	run := func(uri, rev string, env map[string]string) error {
		opts := hfOptions(t, hub, uri, env)
		opts.Revision = rev
		_, err := Run(context.Background(), opts)
		return err
	}
	wantKind(t, run("hf://acme/private", "", nil), KindUnauthorized, "token missing or not allowed for hf://acme/private", "HTTP 401", "HF_TOKEN")
	wantKind(t, run("hf://acme/gated", "", map[string]string{"HF_TOKEN": "hf_other"}), KindUnauthorized, "token missing or not allowed", "HTTP 403", "GatedRepo")
	wantKind(t, run("hf://acme/private", "v9", map[string]string{"HF_TOKEN": "hf_ok"}), KindNotFound, "revision/file not found", "RevisionNotFound")
	wantKind(t, run("hf://acme/nothing-here", "", map[string]string{"HF_TOKEN": "hf_ok"}), KindNotFound, "revision/file not found", "RepoNotFound")

	// The token from the mounted Secret (spec.model.credentialsSecretRef).
	opts := hfOptions(t, hub, "hf://acme/private", nil)
	opts.Credentials.Dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(opts.Credentials.Dir, "HF_TOKEN"), []byte("hf_ok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, opts)
	assertFiles(t, opts.Dest, tinyModel())

	full := hfOptions(t, hub, "hf://acme/private", map[string]string{"HF_TOKEN": "hf_ok"})
	full.FreeSpace = func(string) (int64, error) { return 100 << 10, nil }
	_, err := Run(context.Background(), full)
	wantKind(t, err, KindDiskFull, "disk full", "needs 1.5 MiB more", "only 100.0 KiB is free")
}

func TestHFChecksumMismatchIsRefused(t *testing.T) {
	hub := startHub(t)
	if err := hub.AddRepo("acme/m", fakehub.Repo{Files: tinyModel()}); err != nil {
		t.Fatal(err)
	}
	hub.Corrupt("acme/m", "model-00002-of-00002.safetensors")
	opts := hfOptions(t, hub, "hf://acme/m", nil)
	_, err := Run(context.Background(), opts)
	wantKind(t, err, KindChecksumMismatch, "model-00002-of-00002.safetensors", "sha256")
	if _, err := os.Stat(filepath.Join(opts.Dest, "model-00002-of-00002.safetensors")); !os.IsNotExist(err) {
		t.Errorf("the corrupt file reached its final path")
	}
	if _, err := os.Stat(filepath.Join(opts.Dest, markerName)); !os.IsNotExist(err) {
		t.Errorf("the directory was marked complete")
	}
}

func TestHFResumeAfterKillMidFileAndAfterDroppedConnections(t *testing.T) {
	hub := startHub(t)
	dir := t.TempDir()
	if err := fakehub.GenerateModel(dir, map[string]int64{"model.safetensors": 6 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := hub.AddRepo("acme/big", fakehub.Repo{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{}
	for _, name := range []string{"model.safetensors", "config.json", "tokenizer.json"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		want[name] = b
	}
	total := int64(len(want["model.safetensors"]))

	hub.Throttle(8 << 20)
	opts := hfOptions(t, hub, "hf://acme/big", nil)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for ctx.Err() == nil && hub.Stats().BodyBytes < total/2 {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	if _, err := Run(ctx, opts); err == nil {
		t.Fatal("the interrupted fetch succeeded")
	}
	first := hub.Stats().BodyBytes
	hub.Throttle(0)
	hub.ResetStats()
	hub.CutAfter(100 << 10) // and every file's next response breaks after 100 KiB
	sum := mustRun(t, opts)
	assertFiles(t, opts.Dest, want)
	second := hub.Stats().BodyBytes
	if sum.Reused == 0 || second >= total {
		t.Errorf("the resumed run downloaded %d bytes (reused %d) of a %d-byte file after %d were fetched", second, sum.Reused, total, first)
	}
}
