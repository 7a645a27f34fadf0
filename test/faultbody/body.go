// Package faultbody serves test files the way the test doubles of object stores need:
// counting the body bytes sent, and on demand throttling them, cutting the connection
// after some bytes, or flipping one byte, while keeping the sendfile path when no fault is
// armed. It is shared by test/fakehub and test/fakegcs.
package faultbody

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"time"
)

// Writer counts the body bytes of one file response and applies the throttle and
// connection-cut faults. Without faults it forwards ReadFrom to the server's
// ResponseWriter so that *os.File bodies go through sendfile.
type Writer struct {
	http.ResponseWriter
	// Record is told every count of bytes sent (negative to correct a short write).
	Record func(n int64)
	// CutAt is the body offset at which the connection is dropped, or -1.
	CutAt int64
	// MayCut is asked once, when CutAt is reached, whether to cut (a file is cut once).
	MayCut func() bool
	// BytesPerSec throttles the body; 0 for no limit.
	BytesPerSec int64
	// Start is when the response began, the throttle's reference.
	Start   time.Time
	written int64
}

func (w *Writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *Writer) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *Writer) Write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		chunk := p
		if w.BytesPerSec > 0 && len(chunk) > 32<<10 {
			chunk = chunk[:32<<10]
		}
		if w.CutAt >= 0 && w.written+int64(len(chunk)) > w.CutAt {
			keep := chunk[:w.CutAt-w.written]
			if w.MayCut() {
				_, _ = w.write(keep)
				w.Flush()
				// Aborting the handler makes net/http close the connection
				// without finishing the body, as a dropped connection does.
				panic(http.ErrAbortHandler)
			}
			w.CutAt = -1
		}
		n, err := w.write(chunk)
		total += n
		if err != nil {
			return total, err
		}
		p = p[n:]
		w.throttle()
	}
	return total, nil
}

// write counts p before writing it, so that a client that has read the whole
// body finds it counted, and corrects the count after a short write.
func (w *Writer) write(p []byte) (int, error) {
	w.Record(int64(len(p)))
	n, err := w.ResponseWriter.Write(p)
	if n < len(p) {
		w.Record(int64(n - len(p)))
	}
	w.written += int64(n)
	return n, err
}

func (w *Writer) throttle() {
	if w.BytesPerSec <= 0 {
		return
	}
	due := w.Start.Add(time.Duration(float64(w.written) / float64(w.BytesPerSec) * float64(time.Second)))
	if d := time.Until(due); d > 0 {
		time.Sleep(d)
	}
}

// ReadFrom keeps the sendfile path of the underlying writer when no fault is
// armed.
func (w *Writer) ReadFrom(src io.Reader) (int64, error) {
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok && w.CutAt < 0 && w.BytesPerSec <= 0 {
		// As in write, count first: http.ServeContent passes the exact length
		// as an *io.LimitedReader.
		var planned int64
		if lr, ok := src.(*io.LimitedReader); ok {
			planned = lr.N
		}
		w.Record(planned)
		n, err := rf.ReadFrom(src)
		w.Record(n - planned)
		w.written += n
		return n, err
	}
	return io.CopyBuffer(writerOnly{w}, src, make([]byte, 32<<10))
}

// writerOnly hides ReadFrom so that io.CopyBuffer uses Write.
type writerOnly struct{ io.Writer }

// FlipReader serves RS with the byte at offset Off inverted (a corrupt copy).
type FlipReader struct {
	RS  io.ReadSeeker
	Off int64
	pos int64
}

func (f *FlipReader) Read(p []byte) (int, error) {
	n, err := f.RS.Read(p)
	if f.Off >= f.pos && f.Off < f.pos+int64(n) {
		p[f.Off-f.pos] ^= 0xff
	}
	f.pos += int64(n)
	return n, err
}

func (f *FlipReader) Seek(offset int64, whence int) (int64, error) {
	pos, err := f.RS.Seek(offset, whence)
	if err == nil {
		f.pos = pos
	}
	return pos, err
}

// Open opens content held on disk (diskPath), or else in memory (data); call done after.
func Open(data []byte, diskPath string) (io.ReadSeeker, func(), error) {
	if diskPath == "" {
		return bytes.NewReader(data), func() {}, nil
	}
	f, err := os.Open(diskPath)
	if err != nil {
		return nil, nil, err
	}
	return f, func() { _ = f.Close() }, nil
}
