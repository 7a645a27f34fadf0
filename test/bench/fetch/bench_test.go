package main

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestHarness runs the benchmark on a small model once and checks that it works: every
// path downloads the model exactly (run checks each file's sha256) and is reported. No
// timing is asserted: that is what the figures are for.
func TestHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds the runtime and runs curl")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed: it is the baseline")
	}
	var log bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := run(ctx, config{Size: 24 << 20, Shards: 3, Rounds: 1, Concurrency: 4, WorkDir: t.TempDir(), Log: &log})
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	var out bytes.Buffer
	rep.Print(&out)
	t.Log(out.String())
	for _, want := range []string{"curl, one file after another", "runtime fetch, 1 connection", "runtime fetch, 4 connections"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the report has no line for %q", want)
		}
	}
	if rep.files != 5 || rep.size < 24<<20 {
		t.Errorf("report covers %d files, %d bytes; want the 3 shards and 2 small files", rep.files, rep.size)
	}
}
