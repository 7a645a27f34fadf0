package main

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestImages builds both images twice, reads them back as a container runtime would and
// runs each entrypoint from the image's own file system.
func TestImages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the manager and runtime binaries (minutes on a cold build cache)")
	}
	if _, err := os.Stat(defaultOptions().CABundle); err != nil {
		t.Skipf("no CA bundle on this machine to put in the images: %v", err)
	}
	host := platform{OS: "linux", Arch: goruntime.GOARCH}
	if goruntime.GOOS != "linux" || triplets[host.Arch] == "" {
		t.Skipf("images are built for linux/amd64 or linux/arm64, not %s/%s", goruntime.GOOS, goruntime.GOARCH)
	}
	o := defaultOptions()
	o.Root = "../.."
	o.Platforms = []platform{host}
	o.Version = "v0.0.0-test"
	o.Revision = "0123456789abcdef"
	o.Created = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	o.Out = t.TempDir()
	first, err := build(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	o.Out = t.TempDir()
	second, err := build(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != len(imageDefs) || len(second) != len(imageDefs) {
		t.Fatalf("built %d and %d images, want %d each", len(first), len(second), len(imageDefs))
	}

	for i, r := range first {
		t.Run(r.Name, func(t *testing.T) {
			if second[i].Digest != r.Digest || fileHash(t, second[i].Path) != fileHash(t, r.Path) {
				t.Errorf("two builds differ: %s and %s", r.Digest, second[i].Digest)
			}
			if filepath.Base(r.Path) != tarballName(r.Name, host) {
				t.Errorf("written to %s", r.Path)
			}

			img, err := tarball.ImageFromPath(r.Path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if d, err := img.Digest(); err != nil || d != r.Digest {
				t.Errorf("read back digest %s (%v), built %s", d, err, r.Digest)
			}
			checkConfig(t, img, r, o)
			root := extract(t, img)

			got := fileHash(t, filepath.Join(root, r.Name))
			if got != r.BinarySHA256 {
				t.Errorf("/%s in the image has sha256 %s, go build wrote %s", r.Name, got, r.BinarySHA256)
			}
			out := runInImage(t, root, "/"+r.Name, "--help")
			want := map[string][]string{
				"manager": {"-runtime-image", "-leader-elect"},
				"runtime": {"serve", "probe", "fetch"},
			}[r.Name]
			for _, w := range want {
				if !strings.Contains(out, w) {
					t.Errorf("/%s --help does not mention %q:\n%s", r.Name, w, out)
				}
			}
		})
	}
}

func checkConfig(t *testing.T, img v1.Image, r result, o options) {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if c.User != "65532:65532" {
		t.Errorf("user %q, want the numeric non-root 65532:65532", c.User)
	}
	if !slices.Equal(c.Entrypoint, []string{"/" + r.Name}) {
		t.Errorf("entrypoint %q", c.Entrypoint)
	}
	if cf.OS != r.Platform.OS || cf.Architecture != r.Platform.Arch {
		t.Errorf("platform %s/%s, want %s", cf.OS, cf.Architecture, r.Platform)
	}
	if !cf.Created.Equal(o.Created) {
		t.Errorf("created %s, want %s", cf.Created, o.Created)
	}
	for k, v := range map[string]string{
		"org.opencontainers.image.source":   o.Source,
		"org.opencontainers.image.version":  o.Version,
		"org.opencontainers.image.revision": o.Revision,
	} {
		if c.Labels[k] != v {
			t.Errorf("label %s=%q, want %q", k, c.Labels[k], v)
		}
	}
	if !slices.Contains(c.Env, "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt") {
		t.Errorf("env %q", c.Env)
	}
}

// extract writes the image's flattened file system into a folder, checking on the way that
// everything is root's and, except /tmp, writable by nobody else.
func extract(t *testing.T, img v1.Image) string {
	t.Helper()
	root := t.TempDir()
	// The non-root user must be able to enter the chroot.
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	rc := mutate.Extract(img)
	defer func() { _ = rc.Close() }()
	tr := tar.NewReader(rc)
	seen := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		seen[name] = true
		if hdr.Uid != 0 || hdr.Gid != 0 {
			t.Errorf("%s owned by %d:%d, want root", hdr.Name, hdr.Uid, hdr.Gid)
		}
		if hdr.Typeflag != tar.TypeSymlink && name != "tmp" && hdr.Mode&0o022 != 0 {
			t.Errorf("%s has mode %o: writable by group or others", hdr.Name, hdr.Mode)
		}
		if hdr.Typeflag == tar.TypeReg && hdr.Mode&0o200 != 0 {
			t.Errorf("%s has mode %o: a file in the image should not be writable", hdr.Name, hdr.Mode)
		}
		dst := filepath.Join(root, name)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, os.FileMode(hdr.Mode).Perm()|0o700); err != nil {
				t.Fatal(err)
			}
		case tar.TypeSymlink:
			if err := os.Symlink(hdr.Linkname, dst); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, os.FileMode(hdr.Mode).Perm())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		default:
			t.Errorf("%s: unexpected tar entry type %c", hdr.Name, hdr.Typeflag)
		}
	}
	for _, p := range []string{"etc/ssl/certs/ca-certificates.crt", "tmp"} {
		if !seen[p] {
			t.Errorf("no /%s in the image", p)
		}
	}
	return root
}

// runInImage runs a program of the extracted image. As root it runs it the way a container
// would see it: chrooted into the image, as the image's non-root user, with nothing of this
// machine visible, so a missing library or loader fails here. Otherwise a static binary runs
// directly, and a dynamic one through the image's own loader and libraries.
func runInImage(t *testing.T, root, program string, args ...string) string {
	t.Helper()
	var cmd *exec.Cmd
	interp, err := interpreter(filepath.Join(root, program), platform{OS: "linux", Arch: goruntime.GOARCH})
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case os.Geteuid() == 0:
		cmd = exec.Command(program, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Credential: &syscall.Credential{Uid: 65532, Gid: 65532}}
		cmd.Dir = "/"
	case interp == "":
		cmd = exec.Command(filepath.Join(root, program), args...)
	default:
		t.Logf("not root: running %s through the image's loader instead of in a chroot", program)
		libs := filepath.Join(root, "lib", triplets[goruntime.GOARCH])
		cmd = exec.Command(filepath.Join(root, interp), append([]string{"--inhibit-cache", "--library-path", libs, filepath.Join(root, program)}, args...)...)
	}
	cmd.Env = []string{"HOME=/tmp"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", program, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func fileHash(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}
