// Command images builds the manager and runtime container images without a container engine
// or a registry: it cross-compiles the binaries with `go build`, puts them on an empty base
// with go-containerregistry, and writes one `docker load`-compatible tarball per image and
// platform (bin/images/manager.tar, bin/images/runtime.tar for linux/amd64). Many build
// machines, this project's included, have no Docker daemon and cannot pull a base image; the
// Dockerfiles at the repository root describe the same images for machines that can.
//
// The output is reproducible: every timestamp is SOURCE_DATE_EPOCH (or 0), file owners and
// modes are fixed, and the binaries are built with -trimpath, so two builds of the same commit
// on the same machine give the same image digest.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"
)

func main() {
	opts := defaultOptions()
	flag.StringVar(&opts.Out, "out", "bin/images", "Folder the image tarballs are written to.")
	platforms := flag.String("platforms", "linux/amd64", "Comma-separated OS/ARCH list; linux/arm64 needs a cross C compiler (aarch64-linux-gnu-gcc) and arm64 glibc for the runtime.")
	flag.StringVar(&opts.Repository, "repository", opts.Repository, "Registry and path the images are tagged under, as REPOSITORY/manager:VERSION.")
	flag.StringVar(&opts.Version, "version", opts.Version, "Image tag and org.opencontainers.image.version label.")
	flag.StringVar(&opts.Revision, "revision", opts.Revision, "org.opencontainers.image.revision label (the git commit).")
	flag.StringVar(&opts.CABundle, "ca-bundle", opts.CABundle, "PEM CA bundle copied into the images (the runtime fetches weights over HTTPS).")
	flag.StringVar(&opts.Go, "go", opts.Go, "The go command that builds the binaries.")
	flag.Parse()

	var err error
	if opts.Platforms, err = parsePlatforms(*platforms); err != nil {
		fail(err)
	}
	// SOURCE_DATE_EPOCH is the reproducible-builds convention for "the time to stamp".
	if v := os.Getenv("SOURCE_DATE_EPOCH"); v != "" {
		secs, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			fail(fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", v, err))
		}
		opts.Created = time.Unix(secs, 0).UTC()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	results, err := build(ctx, opts)
	if err != nil {
		fail(err)
	}
	for _, r := range results {
		fmt.Printf("%s\t%s\t%s\t%s\n", r.Path, r.Platform, r.Tag, r.Digest)
	}
}

func parsePlatforms(s string) ([]platform, error) {
	var out []platform
	for _, p := range strings.Split(s, ",") {
		goos, goarch, ok := strings.Cut(strings.TrimSpace(p), "/")
		if !ok || goos != "linux" {
			return nil, fmt.Errorf("platform %q: want linux/ARCH", p)
		}
		if _, known := triplets[goarch]; !known {
			return nil, fmt.Errorf("platform %q: architecture not supported (amd64, arm64)", p)
		}
		out = append(out, platform{OS: goos, Arch: goarch})
	}
	return out, nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "images:", err)
	os.Exit(1)
}
