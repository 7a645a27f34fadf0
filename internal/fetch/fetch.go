// Package fetch downloads model weights for `runtime fetch`, the init container of every
// model pod: from the Hugging Face Hub (hf://), S3-compatible stores (s3://), Google Cloud
// Storage (gs://), plain HTTPS (a file or an archive) and OCI registries (oci://).
//
// Files and ranges of large files are fetched in parallel. Progress is saved per chunk, so
// a killed init container continues where it stopped instead of starting again. Every
// checksum the source publishes is verified (the Hub's sha256 of LFS files and Git blob ids,
// S3 ETags that are MD5s, GCS md5/crc32c, OCI digests) before a file is moved into place.
// Only when every file is in place is the completion marker written, so the engine never
// sees a half-written directory, and a second run over a complete directory returns at once
// without touching the network.
package fetch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/go-logr/logr"
)

// Options configure one fetch.
type Options struct {
	// URI is spec.model.uri; Revision is spec.model.revision (hf:// only).
	URI, Revision string
	// Dest is the directory the weights go to.
	Dest string
	// Format drops the weight files of other formats (see Format); empty means all.
	Format Format
	// Concurrency is the number of parallel connections (default 8).
	Concurrency int
	// ChunkSize is the size of the ranges large files are split into (default 64 MiB).
	ChunkSize int64
	// Credentials for the source.
	Credentials Credentials
	// Log gets progress every ProgressInterval (default 5s) and a summary.
	Log              logr.Logger
	ProgressInterval time.Duration
	// FreeSpace reports the bytes free under a directory; nil asks the file system. Tests
	// set it to play a full disk.
	FreeSpace func(dir string) (int64, error)
	// Source replaces the one URI names (tests, benchmarks).
	Source Source
}

// Summary says what a fetch did.
type Summary struct {
	Source   string `json:"source"`
	Revision string `json:"revision,omitempty"`
	Resolved string `json:"resolved,omitempty"`
	Format   Format `json:"format,omitempty"`
	// Files and Bytes are the model's files and their total size.
	Files int   `json:"files"`
	Bytes int64 `json:"bytes"`
	// Downloaded counts the bytes read from the source by this run; Reused the bytes an
	// interrupted run had already written.
	Downloaded int64 `json:"downloaded"`
	Reused     int64 `json:"reused"`
	// Verified counts the files whose checksum was checked.
	Verified int `json:"verified"`
	// Paths are the files written (the completion marker lists them).
	Paths     []string      `json:"paths"`
	Elapsed   time.Duration `json:"-"`
	NoOp      bool          `json:"-"`
	Completed time.Time     `json:"completed"`
}

func (s Summary) String() string {
	src := redactURI(s.Source)
	if s.NoOp {
		return fmt.Sprintf("weights already complete: %d files, %s from %s (nothing fetched)", s.Files, humanBytes(s.Bytes), src)
	}
	rate := float64(s.Downloaded) / max(s.Elapsed.Seconds(), 1e-9)
	return fmt.Sprintf("fetched %d files, %s from %s in %s (%s/s); %s downloaded, %s reused from an interrupted run; %d checksums verified",
		s.Files, humanBytes(s.Bytes), src, s.Elapsed.Round(time.Millisecond), humanBytes(int64(rate)),
		humanBytes(s.Downloaded), humanBytes(s.Reused), s.Verified)
}

