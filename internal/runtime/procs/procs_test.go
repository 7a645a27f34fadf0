package procs

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestNext(t *testing.T) {
	cases := []struct {
		cur, max int
		busy     float64
		want     int
	}{
		{cur: 1, max: 2, busy: 0.45, want: 1},   // fits one P: stays
		{cur: 1, max: 2, busy: 0.79, want: 1},   // just under upAt
		{cur: 1, max: 2, busy: 0.8, want: 2},    // one P nearly all busy: more
		{cur: 2, max: 2, busy: 1.9, want: 2},    // at the most already
		{cur: 2, max: 16, busy: 1.7, want: 4},   // doubles
		{cur: 8, max: 12, busy: 7.5, want: 12},  // doubles, up to the most
		{cur: 2, max: 2, busy: 0.59, want: 1},   // fits one fewer with room: gives one back
		{cur: 2, max: 2, busy: 0.6, want: 2},    // not room enough
		{cur: 2, max: 2, busy: 0.7, want: 2},    // between the thresholds: no change
		{cur: 4, max: 4, busy: 0.1, want: 3},    // one at a time
		{cur: 1, max: 4, busy: 0, want: 1},      // never under one
		{cur: 1, max: 1, busy: 5, want: 1},      // a single CPU: nothing to do
		{cur: 3, max: 4, busy: 1.19, want: 2},   // 1.19 < 0.6 × 2
		{cur: 3, max: 4, busy: 2.3, want: 3},    // 2.3 < 0.8 × 3 and ≥ 0.6 × 2
		{cur: 3, max: 4, busy: 2.41, want: 4},   // ≥ 0.8 × 3
		{cur: 16, max: 16, busy: 9.1, want: 16}, // ≥ 0.6 × 15
	}
	for _, c := range cases {
		if got := Next(c.cur, c.max, c.busy); got != c.want {
			t.Errorf("Next(%d, %d, %.2f) = %d, want %d", c.cur, c.max, c.busy, got, c.want)
		}
	}
}

// fakeLoad is a process whose CPU time grows by busy CPUs × the time on its clock, which
// moves by one interval per sample.
type fakeLoad struct {
	mu   sync.Mutex
	now  time.Time
	cpu  time.Duration
	busy []float64 // per sample, the last repeated
	n    int
	fail map[int]bool // samples whose CPU time cannot be read
	set  []int

	limits []int // per reading of the limit, the last repeated
	reads  int
}

func (l *fakeLoad) Limit() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reads++
	return l.limits[min(l.reads-1, len(l.limits)-1)]
}

func (l *fakeLoad) Now() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.now
}

func (l *fakeLoad) CPUTime() (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n > 0 {
		busy := l.busy[min(l.n-1, len(l.busy)-1)]
		l.now = l.now.Add(time.Second)
		l.cpu += time.Duration(busy * float64(time.Second))
	}
	l.n++
	return l.cpu, !l.fail[l.n-1]
}

func (l *fakeLoad) Set(n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.set = append(l.set, n)
}

// run samples l until it has taken samples samples and returns the Ps set, in order.
// The limit is read every 3 samples.
func (l *fakeLoad) run(t *testing.T, samples int) []int {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, Config{Limit: l.Limit, LimitInterval: 3 * time.Second, Interval: time.Millisecond, CPUTime: l.CPUTime, Set: l.Set, Now: l.Now})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		n := l.n
		l.mu.Unlock()
		if n >= samples {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d samples taken in 10 s", n)
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.set)
}

func TestRunFollowsTheLoad(t *testing.T) {
	// Half a core on a 4-CPU process: down one P per sample to 1, then no more changes.
	// Then 3.5 cores: up, doubling. Then idle again: down, one at a time.
	busy := []float64{0.5, 0.5, 0.5, 0.5, 0.5, 3.5, 3.5, 3.5, 0.1, 0.1, 0.1, 0.1, 0.1}
	l := &fakeLoad{now: time.Unix(0, 0), busy: busy, limits: []int{4}}
	got := l.run(t, len(busy)+1)
	want := []int{3, 2, 1, 2, 4, 3, 2, 1}
	if !slices.Equal(got, want) {
		t.Errorf("Ps set %v, want %v", got, want)
	}
}

func TestRunSkipsSamplesItCannotRead(t *testing.T) {
	// The second and third readings fail: the samples around them are not compared, and
	// the next change comes from the first two good readings in a row.
	l := &fakeLoad{now: time.Unix(0, 0), busy: []float64{0.1}, fail: map[int]bool{1: true, 2: true}, limits: []int{2}}
	got := l.run(t, 5)
	if !slices.Equal(got, []int{1}) {
		t.Errorf("Ps set %v, want [1] (one change, from good samples only)", got)
	}
}

func TestRunFollowsTheLimit(t *testing.T) {
	// A load that would take every P, under a limit read at 0 s, 3 s, 6 s, 9 s and 12 s
	// that falls from 4 to 2 (the count goes down with it at once) and rises to 4 again (the
	// load takes the room at once).
	l := &fakeLoad{now: time.Unix(0, 0), busy: []float64{3.9}, limits: []int{4, 2, 2, 4}}
	got := l.run(t, 13)
	if want := []int{2, 4}; !slices.Equal(got, want) {
		t.Errorf("Ps set %v, want %v", got, want)
	}
	if l.reads != 5 {
		t.Errorf("limit read %d times over 12 s, want 5 (at the start and every 3 s)", l.reads)
	}
}

func TestGoDefault(t *testing.T) {
	// Run tests the logic with a fake limit; this is the real one: Go's choice is read and
	// the count in use is left as it was.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	runtime.SetDefaultGOMAXPROCS() // go test -cpu and GOMAXPROCS in the environment set it
	want := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(want + 1)
	if got := goDefault(); got != want {
		t.Errorf("goDefault() = %d, want Go's choice, %d", got, want)
	}
	if n := runtime.GOMAXPROCS(0); n != want+1 {
		t.Errorf("GOMAXPROCS %d after goDefault, want the %d it was", n, want+1)
	}
}

func TestProcessCPUTime(t *testing.T) {
	if processCPUTime == nil {
		t.Skip("no getrusage on this platform")
	}
	before, ok := processCPUTime()
	if !ok {
		t.Fatal("getrusage failed")
	}
	for end := time.Now().Add(30 * time.Millisecond); time.Now().Before(end); {
	}
	after, ok := processCPUTime()
	if !ok || after <= before {
		t.Errorf("CPU time %s then %s after 30 ms of spinning (ok %v): want it to grow", before, after, ok)
	}
}
