package fakehub

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
)

// Small files GenerateModel adds when files does not name them.
var generatedSmallFiles = map[string]string{
	"config.json":    "{\n  \"architectures\": [\"FakeForCausalLM\"],\n  \"model_type\": \"fake\",\n  \"hidden_size\": 64,\n  \"num_hidden_layers\": 2,\n  \"torch_dtype\": \"bfloat16\"\n}\n",
	"tokenizer.json": "{\n  \"version\": \"1.0\",\n  \"model\": {\"type\": \"BPE\", \"vocab\": {\"<unk>\": 0, \"a\": 1, \"b\": 2}, \"merges\": []}\n}\n",
}

// GenerateModel writes a deterministic model directory for Repo.Dir: each entry
// of files (a relative path and a size) is filled with pseudo-random bytes
// seeded by its path, so the same call always writes the same bytes; small
// config.json and tokenizer.json files are added unless files names them.
// Files are written in parallel with large writes, and their hashes are
// remembered so that AddRepo does not read them back.
func GenerateModel(dir string, files map[string]int64) error {
	type job struct {
		name  string
		size  int64
		small string
	}
	var jobs []job
	for name, size := range files {
		if size < 0 || !filepath.IsLocal(name) {
			return fmt.Errorf("fakehub: file %q of size %d: want a local path and a size >= 0", name, size)
		}
		jobs = append(jobs, job{name: name, size: size})
	}
	for name, content := range generatedSmallFiles {
		if _, ok := files[name]; !ok {
			jobs = append(jobs, job{name: name, size: int64(len(content)), small: content})
		}
	}
	// Largest first, so that parallel writers finish together.
	sort.Slice(jobs, func(i, j int) bool { return jobs[i].size > jobs[j].size })
	work := make(chan job)
	errs := make(chan error, len(jobs))
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), 4) {
		wg.Go(func() {
			for j := range work {
				errs <- writeGenerated(filepath.Join(dir, filepath.FromSlash(j.name)), j.name, j.size, j.small)
			}
		})
	}
	for _, j := range jobs {
		work <- j
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func writeGenerated(p, name string, size int64, small string) (err error) {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	// Shards named like weights are always in LFS, which needs no git id.
	h := newContentHasher(size, !alwaysLFS(name))
	w := io.MultiWriter(f, h)
	if small != "" {
		if _, err := io.WriteString(w, small); err != nil {
			return err
		}
	} else {
		seed := fnv.New64a()
		_, _ = seed.Write([]byte(name))
		rng := splitmix64(seed.Sum64())
		buf := make([]byte, 4<<20)
		for left := size; left > 0; {
			n := min(int64(len(buf)), left)
			rng.fill(buf[:n])
			if _, err := w.Write(buf[:n]); err != nil {
				return fmt.Errorf("fakehub: writing %s: %w", p, err)
			}
			left -= n
		}
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return err
	}
	hashCache.Store(keyFor(abs, fi), h.hashes())
	return nil
}

// splitmix64 is a fast seeded generator; the bytes need not be good random,
// only incompressible-looking and reproducible.
type splitmix64 uint64

func (s *splitmix64) next() uint64 {
	*s += 0x9e3779b97f4a7c15
	z := uint64(*s)
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func (s *splitmix64) fill(b []byte) {
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, s.next())
		b = b[8:]
	}
	if len(b) > 0 {
		var tail [8]byte
		binary.LittleEndian.PutUint64(tail[:], s.next())
		copy(b, tail[:])
	}
}
