package fetch

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/helixflow/helixflow/test/fakegcs"
)

func TestGCSPrefixWithServiceAccountKey(t *testing.T) {
	srv := fakegcs.New()
	t.Cleanup(srv.Close)
	srv.SetPageSize(2)
	srv.CreateBucket("weights")
	files := map[string][]byte{
		"config.json":        []byte(`{"model_type":"mistral"}`),
		"model.safetensors":  randomBytes(40, 1<<20+77),
		"tokenizer.json":     randomBytes(41, 30<<10),
		"nested/extra.json":  []byte(`{}`),
		"nested/more.tiktok": randomBytes(42, 1000),
	}
	for name, b := range files {
		srv.PutObject("weights", "models/mistral-tiny/"+name, b)
	}
	srv.PutObject("weights", "models/mistral-tiny-2/config.json", []byte("another model"))

	// Anonymous: refused with a message that says which credential to add.
	anon := testOptions(t, "gs://weights/models/mistral-tiny")
	anon.Credentials.Getenv = envFrom(map[string]string{"STORAGE_EMULATOR_HOST": srv.Host()})
	_, err := Run(context.Background(), anon)
	wantKind(t, err, KindUnauthorized, "token missing or not allowed for gs://weights/models/mistral-tiny", "service-account.json")

	// A service-account key from the mounted Secret: the JWT-bearer grant, then the JSON API.
	opts := testOptions(t, "gs://weights/models/mistral-tiny")
	opts.Credentials.Getenv = anon.Credentials.Getenv
	opts.Credentials.Dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(opts.Credentials.Dir, "service-account.json"), srv.ServiceAccountJSON(), 0o600); err != nil {
		t.Fatal(err)
	}
	sum := mustRun(t, opts)
	assertFiles(t, opts.Dest, files)
	if sum.Verified != len(files) {
		t.Errorf("%d of %d files verified against md5Hash", sum.Verified, len(files))
	}
	if st := srv.Stats(); st.Requests[fakegcs.KindToken] == 0 {
		t.Error("no access token was requested")
	}

	missing := testOptions(t, "gs://no-such-bucket/m")
	missing.Credentials = opts.Credentials
	_, err = Run(context.Background(), missing)
	wantKind(t, err, KindNotFound, "not found", "bucket does not exist")

	srv.Corrupt("weights", "models/mistral-tiny/model.safetensors")
	corrupt := testOptions(t, "gs://weights/models/mistral-tiny")
	corrupt.Credentials = opts.Credentials
	_, err = Run(context.Background(), corrupt)
	wantKind(t, err, KindChecksumMismatch, "model.safetensors", "md5")
}
