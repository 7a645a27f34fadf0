// Package procs sizes GOMAXPROCS to the load of the process, within the most it may have.
//
// Go runs one P (a slot for running goroutines) per CPU by default, or per CPU of the
// container's limit. For a proxy whose load fits in less than that, the extra Ps cost CPU on
// every request: when the netpoller hands over more than one goroutine, an idle P's thread
// is woken to take some (a futex wake-up, a context switch, a thread spinning to find work,
// and a futex sleep after). In the data-plane benchmark, `runtime serve` used about 12% less
// CPU per request with one P than with two, at a load that needed half a core. And the
// runtime shares its node with an engine that needs its CPU: on a GPU node without a CPU
// limit it would otherwise run with one P per node CPU.
//
// So the runtime samples its own CPU use. It doubles its Ps, up to the maximum, when they are
// nearly all busy: the load may be held back by them. It gives one back when the load would
// fit in one fewer with room to spare. The thresholds leave a gap between them, so the count
// does not flap. The maximum is Go's own choice, read again every 30 s: Go stops following a
// changed CPU limit once GOMAXPROCS has been set, and a pod can be resized in place.
package procs

import (
	"context"
	"runtime"
	"time"
)

const (
	// upAt is the share of its Ps the process must keep busy for it to get more.
	upAt = 0.8
	// downAt is the share of one P fewer that the load must stay under for the process
	// to give a P back.
	downAt = 0.6
)

// Config is how the process is sampled and its Ps set. The zero value samples every second,
// with getrusage, and sets runtime.GOMAXPROCS up to Go's default, read again every 30 s.
type Config struct {
	// Limit returns the most Ps the process may have now. It is read at the start, which is
	// also the first count, and every LimitInterval after. nil means Go's default: one P per
	// CPU, or per CPU of the container's limit, which a resize of the pod in place can change
	// while the process runs.
	Limit func() int
	// LimitInterval is the time between readings of Limit; 0 means 30 s.
	LimitInterval time.Duration
	// Interval is the time between samples; 0 means 1 s.
	Interval time.Duration
	// CPUTime returns the process's CPU time so far (user and system), false when it cannot
	// be read; nil means getrusage, and Run does nothing where there is none.
	CPUTime func() (time.Duration, bool)
	// Set sets the number of Ps; nil means runtime.GOMAXPROCS.
	Set func(n int)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Changed, if set, is told of each change and the load that caused it (busy CPUs; 0
	// when the change came from a lowered limit at a sample that could not be read).
	Changed func(from, to int, busy float64)
}

// goDefault is the number of Ps Go would choose now. Go follows changes of the CPU limit
// itself only while nobody has set GOMAXPROCS, so it is asked to choose again
// (SetDefaultGOMAXPROCS, which re-reads the CPUs and the container's limit), and the count
// in use is put back: two brief stops of the world per reading.
func goDefault() int {
	cur := runtime.GOMAXPROCS(0)
	runtime.SetDefaultGOMAXPROCS()
	return runtime.GOMAXPROCS(cur)
}

// Next is the number of Ps for a process with cur of at most most Ps that kept busy CPUs
// busy (CPU seconds per second) over the last sample.
func Next(cur, most int, busy float64) int {
	switch {
	case cur < most && busy >= upAt*float64(cur):
		return min(most, 2*cur)
	case cur > 1 && busy < downAt*float64(cur-1):
		return cur - 1
	}
	return cur
}

// Run adjusts the process's Ps until ctx ends. It starts from the limit.
func Run(ctx context.Context, cfg Config) {
	if cfg.Limit == nil {
		cfg.Limit = goDefault
	}
	if cfg.LimitInterval <= 0 {
		cfg.LimitInterval = 30 * time.Second
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.CPUTime == nil {
		if processCPUTime == nil {
			return // no way to measure the load here: Go's default stays
		}
		cfg.CPUTime = processCPUTime
	}
	if cfg.Set == nil {
		cfg.Set = func(n int) { runtime.GOMAXPROCS(n) }
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	most := max(cfg.Limit(), 1)
	cur := most
	last := cfg.sample()
	limitAt := last.at
	tick := time.NewTicker(cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s := cfg.sample()
		busy, ok := last.busy(s)
		last = s
		next := cur
		if s.at.Sub(limitAt) >= cfg.LimitInterval {
			// A raised limit is used when the load asks for it; a lowered one at once.
			most, limitAt = max(cfg.Limit(), 1), s.at
			next = min(cur, most)
		}
		if ok {
			next = Next(next, most, busy)
		}
		if next != cur {
			cfg.Set(next)
			if cfg.Changed != nil {
				cfg.Changed(cur, next, busy)
			}
			cur = next
		}
	}
}

// sample is the process's CPU time at a moment; ok is false when it could not be read.
type sample struct {
	at  time.Time
	cpu time.Duration
	ok  bool
}

func (cfg Config) sample() sample {
	cpu, ok := cfg.CPUTime()
	return sample{at: cfg.Now(), cpu: cpu, ok: ok}
}

// busy is how many CPUs the process kept busy from s to later, on average; false when
// either has no reading or they are not in order.
func (s sample) busy(later sample) (float64, bool) {
	wall := later.at.Sub(s.at)
	if !s.ok || !later.ok || wall <= 0 || later.cpu < s.cpu {
		return 0, false
	}
	return float64(later.cpu-s.cpu) / float64(wall), true
}
