package fetch

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
)

// Bookkeeping names inside the destination. Sources may not list anything starting with
// the prefix, so these never collide with weights.
const (
	bookkeepingPrefix = ".helixflow-"
	markerName        = bookkeepingPrefix + "fetch.json"
	lockName          = bookkeepingPrefix + "fetch.lock"
	partialDirName    = bookkeepingPrefix + "partial"
	// GGUFLink names the model file for llama.cpp, which takes a file, not a directory:
	// a symlink to the GGUF file (the first part of a split one) that was fetched.
	GGUFLink = bookkeepingPrefix + "model.gguf"
)

const (
	maxAttempts  = 6
	firstBackoff = 500 * time.Millisecond
	bufferSize   = 1 << 20
	stateEvery   = time.Second
)

// fileState is what survives a killed fetch, per file, in the partial directory: how far
// each chunk got. A chunk is written in order from its start, and the state is saved after
// the bytes it counts were written, so it never claims bytes that are not on disk.
type fileState struct {
	Size      int64   `json:"size"`
	Digest    Digest  `json:"digest"`
	ChunkSize int64   `json:"chunkSize"`
	Done      []int64 `json:"done"`
	Verified  bool    `json:"verified"`
}

// chunk is a byte range [start, end) of a file; end is -1 when the size is unknown.
type chunk struct{ start, end int64 }

func (c chunk) len() int64 { return c.end - c.start }

// fileJob is one file being fetched: its chunks, its state and its running checksum.
type fileJob struct {
	f         File
	final     string
	part      string
	statePath string
	chunks    []chunk

	mu        sync.Mutex
	st        fileState
	dirty     bool
	remaining int      // chunks not yet complete
	fd        *os.File // opened on first use, closed once verified
	// onDisk is set by plan for a file an interrupted run already verified and moved into
	// place: there is nothing to fetch or check.
	onDisk bool
	// The file's hasher goroutine (see hash) is started with its first piece of work and
	// woken through kick whenever bytes were written or a chunk completed.
	hasher sync.Once
	kick   chan struct{}
}

// download fetches the planned files with a pool of workers.
type download struct {
	src       Source
	log       logr.Logger
	jobs      []*fileJob
	chunkSize int64
	workers   int

	total      int64        // bytes of all files whose size is known
	present    atomic.Int64 // bytes on disk: reused plus written this run
	downloaded atomic.Int64 // bytes read from the source this run
	filesDone  atomic.Int64
	verified   atomic.Int64

	ctx     context.Context // the run's, canceled with the first error
	fail    context.CancelCauseFunc
	hashers sync.WaitGroup
}

// plan prepares a job per file, reading back what an interrupted run left.
func (d *download) plan(dest string, files []File) {
	partial := filepath.Join(dest, partialDirName)
	for _, f := range files {
		j := &fileJob{
			f:         f,
			final:     filepath.Join(dest, filepath.FromSlash(f.Path)),
			part:      filepath.Join(partial, "data", filepath.FromSlash(f.Path)),
			statePath: filepath.Join(partial, "state", filepath.FromSlash(f.Path)+".json"),
			kick:      make(chan struct{}, 1),
		}
		if f.Archive != "" {
			// An archive stays in the partial directory until it is unpacked.
			j.final = j.part
		}
		j.chunks = planChunks(f, d.chunkSize)
		fresh := fileState{Size: f.Size, Digest: f.Digest, ChunkSize: d.chunkSize, Done: make([]int64, len(j.chunks))}
		j.st = fresh
		if old, ok := readState(j.statePath); ok && old.Size == f.Size && old.Digest == f.Digest && old.ChunkSize == d.chunkSize && len(old.Done) == len(j.chunks) {
			j.st = old
		}
		switch {
		case j.st.Verified && sizeIs(j.final, f.Size):
			j.onDisk = true
			d.filesDone.Add(1)
			d.present.Add(max(f.Size, 0))
		case j.st.Verified || !sizeIs(j.part, f.Size) && f.Size >= 0:
			// Verified but the file is gone, or the partial data is not what the state
			// describes: start this file again.
			j.st = fresh
		}
		if f.Size >= 0 {
			d.total += f.Size
		}
		if !j.onDisk {
			for i, c := range j.chunks {
				if c.end < 0 || j.st.Done[i] < c.len() {
					j.remaining++
				}
			}
			for _, done := range j.st.Done {
				d.present.Add(done)
			}
		}
		d.jobs = append(d.jobs, j)
	}
}

