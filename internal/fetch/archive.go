package fetch

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

type archiveFormat string

const (
	archiveTar   archiveFormat = "tar"
	archiveTarGz archiveFormat = "tar.gz"
	archiveZip   archiveFormat = "zip"
)

func archiveOf(name string) archiveFormat {
	n := strings.ToLower(name)
	switch {
	case strings.HasSuffix(n, ".tar.gz"), strings.HasSuffix(n, ".tgz"):
		return archiveTarGz
	case strings.HasSuffix(n, ".tar"):
		return archiveTar
	case strings.HasSuffix(n, ".zip"):
		return archiveZip
	}
	return ""
}

// unpackArchives unpacks every verified archive into dest and returns the paths of all the
// model's files, sorted.
func unpackArchives(dest string, jobs []*fileJob) ([]string, error) {
	var paths []string
	for _, j := range jobs {
		if j.f.Archive == "" {
			paths = append(paths, j.f.Path)
			continue
		}
		got, err := unpack(dest, j.part, j.f.Archive)
		if err != nil {
			return nil, fmt.Errorf("unpacking %s: %w", j.f.Path, err)
		}
		paths = append(paths, got...)
	}
	sort.Strings(paths)
	return paths, nil
}

func unpack(dest, archive string, format archiveFormat) ([]string, error) {
	f, err := os.Open(archive)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if format == archiveZip {
		fi, err := f.Stat()
		if err != nil {
			return nil, err
		}
		zr, err := zip.NewReader(f, fi.Size())
		if err != nil {
			return nil, errorf(KindInvalid, "not a zip archive: %v", err)
		}
		var paths []string
		for _, zf := range zr.File {
			if zf.FileInfo().IsDir() {
				continue
			}
			if !zf.Mode().IsRegular() {
				return nil, errorf(KindInvalid, "%s in the archive is not a regular file", zf.Name)
			}
			rc, err := zf.Open()
			if err != nil {
				return nil, err
			}
			p, err := writeEntry(dest, zf.Name, rc)
			rc.Close()
			if err != nil {
				return nil, err
			}
			paths = append(paths, p)
		}
		return paths, nil
	}
	var r io.Reader = f
	if format == archiveTarGz {
		gz, err := gzip.NewReader(f)
		if err != nil {
			return nil, errorf(KindInvalid, "not a gzip archive: %v", err)
		}
		defer gz.Close()
		r = gz
	}
	tr := tar.NewReader(r)
	var paths []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return paths, nil
		}
		if err != nil {
			return nil, errorf(KindInvalid, "reading the tar archive: %v", err)
		}
		switch h.Typeflag {
		case tar.TypeDir, tar.TypeXGlobalHeader:
			continue
		case tar.TypeReg:
			p, err := writeEntry(dest, h.Name, tr)
			if err != nil {
				return nil, err
			}
			paths = append(paths, p)
		default:
			// Links could point outside the destination; model archives do not need them.
			return nil, errorf(KindInvalid, "%s in the archive is a link or special file, which the fetcher does not unpack", h.Name)
		}
	}
}

func writeEntry(dest, name string, r io.Reader) (string, error) {
	p, err := cleanPath(name)
	if err != nil {
		return "", err
	}
	target := filepath.Join(dest, filepath.FromSlash(p))
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return "", writeError(target, err)
	}
	tmp := filepath.Join(filepath.Dir(target), bookkeepingPrefix+path.Base(p)+".tmp")
	out, err := os.Create(tmp)
	if err != nil {
		return "", writeError(target, err)
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		os.Remove(tmp)
		return "", writeError(target, err)
	}
	if err := out.Close(); err != nil {
		return "", writeError(target, err)
	}
	return p, os.Rename(tmp, target)
}
