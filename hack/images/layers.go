package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// entry is one file, folder or symlink of a layer. Paths are relative to the image root.
type entry struct {
	Path string
	Mode int64
	Dir  bool
	Link string // symlink target
	Data []byte
}

// tarLayer writes entries, plus the folders above them, as a layer that depends only on its
// arguments: sorted paths, one timestamp, root owner, modes as given. Files are never
// writable (they are 0444/0555), so that neither the nonroot user nor a process that gained
// root can change what the image runs; folders are 0755 unless given.
func tarLayer(created time.Time, entries []entry) (v1.Layer, error) {
	all := map[string]entry{}
	for _, e := range entries {
		for dir := path.Dir(e.Path); dir != "."; dir = path.Dir(dir) {
			if _, ok := all[dir]; !ok {
				all[dir] = entry{Path: dir, Dir: true, Mode: 0o755}
			}
		}
	}
	for _, e := range entries {
		all[e.Path] = e
	}
	paths := make([]string, 0, len(all))
	for p := range all {
		paths = append(paths, p)
	}
	slices.Sort(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		e := all[p]
		hdr := &tar.Header{
			Name:    e.Path,
			Mode:    e.Mode,
			ModTime: created,
			Uname:   "root",
			Gname:   "root",
		}
		switch {
		case e.Dir:
			hdr.Typeflag, hdr.Name = tar.TypeDir, e.Path+"/"
		case e.Link != "":
			hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, e.Link, 0o777
		default:
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(e.Data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
}

var machines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// interpreter returns the dynamic loader a binary asks for, or "" for a static binary. It
// also checks the binary is for the platform, so a host library can never slip into an
// image of another architecture.
func interpreter(file string, p platform) (string, error) {
	f, err := elf.Open(file)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	if f.Machine != machines[p.Arch] {
		return "", fmt.Errorf("%s is %s, want %s for %s", file, f.Machine, machines[p.Arch], p)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			b, err := io.ReadAll(prog.Open())
			if err != nil {
				return "", err
			}
			return string(bytes.TrimRight(b, "\x00")), nil
		}
	}
	return "", nil
}

// nvmlNeeds are the libraries the driver's libnvidia-ml.so.1, which the NVIDIA container
// toolkit mounts at run time, is linked against. The runtime binary itself does not need
// them, so they are added by name; since glibc 2.34 they are small compatibility stubs.
var nvmlNeeds = []string{"libc.so.6", "libdl.so.2", "libm.so.6", "libpthread.so.0", "librt.so.1"}

// glibcFiles returns the C library a dynamically linked binary needs (its DT_NEEDED closure
// plus nvmlNeeds) as Debian lays it out: the files in /lib/<triplet>, the loader where the
// binary's PT_INTERP points, linked to the copy in /lib/<triplet>. The files are the build
// machine's, the ones the binary was just linked against. It also returns the library names.
func glibcFiles(bin, interp string, p platform) ([]entry, []string, error) {
	triplet := triplets[p.Arch]
	// Native multiarch folders first, then where Debian's cross libc packages (libc6-<arch>-cross)
	// put an other architecture's libraries.
	dirs := []string{"/lib/" + triplet, "/usr/lib/" + triplet, "/usr/" + triplet + "/lib"}
	f, err := elf.Open(bin)
	if err != nil {
		return nil, nil, err
	}
	needed, err := f.ImportedLibraries()
	_ = f.Close()
	if err != nil {
		return nil, nil, err
	}
	queue := append(slices.Clone(nvmlNeeds), needed...)
	queue = append(queue, path.Base(interp))
	files := map[string][]byte{}
	for len(queue) > 0 {
		lib := queue[0]
		queue = queue[1:]
		if _, done := files[lib]; done {
			continue
		}
		file, err := findLibrary(lib, dirs)
		if err != nil {
			return nil, nil, err
		}
		if _, err := interpreter(file, p); err != nil {
			return nil, nil, err
		}
		lf, err := elf.Open(file)
		if err != nil {
			return nil, nil, err
		}
		deps, err := lf.ImportedLibraries()
		_ = lf.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", file, err)
		}
		if files[lib], err = os.ReadFile(file); err != nil {
			return nil, nil, err
		}
		queue = append(queue, deps...)
	}

	libs := make([]string, 0, len(files))
	var entries []entry
	for lib, data := range files {
		libs = append(libs, lib)
		entries = append(entries, entry{Path: "lib/" + triplet + "/" + lib, Mode: 0o555, Data: data})
	}
	slices.Sort(libs)
	loader := "lib/" + triplet + "/" + path.Base(interp)
	if target := interp[1:]; target != loader {
		rel, err := filepath.Rel(path.Dir(target), loader)
		if err != nil {
			return nil, nil, err
		}
		entries = append(entries, entry{Path: target, Link: filepath.ToSlash(rel)})
	}
	// The NVIDIA container toolkit mounts libnvidia-ml.so.1 into /usr/lib/<triplet>, which the
	// loader searches by default; the folder must exist in a read-only root.
	entries = append(entries, entry{Path: "usr/lib/" + triplet, Dir: true, Mode: 0o755})
	// glibc is LGPL: ship its copyright notice with it, as Debian and distroless do.
	if notice, err := os.ReadFile("/usr/share/doc/libc6/copyright"); err == nil {
		entries = append(entries, entry{Path: "usr/share/doc/libc6/copyright", Mode: 0o444, Data: notice})
	}
	return entries, libs, nil
}

// findLibrary returns the real file behind the first dirs/name that exists.
func findLibrary(name string, dirs []string) (string, error) {
	for _, d := range dirs {
		file, err := filepath.EvalSymlinks(filepath.Join(d, name))
		if err == nil {
			return file, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
	}
	return "", fmt.Errorf("library %s not found in %v", name, dirs)
}