func planChunks(f File, size int64) []chunk {
	if f.Size < 0 || !f.Ranged {
		return []chunk{{0, f.Size}}
	}
	var cs []chunk
	for off := int64(0); off < f.Size; off += size {
		cs = append(cs, chunk{off, min(off+size, f.Size)})
	}
	return cs
}

func sizeIs(p string, size int64) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && (size < 0 || fi.Size() == size)
}

func readState(p string) (fileState, bool) {
	b, err := os.ReadFile(p)
	if err != nil {
		return fileState{}, false
	}
	var st fileState
	return st, json.Unmarshal(b, &st) == nil
}

// need is how many more bytes the files take on disk (sparse partial files hold only what
// was written).
func (d *download) need() int64 {
	var n int64
	for _, j := range d.jobs {
		if j.onDisk || j.f.Size < 0 {
			continue
		}
		n += j.f.Size
		for _, done := range j.st.Done {
			n -= done
		}
	}
	return n
}

type work struct {
	j *fileJob
	i int // chunk index; -1 only verifies (every chunk was already on disk)
}

// run fetches every chunk not yet on disk and verifies every file.
func (d *download) run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	d.ctx, d.fail = ctx, cancel
	queue := make(chan work)
	go func() {
		defer close(queue)
		for _, j := range d.jobs {
			if j.onDisk {
				continue
			}
			if j.remaining == 0 {
				select {
				case queue <- work{j, -1}:
				case <-ctx.Done():
					return
				}
				continue
			}
			for i, c := range j.chunks {
				if c.end >= 0 && j.st.Done[i] >= c.len() {
					continue
				}
				select {
				case queue <- work{j, i}:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	stopSaver := d.saveStates(ctx)
	var wg sync.WaitGroup
	for range d.workers {
		wg.Go(func() {
			buf := make([]byte, bufferSize)
			for w := range queue {
				if err := d.do(ctx, w, buf); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	// Every file's last chunk woke its hasher; they finish (or see the cancellation).
	d.hashers.Wait()
	stopSaver()
	for _, j := range d.jobs {
		j.closeFile()
	}
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return nil
}

// saveStates writes changed file states every second until stopped, and once more then.
func (d *download) saveStates(ctx context.Context) (stop func()) {
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(stateEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
			case <-ctx.Done():
			case <-done:
			}
			for _, j := range d.jobs {
				if err := j.saveState(); err != nil {
					d.log.Error(err, "saving fetch state; an interrupted fetch may download some bytes again", "file", j.f.Path)
				}
			}
			select {
			case <-done:
				return
			case <-ctx.Done():
				<-done
				return
			default:
			}
		}
	}()
	return func() { close(done); <-exited }
}

func (j *fileJob) saveState() error {
	j.mu.Lock()
	if !j.dirty {
		j.mu.Unlock()
		return nil
	}
	b, err := json.Marshal(j.st)
	j.dirty = false
	j.mu.Unlock()
	if err != nil {
		return err
	}
	return writeFileAtomic(j.statePath, b)
}

// do runs one piece of work with retries for errors that may pass.
func (d *download) do(ctx context.Context, w work, buf []byte) error {
	d.startHasher(w.j)
	if w.i >= 0 {
		backoff := firstBackoff
		for attempt := 1; ; attempt++ {
			err := d.fetchChunk(ctx, w.j, w.i, buf)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			if !retryable(err) || attempt == maxAttempts {
				return err
			}
			d.log.Info("retrying", "file", w.j.f.Path, "attempt", attempt+1, "error", err.Error())
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			backoff *= 2
		}
	}
	if w.i >= 0 {
		w.j.mu.Lock()
		w.j.remaining--
		w.j.mu.Unlock()
	}
	w.j.poke()
	return nil
}

// startHasher starts the file's hasher with its first piece of work.
func (d *download) startHasher(j *fileJob) {
	j.hasher.Do(func() { d.hashers.Go(func() { d.hash(j) }) })
}

// fetchChunk reads one chunk from where it stopped and writes it into the partial file.
func (d *download) fetchChunk(ctx context.Context, j *fileJob, i int, buf []byte) error {
	fd, err := j.open()
	if err != nil {
		return err
	}
	c := j.chunks[i]
	j.mu.Lock()
	pos := c.start + j.st.Done[i]
	if !j.f.Ranged && pos > 0 {
		// The source cannot resume in the middle: start the file again.
		d.present.Add(-j.st.Done[i])
		j.st.Done[i], pos = 0, 0
	}
	j.mu.Unlock()
	if c.end >= 0 && pos >= c.end {
		return nil // an earlier attempt wrote it all and failed after (at the body's end)
	}
	rc, err := d.src.Open(ctx, j.f, pos, c.end)
	if err != nil {
		return err
	}
	defer rc.Close()
	var r io.Reader = rc
	if c.end >= 0 {
		// A source that answers a range with the whole file is read only up to the chunk's end.
		r = io.LimitReader(rc, c.end-pos)
	}
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if _, err := fd.WriteAt(buf[:n], pos); err != nil {
				return writeError(j.part, err)
			}
			pos += int64(n)
			d.downloaded.Add(int64(n))
			d.present.Add(int64(n))
			j.mu.Lock()
			j.st.Done[i] += int64(n)
			j.dirty = true
			j.mu.Unlock()
			j.poke()
		}
		switch {
		case rerr == nil:
			continue
		case errors.Is(rerr, io.EOF), errors.Is(rerr, io.ErrUnexpectedEOF):
			if c.end >= 0 && pos < c.end {
				return &Error{Kind: KindUnavailable, Msg: fmt.Sprintf("%s: the connection ended at byte %d of %d", j.f.Path, pos, c.end)}
			}
			if c.end < 0 {
				j.mu.Lock()
				j.chunks[i].end, j.st.Size = pos, pos
				j.mu.Unlock()
			}
			return nil
		default:
			return &Error{Kind: KindUnavailable, Msg: j.f.Path, Err: rerr}
		}
	}
}

func (j *fileJob) open() (*os.File, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.fd != nil {
		return j.fd, nil
	}
	if err := os.MkdirAll(filepath.Dir(j.part), 0o755); err != nil {
		return nil, writeError(j.part, err)
	}
	fd, err := os.OpenFile(j.part, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, writeError(j.part, err)
	}
	if j.f.Size >= 0 {
		// Sparse: space is taken as bytes arrive, and every chunk can write at its offset.
		if err := fd.Truncate(j.f.Size); err != nil {
			fd.Close()
			return nil, writeError(j.part, err)
		}
	}
	j.fd = fd
	return fd, nil
}

func (j *fileJob) closeFile() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.fd != nil {
		j.fd.Close()
		j.fd = nil
	}
}

// poke wakes the file's hasher; a wake-up already pending is enough.
func (j *fileJob) poke() {
	select {
	case j.kick <- struct{}{}:
	default:
	}
}

// hash runs beside the workers for one file: it feeds the checksum with the written prefix
// of the file as it grows (read back from the page cache, so hashing uses another core
// while the download goes on, even on one connection), and when every chunk is complete
// and hashed it finishes the file. It is the only reader of its hash, so the hash needs no
// lock.
func (d *download) hash(j *fileJob) {
	var h hash.Hash
	var hashed int64
	buf := hashBuffers.Get().(*[]byte)
	defer hashBuffers.Put(buf)
	for {
		select {
		case <-j.kick:
		case <-d.ctx.Done():
			return
		}
		for {
			j.mu.Lock()
			prefix, size, complete := j.writtenPrefix(), j.st.Size, j.remaining == 0
			j.mu.Unlock()
			if !j.f.Digest.IsZero() && prefix > hashed {
				if h == nil {
					h = j.f.Digest.newHash(size)
				}
				if err := hashRange(j, h, hashed, prefix, *buf); err != nil {
					d.fail(err)
					return
				}
				hashed = prefix
				continue
			}
			if !complete {
				break
			}
			if h == nil && !j.f.Digest.IsZero() {
				h = j.f.Digest.newHash(size) // an empty file
			}
			if err := d.finish(j, h); err != nil {
				d.fail(err)
			}
			return
		}
	}
}

var hashBuffers = sync.Pool{New: func() any { b := make([]byte, bufferSize); return &b }}

// writtenPrefix is how far the file is written without a gap: complete chunks, then what
// the first incomplete one has. Until its size is known (it is needed first by Git blob
// ids) a file of unknown size counts as not written.
func (j *fileJob) writtenPrefix() int64 {
	if j.st.Size < 0 {
		return 0
	}
	var n int64
	for i, c := range j.chunks {
		if j.st.Done[i] < c.len() {
			return c.start + j.st.Done[i]
		}
		n = c.end
	}
	return n
}

func hashRange(j *fileJob, h hash.Hash, from, to int64, buf []byte) error {
	fd, err := j.open()
	if err != nil {
		return err
	}
	_, err = io.CopyBuffer(h, io.NewSectionReader(fd, from, to-from), buf)
	if err != nil {
		return fmt.Errorf("reading back %s to verify it: %w", j.part, err)
	}
	return nil
}

// finish checks the digest and moves the file to its final place.
func (d *download) finish(j *fileJob, h hash.Hash) error {
	if _, err := j.open(); err != nil { // an empty file has no chunk that created it
		return err
	}
	j.closeFile()
	if !j.f.Digest.IsZero() {
		got := hex.EncodeToString(h.Sum(nil))
		switch {
		case got == j.f.Digest.Hex:
			d.verified.Add(1)
		case d.doubted(j.f):
			d.log.Info("not verified: the source's checksum is not one of the content", "file", j.f.Path, "digest", j.f.Digest.String())
		default:
			// Start this file from nothing next time: the bytes on disk are wrong.
			_ = os.Remove(j.part)
			_ = os.Remove(j.statePath)
			return errorf(KindChecksumMismatch, "checksum mismatch for %s from %s: the source publishes %s %s, the downloaded bytes have %s; the file was discarded",
				j.f.Path, d.src, j.f.Digest.Algo, j.f.Digest.Hex, got)
		}
	}
	if j.f.Archive == "" {
		if err := os.MkdirAll(filepath.Dir(j.final), 0o755); err != nil {
			return writeError(j.final, err)
		}
		if err := os.Rename(j.part, j.final); err != nil {
			return writeError(j.final, err)
		}
	}
	j.mu.Lock()
	j.st.Verified, j.dirty = true, true
	j.mu.Unlock()
	d.filesDone.Add(1)
	return j.saveState()
}

// doubted asks a source that can tell whether a mismatching published checksum was never
// a checksum of the content (an S3 ETag of a KMS-encrypted object).
func (d *download) doubted(f File) bool {
	ds, ok := d.src.(interface {
		doubtDigest(context.Context, File) bool
	})
	if !ok {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return ds.doubtDigest(ctx, f)
}

// writeError names a full disk for what it is.
func writeError(p string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return &Error{Kind: KindDiskFull, Msg: "disk full writing " + p + ": give the models volume more space", Err: err}
	}
	return fmt.Errorf("writing %s: %w", p, err)
}

// writeFileAtomic writes b to p through a temporary file and a rename, so p is either the
// old content or the new, never half of it.
func writeFileAtomic(p string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return writeError(p, err)
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return writeError(p, err)
	}
	return os.Rename(tmp, p)
}
