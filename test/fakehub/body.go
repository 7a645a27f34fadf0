package fakehub

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"time"
)

// bodyWriter counts the body bytes of one file response and applies the
// throttle and connection-cut faults. Without faults it forwards ReadFrom to the
// server's ResponseWriter so that *os.File bodies go through sendfile.
type bodyWriter struct {
	http.ResponseWriter
	record func(n int64)
	// cutAt is the body offset at which the connection is dropped, or -1.
	cutAt int64
	// mayCut is asked once, when cutAt is reached, whether to cut (a file is cut
	// once).
	mayCut      func() bool
	bytesPerSec int64
	written     int64
	start       time.Time
}

func (w *bodyWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *bodyWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *bodyWriter) Write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		chunk := p
		if w.bytesPerSec > 0 && len(chunk) > 32<<10 {
			chunk = chunk[:32<<10]
		}
		if w.cutAt >= 0 && w.written+int64(len(chunk)) > w.cutAt {
			keep := chunk[:w.cutAt-w.written]
			if w.mayCut() {
				_, _ = w.write(keep)
				w.Flush()
				// Aborting the handler makes net/http close the connection
				// without finishing the body, as a dropped connection does.
				panic(http.ErrAbortHandler)
			}
			w.cutAt = -1
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
func (w *bodyWriter) write(p []byte) (int, error) {
	w.record(int64(len(p)))
	n, err := w.ResponseWriter.Write(p)
	if n < len(p) {
		w.record(int64(n - len(p)))
	}
	w.written += int64(n)
	return n, err
}

func (w *bodyWriter) throttle() {
	if w.bytesPerSec <= 0 {
		return
	}
	due := w.start.Add(time.Duration(float64(w.written) / float64(w.bytesPerSec) * float64(time.Second)))
	if d := time.Until(due); d > 0 {
		time.Sleep(d)
	}
}

// ReadFrom keeps the sendfile path of the underlying writer when no fault is
// armed.
func (w *bodyWriter) ReadFrom(src io.Reader) (int64, error) {
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok && w.cutAt < 0 && w.bytesPerSec <= 0 {
		// As in write, count first: http.ServeContent passes the exact length
		// as an *io.LimitedReader.
		var planned int64
		if lr, ok := src.(*io.LimitedReader); ok {
			planned = lr.N
		}
		w.record(planned)
		n, err := rf.ReadFrom(src)
		w.record(n - planned)
		w.written += n
		return n, err
	}
	return io.CopyBuffer(writerOnly{w}, src, make([]byte, 32<<10))
}

// writerOnly hides ReadFrom so that io.CopyBuffer uses Write.
type writerOnly struct{ io.Writer }

// flipReader serves content with the byte at offset off inverted.
type flipReader struct {
	rs  io.ReadSeeker
	off int64
	pos int64
}

func (f *flipReader) Read(p []byte) (int, error) {
	n, err := f.rs.Read(p)
	if f.off >= f.pos && f.off < f.pos+int64(n) {
		p[f.off-f.pos] ^= 0xff
	}
	f.pos += int64(n)
	return n, err
}

func (f *flipReader) Seek(offset int64, whence int) (int64, error) {
	pos, err := f.rs.Seek(offset, whence)
	if err == nil {
		f.pos = pos
	}
	return pos, err
}

// openContent opens content held on disk, or else in memory.
func openContent(data []byte, diskPath string) (io.ReadSeeker, func(), error) {
	if diskPath == "" {
		return bytes.NewReader(data), func() {}, nil
	}
	f, err := os.Open(diskPath)
	if err != nil {
		return nil, nil, err
	}
	return f, func() { _ = f.Close() }, nil
}
