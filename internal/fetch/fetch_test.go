package fetch

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
)

func TestHTTPSFileDownloadsInRangesAndVerifies(t *testing.T) {
	content := randomBytes(1, 3<<20+12345)
	srv := newFileServer(t, map[string][]byte{"w/model.gguf": content})
	opts := testOptions(t, srv.URL+"/w/model.gguf#sha256="+sha256Hex(content))
	sum := mustRun(t, opts)
	assertFiles(t, opts.Dest, map[string][]byte{"model.gguf": content})
	if sum.Verified != 1 || sum.Downloaded != int64(len(content)) || sum.Files != 1 {
		t.Errorf("summary %+v: want 1 file verified, %d bytes downloaded", sum, len(content))
	}
	// 13 chunks of 256 KiB plus the HEAD: the file really was fetched in ranges.
	if n := srv.requests.Load(); n < 10 {
		t.Errorf("%d requests: the file was not fetched in ranges", n)
	}

	// A second run over the complete directory does nothing, without asking the server.
	before := srv.requests.Load()
	start := time.Now()
	again := mustRun(t, opts)
	if !again.NoOp || srv.requests.Load() != before {
		t.Errorf("second run: NoOp=%v, %d new requests; want a no-op without requests", again.NoOp, srv.requests.Load()-before)
	}
	t.Logf("no-op run took %s", time.Since(start))
}

func TestResumeAfterInterruptionFetchesOnlyTheRest(t *testing.T) {
	content := randomBytes(2, 4<<20)
	srv := newFileServer(t, map[string][]byte{"model.bin": content})
	srv.set(2*time.Millisecond, "") // about 30 MiB/s: slow enough to stop half way
	opts := testOptions(t, srv.URL+"/model.bin#sha256="+sha256Hex(content))

	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for ctx.Err() == nil && srv.sent.Load() < int64(len(content))/2 {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	if _, err := Run(ctx, opts); !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted fetch: want context.Canceled, got %v", err)
	}
	if _, err := os.Stat(filepath.Join(opts.Dest, markerName)); !os.IsNotExist(err) {
		t.Fatalf("an interrupted fetch left a completion marker: %v", err)
	}
	if _, err := os.Stat(filepath.Join(opts.Dest, "model.bin")); !os.IsNotExist(err) {
		t.Fatalf("an interrupted fetch left a half-written file at its final path: %v", err)
	}
	firstSent := srv.sent.Load()

	srv.set(0, "")
	sum := mustRun(t, opts)
	assertFiles(t, opts.Dest, map[string][]byte{"model.bin": content})
	if sum.Reused == 0 || sum.Downloaded >= int64(len(content)) || sum.Reused+sum.Downloaded != int64(len(content)) {
		t.Errorf("resumed run: reused %d + downloaded %d, want the first run's bytes reused and only the rest (of %d) downloaded", sum.Reused, sum.Downloaded, len(content))
	}
	if second := srv.sent.Load() - firstSent; second >= int64(len(content)) {
		t.Errorf("the server sent %d bytes on the resumed run, the whole file is %d", second, len(content))
	}
	if sum.Verified != 1 {
		t.Errorf("the resumed file was not verified: %+v", sum)
	}
}

func TestChecksumMismatchIsRefused(t *testing.T) {
	content := randomBytes(3, 1<<20)
	srv := newFileServer(t, map[string][]byte{"model.gguf": content})
	opts := testOptions(t, srv.URL+"/model.gguf#sha256="+sha256Hex([]byte("something else")))
	_, err := Run(context.Background(), opts)
	wantKind(t, err, KindChecksumMismatch, "model.gguf", "sha256", sha256Hex(content))
	for _, name := range []string{"model.gguf", markerName} {
		if _, err := os.Stat(filepath.Join(opts.Dest, name)); !os.IsNotExist(err) {
			t.Errorf("%s exists after a checksum mismatch: %v", name, err)
		}
	}
}

func TestDiskFullIsRefusedBeforeDownloading(t *testing.T) {
	content := randomBytes(4, 2<<20)
	srv := newFileServer(t, map[string][]byte{"model.gguf": content})
	opts := testOptions(t, srv.URL+"/model.gguf")
	opts.FreeSpace = func(string) (int64, error) { return 1 << 20, nil }
	_, err := Run(context.Background(), opts)
	wantKind(t, err, KindDiskFull, "needs 2.0 MiB more", "only 1.0 MiB is free", opts.Dest)
	if srv.sent.Load() != 0 {
		t.Errorf("%d bytes were downloaded before refusing", srv.sent.Load())
	}
}

