package fakehub

import (
	"crypto/sha1" //nolint:gosec // git object ids are SHA-1
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// DefaultLFSThreshold is the size from which a file is stored in LFS when
// Repo.LFSThreshold is zero.
const DefaultLFSThreshold = 1 << 20

// Repo describes a model repository to serve.
type Repo struct {
	// Files holds small files in memory, keyed by repository path ("dir/file").
	Files map[string][]byte
	// Dir, when set, serves every regular file under this directory, read from
	// disk at request time. Files adds to (and overrides) what Dir holds.
	Dir string
	// Revision is the branch name; "main" when empty.
	Revision string
	// Commit is the 40-hex commit sha of the revision; derived from the repo id
	// when empty. Both Revision and Commit resolve.
	Commit string
	// Private repositories are visible only with one of Tokens.
	Private bool
	// Gated repositories list publicly but serve files only with one of Tokens.
	Gated bool
	// Tokens are the bearer tokens with access to a private or gated repo. Every
	// token named by any repo (or AddToken) is a valid user token on the Hub.
	Tokens []string
	// LFSThreshold is the size from which a file is in LFS (DefaultLFSThreshold
	// when zero). *.safetensors, *.gguf and *.bin files are always in LFS.
	LFSThreshold int64
}

// file is one file of a repo with its ids as the Hub reports them.
type file struct {
	path     string
	size     int64
	data     []byte // content in memory, when diskPath is empty
	diskPath string
	gitOID   string // git blob sha1 of the content
	sha256   string // hex sha256 of the content
	lfs      bool
	// For LFS files, git stores a pointer file: oid is its blob sha1.
	pointerOID  string
	pointerSize int
}

// oid is the "oid" the tree API lists: the git blob id of what git stores.
func (f *file) oid() string {
	if f.lfs {
		return f.pointerOID
	}
	return f.gitOID
}

type repo struct {
	id       string
	revision string
	commit   string
	private  bool
	gated    bool
	tokens   map[string]bool
	files    map[string]*file
	paths    []string // sorted file paths
	dirs     []string // sorted directory paths
}

var hexSHA1 = regexp.MustCompile(`^[0-9a-f]{40}$`)

func newRepo(id string, r Repo) (*repo, error) {
	if parts := strings.Split(id, "/"); len(parts) != 2 || parts[0] == "" || parts[1] == "" {
		return nil, fmt.Errorf("fakehub: repo id %q is not of the form org/name", id)
	}
	rp := &repo{
		id:       id,
		revision: r.Revision,
		commit:   r.Commit,
		private:  r.Private,
		gated:    r.Gated,
		tokens:   map[string]bool{},
		files:    map[string]*file{},
	}
	if rp.revision == "" {
		rp.revision = "main"
	}
	if rp.commit == "" {
		rp.commit = hexSum(sha1.New(), "fakehub commit "+id+"@"+rp.revision)
	}
	if !hexSHA1.MatchString(rp.commit) {
		return nil, fmt.Errorf("fakehub: commit %q is not 40 lowercase hex digits", rp.commit)
	}
	for _, t := range r.Tokens {
		rp.tokens[t] = true
	}
	threshold := r.LFSThreshold
	if threshold <= 0 {
		threshold = DefaultLFSThreshold
	}
	isLFS := func(p string, size int64) bool { return size >= threshold || alwaysLFS(p) }
	if r.Dir != "" {
		disk, err := hashDir(r.Dir, isLFS)
		if err != nil {
			return nil, err
		}
		for _, f := range disk {
			rp.files[f.path] = f
		}
	}
	for p, data := range r.Files {
		if p == "" || strings.HasPrefix(p, "/") || path.Clean(p) != p {
			return nil, fmt.Errorf("fakehub: file path %q is not a clean relative path", p)
		}
		gitOID, sum := hashBytes(data)
		rp.files[p] = &file{path: p, size: int64(len(data)), data: data, gitOID: gitOID, sha256: sum}
	}
	dirs := map[string]bool{}
	for p, f := range rp.files {
		rp.paths = append(rp.paths, p)
		f.lfs = isLFS(p, f.size)
		if f.lfs {
			ptr := lfsPointer(f.sha256, f.size)
			f.pointerSize = len(ptr)
			f.pointerOID = gitBlobOID([]byte(ptr))
		}
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for d := range dirs {
		rp.dirs = append(rp.dirs, d)
	}
	sort.Strings(rp.paths)
	sort.Strings(rp.dirs)
	return rp, nil
}

func alwaysLFS(p string) bool {
	switch path.Ext(p) {
	case ".safetensors", ".gguf", ".bin":
		return true
	}
	return false
}

// lfsPointer is the git-lfs pointer file git stores in place of an LFS file.
func lfsPointer(sha256Hex string, size int64) string {
	return "version https://git-lfs.github.com/spec/v1\noid sha256:" + sha256Hex + "\nsize " + strconv.FormatInt(size, 10) + "\n"
}

func gitBlobOID(data []byte) string {
	h := sha1.New() //nolint:gosec // git object ids are SHA-1
	_, _ = fmt.Fprintf(h, "blob %d\x00", len(data))
	_, _ = h.Write(data)
	return hex.EncodeToString(h.Sum(nil))
}

func hashBytes(data []byte) (gitOID, sha256Hex string) {
	s := sha256.Sum256(data)
	return gitBlobOID(data), hex.EncodeToString(s[:])
}

func hexSum(h hash.Hash, s string) string {
	_, _ = io.WriteString(h, s)
	return hex.EncodeToString(h.Sum(nil))
}

// hashes of files on disk, keyed by path, size and mtime, so that a large
// generated model is hashed once per process (GenerateModel fills it as it
// writes).
var hashCache sync.Map // hashKey -> fileHashes

type hashKey struct {
	path  string
	size  int64
	mtime int64
}

type fileHashes struct{ gitOID, sha256 string }

func keyFor(p string, fi fs.FileInfo) hashKey {
	return hashKey{path: p, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
}

// contentHasher computes the sha256 and, when asked, the git blob sha1 of a
// stream of known size in one pass. The git id of an LFS file's content is
// never needed (git stores its pointer file), so large files skip it.
type contentHasher struct{ git, sum hash.Hash }

func newContentHasher(size int64, withGit bool) *contentHasher {
	h := &contentHasher{sum: sha256.New()}
	if withGit {
		h.git = sha1.New() //nolint:gosec // git object ids are SHA-1
		_, _ = fmt.Fprintf(h.git, "blob %d\x00", size)
	}
	return h
}

func (h *contentHasher) Write(p []byte) (int, error) {
	if h.git != nil {
		_, _ = h.git.Write(p)
	}
	return h.sum.Write(p)
}

func (h *contentHasher) hashes() fileHashes {
	fh := fileHashes{sha256: hex.EncodeToString(h.sum.Sum(nil))}
	if h.git != nil {
		fh.gitOID = hex.EncodeToString(h.git.Sum(nil))
	}
	return fh
}

// hashDir lists the regular files under dir and hashes them, in parallel.
func hashDir(dir string, isLFS func(string, int64) bool) ([]*file, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	var files []*file
	var infos []fs.FileInfo
	err = filepath.WalkDir(abs, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(abs, p)
		if err != nil {
			return err
		}
		files = append(files, &file{path: filepath.ToSlash(rel), size: fi.Size(), diskPath: p})
		infos = append(infos, fi)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("fakehub: listing %s: %w", dir, err)
	}
	work := make(chan int)
	errs := make(chan error, len(files))
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for i := range work {
				h, err := hashFile(files[i].diskPath, infos[i], !isLFS(files[i].path, files[i].size))
				if err != nil {
					errs <- err
					continue
				}
				files[i].gitOID, files[i].sha256 = h.gitOID, h.sha256
			}
		})
	}
	for i := range files {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	return files, nil
}

func hashFile(p string, fi fs.FileInfo, withGit bool) (fileHashes, error) {
	key := keyFor(p, fi)
	if h, ok := hashCache.Load(key); ok && (!withGit || h.(fileHashes).gitOID != "") {
		return h.(fileHashes), nil
	}
	f, err := os.Open(p)
	if err != nil {
		return fileHashes{}, err
	}
	defer func() { _ = f.Close() }()
	h := newContentHasher(fi.Size(), withGit)
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		return fileHashes{}, fmt.Errorf("fakehub: hashing %s: %w", p, err)
	}
	hs := h.hashes()
	hashCache.Store(key, hs)
	return hs, nil
}
