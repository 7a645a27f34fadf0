package fetch

import (
	"fmt"
	"time"

	"github.com/go-logr/logr"
)

// reportProgress logs bytes, rate and ETA every interval until stopped.
func reportProgress(log logr.Logger, d *download, every time.Duration) (stop func()) {
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(every)
		defer t.Stop()
		start, startBytes := time.Now(), d.downloaded.Load()
		last, lastBytes := start, startBytes
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				got := d.downloaded.Load()
				rate := float64(got-lastBytes) / now.Sub(last).Seconds()
				avg := float64(got-startBytes) / now.Sub(start).Seconds()
				last, lastBytes = now, got
				present := d.present.Load()
				kv := []any{"bytes", humanBytes(present), "of", humanBytes(d.total),
					"rate", humanBytes(int64(rate)) + "/s", "files", fmt.Sprintf("%d/%d", d.filesDone.Load(), len(d.jobs))}
				if d.total > 0 {
					kv = append(kv, "percent", fmt.Sprintf("%.1f", 100*float64(present)/float64(d.total)))
					if avg > 0 {
						kv = append(kv, "eta", time.Duration(float64(d.total-present)/avg*float64(time.Second)).Round(time.Second).String())
					}
				}
				log.Info("progress", kv...)
			}
		}
	}()
	return func() { close(done); <-exited }
}
