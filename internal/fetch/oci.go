package fetch

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ociSource reads a model packaged as an OCI artifact: each layer with an
// org.opencontainers.image.title annotation is a file of that name (as ORAS pushes them);
// other tar layers (a model built into an image) are unpacked. Blobs are read by range, so
// they download in parallel pieces and resume, and are checked against their digests.
type ociSource struct {
	ref    name.Reference
	creds  Credentials
	client *http.Client // authenticated for the repository, set by List
}

const ociHint = "put registry credentials (a kubernetes.io/dockerconfigjson Secret, key .dockerconfigjson) in the Secret named by spec.model.credentialsSecretRef"

func newOCISource(rest string, creds Credentials) (*ociSource, error) {
	ref, err := name.ParseReference(rest)
	if err != nil {
		return nil, errorf(KindInvalid, "uri oci://%s: %v", rest, err)
	}
	return &ociSource{ref: ref, creds: creds}, nil
}

func (s *ociSource) String() string { return "oci://" + s.ref.String() }

func (s *ociSource) List(ctx context.Context) ([]File, string, error) {
	kc, err := s.keychain()
	if err != nil {
		return nil, "", err
	}
	auth, err := kc.Resolve(s.ref.Context())
	if err != nil {
		return nil, "", errorf(KindInvalid, "%s: reading registry credentials: %v", s, err)
	}
	base := newHTTPClient().Transport
	desc, err := remote.Get(s.ref, remote.WithContext(ctx), remote.WithAuth(auth), remote.WithTransport(base))
	if err != nil {
		return nil, "", s.classify(err, s.String())
	}
	img, err := desc.Image() // an index resolves to its linux/amd64 manifest
	if err != nil {
		return nil, "", s.classify(err, s.String())
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, "", s.classify(err, s.String())
	}
	tr, err := transport.NewWithContext(ctx, s.ref.Context().Registry, auth, base, []string{s.ref.Scope(transport.PullScope)})
	if err != nil {
		return nil, "", s.classify(err, s.String())
	}
	s.client = &http.Client{Transport: tr}
	files := make([]File, 0, len(m.Layers))
	for _, l := range m.Layers {
		f := File{Path: l.Annotations["org.opencontainers.image.title"], Size: l.Size, Ranged: true, ref: l.Digest.String()}
		if l.Digest.Algorithm == "sha256" {
			f.Digest = hexDigest("sha256", l.Digest.Hex)
		}
		if f.Path == "" {
			if f.Archive = layerArchive(l.MediaType); f.Archive == "" {
				return nil, "", errorf(KindInvalid, "%s: layer %s has no org.opencontainers.image.title annotation and is not a tar layer (%s)", s, l.Digest, l.MediaType)
			}
			f.Path = "layer-" + l.Digest.Hex[:min(16, len(l.Digest.Hex))] + "." + string(f.Archive)
		}
		files = append(files, f)
	}
	d, err := img.Digest()
	if err != nil {
		return nil, "", s.classify(err, s.String())
	}
	return files, d.String(), nil
}

func layerArchive(mt types.MediaType) archiveFormat {
	switch mt {
	case types.OCILayer, types.DockerLayer, types.DockerForeignLayer, types.OCIRestrictedLayer:
		return archiveTarGz
	case types.OCIUncompressedLayer, types.OCIUncompressedRestrictedLayer, types.DockerUncompressedLayer:
		return archiveTar
	}
	return ""
}

func (s *ociSource) Open(ctx context.Context, f File, off, end int64) (io.ReadCloser, error) {
	repo := s.ref.Context()
	u := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", repo.Scheme(), repo.RegistryStr(), repo.RepositoryStr(), f.ref)
	return rangeGet(ctx, s.client, u, http.Header{"User-Agent": {"helixflow-runtime-fetch"}}, off, end, s.String()+" file "+f.Path, ociHint)
}

// keychain reads registry credentials from the Secret (a Docker config JSON), then the
// usual places (DOCKER_CONFIG, ~/.docker/config.json), else anonymous.
func (s *ociSource) keychain() (authn.Keychain, error) {
	for _, k := range []string{".dockerconfigjson", "config.json"} {
		if b, ok := s.creds.file(k); ok {
			var cfg dockerConfig
			if err := json.Unmarshal(b, &cfg); err != nil {
				return nil, errorf(KindInvalid, "credentials key %s is not a Docker config JSON: %v", k, err)
			}
			return authn.NewMultiKeychain(cfg, authn.DefaultKeychain), nil
		}
	}
	return authn.DefaultKeychain, nil
}

// dockerConfig is the "auths" part of a Docker config JSON, as a keychain.
type dockerConfig struct {
	Auths map[string]struct {
		Auth          string `json:"auth"`
		Username      string `json:"username"`
		Password      string `json:"password"`
		IdentityToken string `json:"identitytoken"`
	} `json:"auths"`
}

func (c dockerConfig) Resolve(r authn.Resource) (authn.Authenticator, error) {
	for host, a := range c.Auths {
		h := strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(host, "https://"), "http://"), "/v1/")
		if h != r.RegistryStr() && (h != "index.docker.io" || r.RegistryStr() != name.DefaultRegistry) {
			continue
		}
		cfg := authn.AuthConfig{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken}
		if a.Auth != "" {
			b, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, fmt.Errorf("auth for %s is not base64: %w", host, err)
			}
			cfg.Username, cfg.Password, _ = strings.Cut(string(b), ":")
		}
		return authn.FromConfig(cfg), nil
	}
	return authn.Anonymous, nil
}

func (s *ociSource) classify(err error, what string) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return &Error{Kind: KindUnauthorized, Msg: fmt.Sprintf("token missing or not allowed for %s (HTTP %d); %s", what, te.StatusCode, ociHint), Err: err}
		case http.StatusNotFound:
			return &Error{Kind: KindNotFound, Msg: "revision/file not found: " + what, Err: err}
		}
	}
	return &Error{Kind: KindUnavailable, Msg: what, Err: err}
}
