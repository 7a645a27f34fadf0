package serve

import (
	"context"
	"testing"
	"time"

	"github.com/helixflow/helixflow/test/testengine"
)

// flushingUsage is a UsageRecorder with the reporter's Flush; it reports what state the
// flush's context was in when it was called.
type flushingUsage struct {
	recordedUsage
	flushed chan error
}

func (u *flushingUsage) Flush(ctx context.Context) error {
	u.flushed <- ctx.Err()
	return nil
}

// TestShutdownFlushesUsageAfterADrainThatRanOut: a stream that runs to --shutdown-timeout
// leaves the drain's context ended; the usage flush after it still gets time of its own.
func TestShutdownFlushesUsageAfterADrainThatRanOut(t *testing.T) {
	u := &flushingUsage{recordedUsage: recordedUsage{tokens: map[string]int64{}}, flushed: make(chan error, 1)}
	opts := DefaultOptions()
	opts.Model, opts.Namespace = testengine.DefaultModel, testNS
	opts.Usage, opts.ShutdownTimeout = u, 50*time.Millisecond
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	s.shutdown([]server{{name: "a stream to the deadline", stop: func(ctx context.Context) { <-ctx.Done() }}})
	if err := <-u.flushed; err != nil {
		t.Fatalf("usage flushed with a context already ended: %v", err)
	}
}
