//go:build linux && race

package serve

import (
	"bytes"
	"os"
	"os/exec"
	"sync"
	"testing"
)

// The race detector sees what the kernel reads and writes on the raw path: a buffer that
// another goroutine touches with no synchronisation while a raw Read fills it, or a raw
// Write sends it, is a data race it reports. The races are made in a child process, as the
// detector fails the test binary that has one.
func TestRaceDetectorSeesRawIO(t *testing.T) {
	if os.Getenv("HELIXFLOW_RAWIO_RACE_CHILD") == "1" {
		racyRawIO(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestRaceDetectorSeesRawIO$", "-test.count=1")
	// Both races reported, and on stderr, whatever GORACE the tests run with.
	cmd.Env = append(os.Environ(), "HELIXFLOW_RAWIO_RACE_CHILD=1", "GORACE=halt_on_error=0")
	out, err := cmd.CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("WARNING: DATA RACE")) {
		t.Fatalf("no data race reported for buffers shared with raw I/O (exit: %v):\n%s", err, out)
	}
	// One report for each: the read's bytes written by the kernel, the write's read by it.
	for _, fn := range []string{"racewriterange", "racereadrange"} {
		if !bytes.Contains(out, []byte(fn)) {
			t.Errorf("no race report through %s:\n%s", fn, out)
		}
	}
}

var raceSink byte

// racyRawIO reads a buffer while a raw Read fills it, and writes one while a raw Write sends
// it, in goroutines with nothing ordering them against the I/O.
func racyRawIO(t *testing.T) {
	rc, b := rawPair(t)

	var wg sync.WaitGroup
	in := make([]byte, 8)
	if _, err := b.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { raceSink = in[0] })
	if _, err := rc.Read(in); err != nil {
		t.Fatal(err)
	}
	wg.Wait()

	out := []byte("world")
	wg.Go(func() { out[0] = 'W' })
	if _, err := rc.Write(out); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}
