package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// nonRoot is distroless's nonroot user. It is given as numbers: the images have no
// /etc/passwd, and Kubernetes' runAsNonRoot can only verify a numeric user.
const nonRoot = "65532:65532"

// caBundlePath is where Go's crypto/x509 (and OpenSSL-based tools) look first on Linux.
const caBundlePath = "etc/ssl/certs/ca-certificates.crt"

type platform struct{ OS, Arch string }

func (p platform) String() string { return p.OS + "/" + p.Arch }

// triplets are the Debian multiarch names: the folder glibc lives in, on the build machine
// and in the image, and the prefix of the cross C compiler.
var triplets = map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}

type options struct {
	Root       string // module root, where `go build` runs
	Out        string
	Platforms  []platform
	Repository string
	Version    string
	Revision   string
	Source     string
	Created    time.Time // every timestamp in the images
	CABundle   string
	Go         string // the go command
}

func defaultOptions() options {
	return options{
		Root:       ".",
		Out:        "bin/images",
		Platforms:  []platform{{OS: "linux", Arch: "amd64"}},
		Repository: "ghcr.io/helixflow",
		Version:    "dev",
		Revision:   "unknown",
		Source:     "https://github.com/helixflow/helixflow",
		Created:    time.Unix(0, 0).UTC(),
		CABundle:   "/" + caBundlePath,
		Go:         "go",
	}
}

type imageDef struct {
	Name        string
	Package     string
	Description string
	// CGO is set for the runtime: its `probe` subcommand reads NVML through go-nvml, which
	// dlopens libnvidia-ml.so through cgo. A CGO_ENABLED=0 runtime would run, but every probe
	// would report NVMLUnavailable. So the runtime is a dynamically linked glibc binary, and
	// its image carries the glibc it was linked against (the NVIDIA container toolkit mounts
	// only the driver's libraries, not a C library).
	CGO bool
}

var imageDefs = []imageDef{
	{Name: "manager", Package: "./cmd/manager", Description: "HelixFlow controller manager"},
	{Name: "runtime", Package: "./cmd/runtime", Description: "HelixFlow data plane: runtime serve, fetch and probe", CGO: true},
}

type result struct {
	Name     string
	Platform platform
	Path     string // the tarball
	Tag      string
	Digest   v1.Hash
	// BinarySHA256 is the hash of the binary `go build` wrote, to check it is the one in the image.
	BinarySHA256 string
}

// build builds every image for every platform and writes the tarballs into o.Out.
func build(ctx context.Context, o options) ([]result, error) {
	ca, err := os.ReadFile(o.CABundle)
	if err != nil {
		return nil, fmt.Errorf("reading the CA bundle (Debian: apt-get install ca-certificates): %w", err)
	}
	if !bytes.Contains(ca, []byte("-----BEGIN CERTIFICATE-----")) {
		return nil, fmt.Errorf("%s holds no PEM certificate", o.CABundle)
	}
	work, err := os.MkdirTemp("", "helixflow-images-")
	if err != nil {
		return nil, err
	}
	defer func() { _ = os.RemoveAll(work) }()
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}

	base, err := tarLayer(o.Created, []entry{
		{Path: caBundlePath, Mode: 0o444, Data: ca},
		// Go's os.TempDir; pods mount an emptyDir over it when the root is read-only.
		{Path: "tmp", Dir: true, Mode: 0o1777},
	})
	if err != nil {
		return nil, err
	}
	baseAdd := mutate.Addendum{Layer: base, History: v1.History{
		Created: v1.Time{Time: o.Created}, CreatedBy: "hack/images: CA bundle from " + o.CABundle + ", /tmp",
	}}

	var results []result
	for _, p := range o.Platforms {
		for _, def := range imageDefs {
			bin := filepath.Join(work, p.OS+"_"+p.Arch, def.Name)
			if err := goBuild(ctx, o, def, p, bin); err != nil {
				return nil, fmt.Errorf("building %s for %s: %w", def.Name, p, err)
			}
			r, err := assemble(o, def, p, bin, baseAdd)
			if err != nil {
				return nil, fmt.Errorf("image %s for %s: %w", def.Name, p, err)
			}
			results = append(results, r)
		}
	}
	return results, nil
}

// buildFlags make the binary depend only on the source: no local paths, no VCS stamp (the
// image labels carry the revision), no symbol tables.
var buildFlags = []string{"-trimpath", "-buildvcs=false", "-ldflags=-s -w"}