// Run fetches the weights into opts.Dest and returns what it did.
func Run(ctx context.Context, opts Options) (Summary, error) {
	start := time.Now()
	opts = withDefaults(opts)
	if err := os.MkdirAll(opts.Dest, 0o755); err != nil {
		return Summary{}, writeError(opts.Dest, err)
	}
	unlock, err := lockDir(ctx, opts.Dest, opts.Log)
	if err != nil {
		return Summary{}, err
	}
	defer unlock()

	marker := filepath.Join(opts.Dest, markerName)
	old, hasOld := readMarker(marker)
	if hasOld && old.Source == opts.URI && old.Revision == opts.Revision && old.Format == opts.Format && filesPresent(opts.Dest, old.Paths) {
		old.NoOp, old.Elapsed = true, time.Since(start)
		return old, nil
	}
	src := opts.Source
	if src == nil {
		if src, err = NewSource(opts.URI, opts.Revision, opts.Credentials); err != nil {
			return Summary{}, err
		}
	}
	files, resolved, err := listFiles(ctx, src, opts.Format)
	if err != nil {
		return Summary{}, err
	}
	// From here the directory is changing: it is complete again only with a new marker.
	if err := os.Remove(marker); err != nil && !errors.Is(err, os.ErrNotExist) {
		return Summary{}, writeError(marker, err)
	}

	d := &download{src: src, log: opts.Log, chunkSize: opts.ChunkSize, workers: opts.Concurrency}
	d.plan(opts.Dest, files)
	reused := d.present.Load()
	if err := checkSpace(opts, d.need(), d.total); err != nil {
		return Summary{}, err
	}
	opts.Log.Info("fetching", "source", src.String(), "resolved", resolved, "files", len(files), "bytes", d.total,
		"onDisk", reused, "connections", opts.Concurrency)
	stopProgress := reportProgress(opts.Log, d, opts.ProgressInterval)
	err = d.run(ctx)
	stopProgress()
	if err != nil {
		return Summary{}, err
	}
	paths, err := unpackArchives(opts.Dest, d.jobs)
	if err != nil {
		return Summary{}, err
	}
	if hasOld {
		removeStale(opts.Dest, old.Paths, paths)
	}
	if opts.Format == FormatGGUF {
		if err := linkGGUF(opts.Dest, paths); err != nil {
			return Summary{}, err
		}
	}
	// The marker keeps the URI as given: the no-op check compares it (String redacts it).
	sum := Summary{
		Source: opts.URI, Revision: opts.Revision, Resolved: resolved, Format: opts.Format,
		Files: len(paths), Bytes: d.present.Load(), Downloaded: d.downloaded.Load(), Reused: reused,
		Verified: int(d.verified.Load()), Paths: paths, Elapsed: time.Since(start), Completed: time.Now().UTC(),
	}
	b, err := json.MarshalIndent(sum, "", "  ")
	if err != nil {
		return Summary{}, err
	}
	if err := writeFileAtomic(marker, b); err != nil {
		return Summary{}, err
	}
	if err := os.RemoveAll(filepath.Join(opts.Dest, partialDirName)); err != nil {
		opts.Log.Error(err, "removing the partial directory")
	}
	return sum, nil
}

func withDefaults(o Options) Options {
	if o.Concurrency <= 0 {
		o.Concurrency = 8
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = 64 << 20
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = 5 * time.Second
	}
	if o.Format == "" {
		o.Format = FormatAll
	}
	if o.FreeSpace == nil {
		o.FreeSpace = freeSpace
	}
	return o
}

// listFiles lists, filters and checks the source's files.
func listFiles(ctx context.Context, src Source, format Format) ([]File, string, error) {
	files, resolved, err := src.List(ctx)
	if err != nil {
		return nil, "", err
	}
	files = filterFormat(files, format)
	seen := map[string]bool{}
	for i := range files {
		p, err := cleanPath(files[i].Path)
		if err != nil {
			return nil, "", err
		}
		if seen[p] {
			return nil, "", errorf(KindInvalid, "%s lists %s twice", src, p)
		}
		seen[p] = true
		files[i].Path = p
	}
	if len(files) == 0 {
		return nil, "", errorf(KindNotFound, "revision/file not found: %s has no files", src)
	}
	return files, resolved, nil
}

func readMarker(p string) (Summary, bool) {
	b, err := os.ReadFile(p)
	if err != nil {
		return Summary{}, false
	}
	var s Summary
	return s, json.Unmarshal(b, &s) == nil
}

func filesPresent(dest string, paths []string) bool {
	for _, p := range paths {
		if _, err := os.Stat(filepath.Join(dest, filepath.FromSlash(p))); err != nil {
			return false
		}
	}
	return len(paths) > 0
}

// removeStale deletes the files a previous fetch (of another URI or revision) wrote that
// this one did not. Only files a marker listed are touched: nothing else in the directory
// is ours to delete.
func removeStale(dest string, before, now []string) {
	for _, p := range before {
		if !slices.Contains(now, p) {
			if c, err := cleanPath(p); err == nil {
				_ = os.Remove(filepath.Join(dest, filepath.FromSlash(c)))
			}
		}
	}
}

// checkSpace refuses to start when the files cannot fit, rather than failing at 97%.
func checkSpace(o Options, need, total int64) error {
	free, err := o.FreeSpace(o.Dest)
	if err != nil || need <= free {
		return nil //nolint:nilerr // not knowing the free space is no reason to refuse; a full disk still fails clearly
	}
	return errorf(KindDiskFull, "disk full: %s needs %s more (the weights are %s in all), only %s is free; give the models volume more space",
		o.Dest, humanBytes(need), humanBytes(total), humanBytes(free))
}

func freeSpace(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil //nolint:gosec // block counts fit in int64
}

// lockDir holds an exclusive lock on dest so that two fetches into one directory (two
// replicas sharing a node cache) take turns: the second finds the work done.
func lockDir(ctx context.Context, dest string, log logr.Logger) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dest, lockName), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, writeError(dest, err)
	}
	fd := int(f.Fd()) //nolint:gosec // a file descriptor fits in int
	if syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		log.Info("waiting for another fetch into the same directory", "dest", dest)
		for syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			select {
			case <-ctx.Done():
				f.Close()
				return nil, context.Cause(ctx)
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	return func() { f.Close() }, nil
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
