package fetch

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// pushModel pushes files as an OCI artifact, one layer per file with its title annotation,
// as `oras push` does, plus optional plain tar layers; it returns the registry host.
func pushModel(t *testing.T, repoTag string, files map[string][]byte, tarLayers ...[]byte) string {
	t.Helper()
	srv := httptest.NewServer(registry.New())
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, "application/vnd.helixflow.model.config.v1+json")
	var adds []mutate.Addendum
	for p, b := range files {
		adds = append(adds, mutate.Addendum{
			Layer:       static.NewLayer(b, "application/vnd.helixflow.model.file"),
			Annotations: map[string]string{"org.opencontainers.image.title": p},
		})
	}
	for _, b := range tarLayers {
		adds = append(adds, mutate.Addendum{Layer: static.NewLayer(b, types.OCILayer)})
	}
	img, err := mutate.Append(img, adds...)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return host
}

func TestOCIArtifactDownloadsAndChecksDigests(t *testing.T) {
	files := map[string][]byte{
		"config.json":       []byte(`{"model_type":"llama"}`),
		"model.safetensors": randomBytes(20, 1<<20+999),
	}
	packed := map[string][]byte{"extra/generation_config.json": []byte(`{"temperature":0.7}`)}
	host := pushModel(t, "models/llama-tiny:v1", files, tarGz(t, packed))

	opts := testOptions(t, "oci://"+host+"/models/llama-tiny:v1")
	sum := mustRun(t, opts)
	want := map[string][]byte{}
	for k, v := range files {
		want[k] = v
	}
	for k, v := range packed {
		want[k] = v
	}
	assertFiles(t, opts.Dest, want)
	if sum.Verified != 3 || !strings.HasPrefix(sum.Resolved, "sha256:") {
		t.Errorf("summary %+v: want 3 blobs verified and the manifest digest resolved", sum)
	}
	if again := mustRun(t, opts); !again.NoOp {
		t.Errorf("second run was not a no-op")
	}

	missing := testOptions(t, "oci://"+host+"/models/llama-tiny:v2")
	_, err := Run(context.Background(), missing)
	wantKind(t, err, KindNotFound, "not found", "llama-tiny:v2")
}