func goBuild(ctx context.Context, o options, def imageDef, p platform, out string) error {
	args := append([]string{"build"}, buildFlags...)
	args = append(args, "-o", out, def.Package)
	cmd := exec.CommandContext(ctx, o.Go, args...)
	cmd.Dir = o.Root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cgo := "0"
	if def.CGO {
		cgo = "1"
	}
	cmd.Env = append(os.Environ(), "GOOS="+p.OS, "GOARCH="+p.Arch, "CGO_ENABLED="+cgo)
	if def.CGO && (p.OS != goruntime.GOOS || p.Arch != goruntime.GOARCH) {
		cc := os.Getenv("CC_" + p.OS + "_" + p.Arch)
		if cc == "" {
			cc = triplets[p.Arch] + "-gcc"
		}
		if _, err := exec.LookPath(cc); err != nil {
			return fmt.Errorf("%s needs cgo (NVML) and so a C cross compiler for %s: %s not found (Debian: gcc-%s; or set CC_%s_%s)",
				def.Name, p, cc, triplets[p.Arch], p.OS, p.Arch)
		}
		cmd.Env = append(cmd.Env, "CC="+cc)
	}
	return cmd.Run()
}

func assemble(o options, def imageDef, p platform, bin string, base mutate.Addendum) (result, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return result{}, err
	}
	sum := sha256.Sum256(data)
	adds := []mutate.Addendum{base}

	interp, err := interpreter(bin, p)
	if err != nil {
		return result{}, err
	}
	switch {
	case def.CGO && interp == "":
		return result{}, fmt.Errorf("%s was built with cgo but is statically linked: NVML could not be loaded", def.Name)
	case !def.CGO && interp != "":
		return result{}, fmt.Errorf("%s is dynamically linked (%s) but its image has no C library", def.Name, interp)
	case interp != "":
		files, libs, err := glibcFiles(bin, interp, p)
		if err != nil {
			return result{}, err
		}
		l, err := tarLayer(o.Created, files)
		if err != nil {
			return result{}, err
		}
		adds = append(adds, mutate.Addendum{Layer: l, History: v1.History{
			Created: v1.Time{Time: o.Created}, CreatedBy: "hack/images: glibc of the build machine: " + strings.Join(libs, " "),
		}})
	}

	l, err := tarLayer(o.Created, []entry{{Path: def.Name, Mode: 0o555, Data: data}})
	if err != nil {
		return result{}, err
	}
	cgo := "0"
	if def.CGO {
		cgo = "1"
	}
	adds = append(adds, mutate.Addendum{Layer: l, History: v1.History{
		Created:   v1.Time{Time: o.Created},
		CreatedBy: fmt.Sprintf("CGO_ENABLED=%s GOOS=%s GOARCH=%s go build %s %s", cgo, p.OS, p.Arch, strings.Join(buildFlags, " "), def.Package),
	}})

	cfg := &v1.ConfigFile{
		Architecture: p.Arch,
		OS:           p.OS,
		Created:      v1.Time{Time: o.Created},
		Config: v1.Config{
			User:       nonRoot,
			Entrypoint: []string{"/" + def.Name},
			Env: []string{
				"PATH=/usr/local/bin:/usr/bin:/bin",
				"SSL_CERT_FILE=/" + caBundlePath,
				// No passwd entry to take a home from; /tmp is the one writable folder.
				"HOME=/tmp",
			},
			WorkingDir: "/",
			Labels: map[string]string{
				"org.opencontainers.image.title":       "helixflow-" + def.Name,
				"org.opencontainers.image.description": def.Description,
				"org.opencontainers.image.source":      o.Source,
				"org.opencontainers.image.version":     o.Version,
				"org.opencontainers.image.revision":    o.Revision,
				"org.opencontainers.image.created":     o.Created.Format(time.RFC3339),
			},
		},
		RootFS: v1.RootFS{Type: "layers"},
	}
	img, err := mutate.ConfigFile(empty.Image, cfg)
	if err != nil {
		return result{}, err
	}
	if img, err = mutate.Append(img, adds...); err != nil {
		return result{}, err
	}
	tag, err := name.NewTag(o.Repository + "/" + def.Name + ":" + o.Version)
	if err != nil {
		return result{}, err
	}
	path := filepath.Join(o.Out, tarballName(def.Name, p))
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		return result{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return result{}, err
	}
	return result{Name: def.Name, Platform: p, Path: path, Tag: tag.String(), Digest: digest, BinarySHA256: hex.EncodeToString(sum[:])}, nil
}

// tarballName keeps the common case short: manager.tar is linux/amd64, manager-arm64.tar arm64.
func tarballName(image string, p platform) string {
	if p == (platform{OS: "linux", Arch: "amd64"}) {
		return image + ".tar"
	}
	return image + "-" + p.Arch + ".tar"
}
