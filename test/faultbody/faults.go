package faultbody

import (
	"io"
	"net/http"
	"sync"
	"time"
)

// Faults is the fault and counter state a test double keeps for its file (or object)
// bodies, keyed by an item name the double chooses. Embedded in a double, its Throttle,
// CutAfter, Stats and ResetStats are the double's own. Safe for concurrent use.
type Faults[K comparable] struct {
	mu          sync.Mutex
	corrupt     map[string]bool
	bytesPerSec int64
	cutAt       int64
	cutDone     map[string]bool
	stats       Stats[K]
}

// NewFaults returns no fault armed and zero counters.
func NewFaults[K comparable]() *Faults[K] {
	return &Faults[K]{corrupt: map[string]bool{}, cutAt: -1, cutDone: map[string]bool{}, stats: NewStats[K]()}
}

// CorruptItem serves item with its middle byte inverted from now on.
func (f *Faults[K]) CorruptItem(item string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.corrupt[item] = true
}

// Throttle limits each body response to bytesPerSec (0 turns it off).
func (f *Faults[K]) Throttle(bytesPerSec int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bytesPerSec = bytesPerSec
}

// CutAfter arms a dropped connection: the next body response of each item (any range) that
// goes past n body bytes writes n bytes and then closes the connection. Each item is cut
// once per call; later requests for it succeed. A negative n turns it off.
func (f *Faults[K]) CutAfter(n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cutAt = n
	f.cutDone = map[string]bool{}
}

// Stats returns a copy of the counters.
func (f *Faults[K]) Stats() Stats[K] {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats.Clone()
}

// ResetStats zeroes the counters.
func (f *Faults[K]) ResetStats() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats = NewStats[K]()
}

// Count counts a request of kind.
func (f *Faults[K]) Count(kind K, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats.Request(kind, r)
}

// Serve writes item's content (size bytes in rs) with Range support, counting the body bytes
// and applying the armed faults. Headers set on w before are kept.
func (f *Faults[K]) Serve(w http.ResponseWriter, r *http.Request, item string, rs io.ReadSeeker, size int64, modtime time.Time) {
	f.mu.Lock()
	corrupt, bps, cutAt := f.corrupt[item], f.bytesPerSec, f.cutAt
	if f.cutDone[item] {
		cutAt = -1
	}
	f.mu.Unlock()
	if corrupt && size > 0 {
		rs = &FlipReader{RS: rs, Off: size / 2}
	}
	bw := &Writer{
		ResponseWriter: w,
		Record: func(n int64) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.stats.Body(item, n)
		},
		CutAt: cutAt,
		MayCut: func() bool {
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.cutDone[item] || f.cutAt < 0 {
				return false
			}
			f.cutDone[item] = true
			return true
		},
		BytesPerSec: bps,
		Start:       time.Now(),
	}
	http.ServeContent(bw, r, "", modtime, rs)
}