func TestHTTPErrorsSayWhatToDo(t *testing.T) {
	srv := newFileServer(t, map[string][]byte{"model.gguf": []byte("x")})
	_, err := Run(context.Background(), testOptions(t, srv.URL+"/missing.gguf"))
	wantKind(t, err, KindNotFound, "not found", "missing.gguf")

	srv.set(0, "s3cret")
	_, err = Run(context.Background(), testOptions(t, srv.URL+"/model.gguf"))
	wantKind(t, err, KindUnauthorized, "token missing or not allowed", "credentialsSecretRef")

	opts := testOptions(t, srv.URL+"/model.gguf")
	opts.Credentials.Dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(opts.Credentials.Dir, "token"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, opts)
	assertFiles(t, opts.Dest, map[string][]byte{"model.gguf": []byte("x")})
}

func tarGz(t *testing.T, files map[string][]byte, extra ...*tar.Header) []byte {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for name, b := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range extra {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestArchiveIsUnpackedAndAReplacedModelLeavesNoStaleFiles(t *testing.T) {
	v1 := map[string][]byte{"config.json": []byte(`{"v":1}`), "weights/model-00001.safetensors": randomBytes(5, 700<<10), "old.txt": []byte("v1 only")}
	v2 := map[string][]byte{"config.json": []byte(`{"v":2}`), "weights/model-00001.safetensors": randomBytes(6, 500<<10)}
	srv := newFileServer(t, map[string][]byte{"m-v1.tar.gz": tarGz(t, v1), "m-v2.tgz": tarGz(t, v2)})
	opts := testOptions(t, srv.URL+"/m-v1.tar.gz")
	sum := mustRun(t, opts)
	assertFiles(t, opts.Dest, v1)
	if sum.Files != 3 {
		t.Errorf("summary counts %d files, the archive has 3", sum.Files)
	}
	// Another URI into the same directory: the files of the first one that the second does
	// not have are removed, and nothing else is.
	opts.URI = srv.URL + "/m-v2.tgz"
	mustRun(t, opts)
	assertFiles(t, opts.Dest, v2)
}

func TestArchiveEscapingTheDestinationIsRefused(t *testing.T) {
	for name, hdr := range map[string]*tar.Header{
		"dot-dot": {Name: "../evil", Mode: 0o644, Typeflag: tar.TypeReg},
		"symlink": {Name: "link", Linkname: "/etc/passwd", Typeflag: tar.TypeSymlink},
	} {
		t.Run(name, func(t *testing.T) {
			srv := newFileServer(t, map[string][]byte{"m.tar.gz": tarGz(t, map[string][]byte{"ok.json": []byte("{}")}, hdr)})
			opts := testOptions(t, srv.URL+"/m.tar.gz")
			_, err := Run(context.Background(), opts)
			wantKind(t, err, KindInvalid)
			if _, err := os.Stat(filepath.Join(filepath.Dir(opts.Dest), "evil")); !os.IsNotExist(err) {
				t.Errorf("a file was written outside the destination")
			}
		})
	}
}

func TestFormatFilterKeepsTheEngineFormat(t *testing.T) {
	files := []File{{Path: "config.json"}, {Path: "model.safetensors"}, {Path: "pytorch_model.bin"}, {Path: "model-q4.gguf"}, {Path: "tokenizer.model"}}
	names := func(fs []File) string {
		var out []string
		for _, f := range fs {
			out = append(out, f.Path)
		}
		return strings.Join(out, ",")
	}
	for format, want := range map[Format]string{
		FormatAll:         "config.json,model.safetensors,pytorch_model.bin,model-q4.gguf,tokenizer.model",
		FormatSafetensors: "config.json,model.safetensors,tokenizer.model",
		FormatGGUF:        "config.json,model-q4.gguf,tokenizer.model",
	} {
		if got := names(filterFormat(files, format)); got != want {
			t.Errorf("%s: got %s, want %s", format, got, want)
		}
	}
	// Without the wanted format, everything is kept: an old .bin-only model still loads.
	if got := names(filterFormat(files[2:3], FormatSafetensors)); got != "pytorch_model.bin" {
		t.Errorf("bin-only model filtered to %q", got)
	}
}

func TestListedPathsMustStayInside(t *testing.T) {
	for _, p := range []string{"../x", "/etc/passwd", "a/../../x", "", ".helixflow-fetch.json", "sub/.helixflow-partial"} {
		if _, err := cleanPath(p); KindOf(err) != KindInvalid {
			t.Errorf("cleanPath(%q) = %v, want an InvalidSource error", p, err)
		}
	}
	if p, err := cleanPath("./a/b/../c.json"); err != nil || p != "a/c.json" {
		t.Errorf("cleanPath(./a/b/../c.json) = %q, %v", p, err)
	}
}

func TestGGUFLinkNamesTheFileForLlamaCpp(t *testing.T) {
	content := randomBytes(8, 300<<10)
	srv := newFileServer(t, map[string][]byte{"phi-q4_k_m.gguf": content})
	opts := testOptions(t, srv.URL+"/phi-q4_k_m.gguf")
	opts.Format = FormatGGUF
	mustRun(t, opts)
	b, err := os.ReadFile(filepath.Join(opts.Dest, GGUFLink))
	if err != nil || !bytes.Equal(b, content) {
		t.Fatalf("%s does not lead to the model: %v", GGUFLink, err)
	}

	for name, tc := range map[string]struct {
		paths   []string
		want    string
		wantErr string
	}{
		"split file: the first part": {paths: []string{"config.json", "m-00002-of-00002.gguf", "m-00001-of-00002.gguf"}, want: "m-00001-of-00002.gguf"},
		"several quantizations":      {paths: []string{"m-Q4_K_M.gguf", "m-Q8_0.gguf"}, wantErr: "several GGUF files"},
		"none":                       {paths: []string{"model.safetensors"}, wantErr: "no .gguf file"},
	} {
		t.Run(name, func(t *testing.T) {
			dest := t.TempDir()
			err := linkGGUF(dest, tc.paths)
			if tc.wantErr != "" {
				wantKind(t, err, KindInvalid, tc.wantErr)
				return
			}
			if got, rerr := os.Readlink(filepath.Join(dest, GGUFLink)); err != nil || rerr != nil || got != tc.want {
				t.Errorf("link -> %q (%v, %v), want %q", got, err, rerr, tc.want)
			}
		})
	}
}

func TestMessagesCarryNoURLSecrets(t *testing.T) {
	content := randomBytes(9, 1000)
	srv := newFileServer(t, map[string][]byte{"model.gguf": content})
	opts := testOptions(t, srv.URL+"/model.gguf?X-Amz-Signature=topsecret&X-Amz-Credential=AKIA")
	sum := mustRun(t, opts)
	noOp := mustRun(t, opts)
	srv.set(0, "needed")
	failing := testOptions(t, srv.URL+"/model.gguf?sig=topsecret")
	_, err := Run(context.Background(), failing)
	for _, msg := range []string{sum.String(), noOp.String(), err.Error(), redactURI("https://user:topsecret@host/x")} {
		if strings.Contains(msg, "topsecret") || strings.Contains(msg, "AKIA") {
			t.Errorf("message leaks a secret of the URL: %s", msg)
		}
	}
}

func TestProgressIsLogged(t *testing.T) {
	content := randomBytes(12, 2<<20)
	srv := newFileServer(t, map[string][]byte{"model.bin": content})
	srv.set(10*time.Millisecond, "") // about 0.3 s on one connection: several progress intervals
	var lines []string
	var mu sync.Mutex
	opts := testOptions(t, srv.URL+"/model.bin")
	opts.ProgressInterval = 50 * time.Millisecond
	opts.Concurrency = 1
	opts.Log = funcr.New(func(prefix, args string) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, args)
	}, funcr.Options{})
	mustRun(t, opts)
	mu.Lock()
	defer mu.Unlock()
	var progress []string
	for _, l := range lines {
		// Lines while the file was downloading; on a loaded machine a tick may also come
		// between the file's end and Run's (files 1/1).
		if strings.Contains(l, `"msg"="progress"`) && strings.Contains(l, `"files"="0/1"`) {
			progress = append(progress, l)
		}
	}
	if len(progress) == 0 {
		t.Fatalf("no progress line during the download in %q", lines)
	}
	// The last line comes after some bytes arrived, so it has a rate and an ETA.
	last := progress[len(progress)-1]
	for _, want := range []string{`"bytes"=`, `"of"="2.0 MiB"`, `"rate"=`, `"percent"=`, `"eta"=`} {
		if !strings.Contains(last, want) {
			t.Errorf("progress line %s lacks %s", last, want)
		}
	}
}

// Replicas sharing a weights cache start their fetches together: one downloads, the others
// wait for the lock and find the directory complete.
func TestConcurrentFetchesIntoOneDirectoryDownloadOnce(t *testing.T) {
	content := randomBytes(13, 2<<20)
	srv := newFileServer(t, map[string][]byte{"model.gguf": content})
	srv.set(2*time.Millisecond, "")
	opts := testOptions(t, srv.URL+"/model.gguf#sha256="+sha256Hex(content))
	const replicas = 3
	sums := make([]Summary, replicas)
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Go(func() { sums[i], errs[i] = Run(context.Background(), opts) })
	}
	wg.Wait()
	fetched := 0
	for i := range replicas {
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
		if !sums[i].NoOp {
			fetched++
		}
	}
	if fetched != 1 || srv.sent.Load() != int64(len(content)) {
		t.Errorf("%d of %d fetches downloaded, %d bytes sent; want one download of %d bytes", fetched, replicas, srv.sent.Load(), len(content))
	}
	assertFiles(t, opts.Dest, map[string][]byte{"model.gguf": content})
}
