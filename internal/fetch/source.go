package fetch

import (
	"context"
	"crypto/md5"  //nolint:gosec // S3 ETags and GCS md5Hash are MD5: we check what the source publishes.
	"crypto/sha1" //nolint:gosec // Git blob ids (the Hub's oid for small files) are SHA-1.
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// Digest is a checksum the source publishes for a file.
type Digest struct {
	// Algo is sha256, md5, crc32c or gitsha1 (a Git blob id: SHA-1 of "blob <size>\x00" + content).
	Algo string `json:"algo"`
	// Hex is the expected value, lower-case hex.
	Hex string `json:"hex"`
}

// IsZero reports whether there is nothing to check.
func (d Digest) IsZero() bool { return d.Algo == "" }

func (d Digest) String() string { return d.Algo + ":" + d.Hex }

// newHash returns the hash that checks d, already fed with any header the algorithm needs.
func (d Digest) newHash(size int64) hash.Hash {
	switch d.Algo {
	case "sha256":
		return sha256.New()
	case "md5":
		return md5.New() //nolint:gosec // see the import
	case "crc32c":
		return crc32.New(crc32.MakeTable(crc32.Castagnoli))
	case "gitsha1":
		h := sha1.New() //nolint:gosec // see the import
		fmt.Fprintf(h, "blob %d\x00", size)
		return h
	}
	return nil
}

// File is one file of a model as the source lists it.
type File struct {
	// Path is where it goes under the destination, slash-separated and relative.
	Path string
	// Size in bytes; -1 when the source does not say.
	Size int64
	// Digest is checked after download when set.
	Digest Digest
	// Ranged says the source serves byte ranges of it, so it can be fetched in parallel
	// pieces and resumed in the middle.
	Ranged bool
	// Archive is set for a tar or zip to unpack into the destination once verified.
	Archive archiveFormat
	// ref is what the source needs to open it (a URL, an object key, a blob digest).
	ref string
}

// Source lists a model's files and reads them.
type Source interface {
	// String names the source in messages, credentials left out.
	String() string
	// List returns the files of the model, and the resolved revision (a commit, a manifest
	// digest) when the source has one.
	List(ctx context.Context) (files []File, resolved string, err error)
	// Open reads f from byte off to end (exclusive; -1 for the end of the file).
	Open(ctx context.Context, f File, off, end int64) (io.ReadCloser, error)
}

// NewSource parses a spec.model.uri into its Source.
func NewSource(uri, revision string, creds Credentials) (Source, error) {
	scheme, rest, ok := strings.Cut(uri, "://")
	if !ok || rest == "" {
		return nil, errorf(KindInvalid, "uri %q: want <scheme>://..., with scheme hf, s3, gs, https, oci or pvc", uri)
	}
	switch scheme {
	case "hf":
		return newHFSource(rest, revision, creds)
	case "s3":
		return newS3Source(rest, creds)
	case "gs":
		return newGCSSource(rest, creds)
	case "https", "http":
		return newHTTPSource(uri, creds)
	case "oci":
		return newOCISource(rest, creds)
	case "pvc":
		return nil, errorf(KindInvalid, "uri %q: pvc:// weights are mounted into the pod, there is nothing to fetch", uri)
	}
	return nil, errorf(KindInvalid, "uri %q: unknown scheme %q (want hf, s3, gs, https, oci or pvc)", uri, scheme)
}

// cleanPath checks a path from a listing: relative, inside the destination, and not one of
// our own bookkeeping names. A source's listing is not trusted to stay inside dest.
func cleanPath(p string) (string, error) {
	c := path.Clean(strings.TrimPrefix(p, "./"))
	switch {
	case p == "" || c == "." || strings.HasPrefix(c, "/") || c == ".." || strings.HasPrefix(c, "../"):
		return "", errorf(KindInvalid, "the source lists %q, a path outside the destination", p)
	case strings.Contains(c, "\\") || strings.ContainsRune(c, 0):
		return "", errorf(KindInvalid, "the source lists %q, which is not a portable file name", p)
	case strings.HasPrefix(path.Base(c), bookkeepingPrefix) || strings.HasPrefix(c, bookkeepingPrefix):
		return "", errorf(KindInvalid, "the source lists %q, a name reserved for the fetcher's own files", p)
	}
	return c, nil
}

// Format picks which weight files to fetch when a repository carries several formats.
type Format string

const (
	// FormatAll fetches every file.
	FormatAll Format = "all"
	// FormatSafetensors keeps *.safetensors and drops other weight formats (.bin, .pt, .gguf,
	// ...) when the model has safetensors; vLLM, TGI and SGLang load those.
	FormatSafetensors Format = "safetensors"
	// FormatGGUF keeps *.gguf and drops other weight formats when the model has GGUF files;
	// llama.cpp loads those.
	FormatGGUF Format = "gguf"
)

// weightExts are the extensions of weight files; everything else (configs, tokenizers,
// READMEs) is always kept.
var weightExts = map[string]bool{
	".safetensors": true, ".bin": true, ".pt": true, ".pth": true, ".ckpt": true, ".h5": true,
	".msgpack": true, ".onnx": true, ".onnx_data": true, ".gguf": true, ".ot": true, ".tflite": true, ".npz": true,
}

// filterFormat drops the weight files of other formats, when the wanted one is present.
func filterFormat(files []File, f Format) []File {
	want := map[Format]string{FormatSafetensors: ".safetensors", FormatGGUF: ".gguf"}[f]
	if want == "" {
		return files
	}
	has := false
	for _, file := range files {
		has = has || path.Ext(file.Path) == want
	}
	if !has {
		return files
	}
	out := files[:0:0]
	for _, file := range files {
		if ext := path.Ext(file.Path); !weightExts[ext] || ext == want {
			out = append(out, file)
		}
	}
	return out
}

// hexDigest validates a hex digest of the given algorithm's length.
func hexDigest(algo, s string) Digest {
	s = strings.ToLower(strings.Trim(s, `"`))
	n := map[string]int{"sha256": 64, "md5": 32, "gitsha1": 40, "crc32c": 8}[algo]
	if b, err := hex.DecodeString(s); err != nil || len(b)*2 != n {
		return Digest{}
	}
	return Digest{Algo: algo, Hex: s}
}

// linkGGUF points GGUFLink at the model's GGUF file. Several different GGUF files (one repo
// often holds every quantization) are refused rather than guessed between.
func linkGGUF(dest string, paths []string) error {
	var first []string
	for _, p := range paths {
		if path.Ext(p) != ".gguf" {
			continue
		}
		if m := splitGGUF.FindStringSubmatch(p); m != nil && m[1] != "00001" {
			continue // a later part of a split file: llama.cpp opens it from the first
		}
		first = append(first, p)
	}
	switch len(first) {
	case 0:
		return errorf(KindInvalid, "no .gguf file was fetched, and llama.cpp needs one")
	case 1:
	default:
		return errorf(KindInvalid, "several GGUF files were fetched (%s): name one, for example https://huggingface.co/<org>/<repo>/resolve/main/<file>.gguf", strings.Join(first, ", "))
	}
	link := filepath.Join(dest, GGUFLink)
	tmp := link + ".tmp"
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.FromSlash(first[0]), tmp); err != nil {
		return writeError(link, err)
	}
	return os.Rename(tmp, link)
}

var splitGGUF = regexp.MustCompile(`-(\d{5})-of-\d{5}\.gguf$`)
