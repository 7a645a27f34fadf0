package serve

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// Reads and writes on the fast path's sockets are made with raw system calls, through the
// socket's RawConn so that Go's netpoller still does the waiting (and deadlines and Close
// still interrupt it). A socket Go opened is non-blocking, so these calls never block; what
// the raw call saves is the scheduler's bookkeeping around a system call. Where system calls
// are slow (a virtual machine: the benchmark box spends over 10 µs in a loopback write),
// every read and write outlasts the 20 µs sysmon tick: the P is handed to another thread
// on each one, and sysmon, which keeps finding such Ps, never slows down. That churn cost the
// runtime about a quarter of its CPU (sysmon's sleeps, futex wake-ups, idle threads looking
// for work) in the benchmark's profile.
//
// What this gives up: a raw write holds its P while the kernel copies (bounded by the
// socket's buffer, as the socket is non-blocking). The race detector and the sanitizers
// still see the kernel read and write the buffers: Read and Write tell them, as package
// syscall does (rawio_race.go, rawio_msan.go, rawio_asan.go).

// rawConn is a net.Conn whose Read and Write use raw system calls.
type rawConn struct {
	net.Conn // deadlines, Close, addresses
	rc       syscall.RawConn

	// The callbacks and their arguments, made once per connection so that a read or a
	// write allocates nothing. A read and a write may run at once (separate fields).
	readFn, writeFn func(fd uintptr) bool
	rp, wp          []byte
	rn, wn          int
	rerr, werr      syscall.Errno

	// sendAndAwait's state.
	awaitFn func(fd uintptr) bool
	send    func() error
	sendErr error
	sent    bool
}

// withRawIO returns c with raw reads and writes, or c itself where its socket is not
// reachable (not a TCP or Unix socket).
func withRawIO(c net.Conn) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawConn{Conn: c, rc: rc}
	r.readFn, r.writeFn, r.awaitFn = r.doRead, r.doWrite, r.doAwait
	return r
}

// sendAndAwait calls send, which writes a message on c, and waits until c is readable: the
// reply, or the end of the connection, has arrived. Go's Read tries a read before it waits,
// and on a message just sent that read finds nothing: one system call wasted per exchange.
// A RawConn's wait forgets readiness from before it began, so waiting first is safe only
// for data that cannot arrive before the wait does, as a reply cannot come before its
// message: send runs inside the wait. The end of the connection can, though (the peer
// closed it while it was idle), and a pipelined message too: callers bound the wait with a
// read deadline and then read anyway. readable is false when the wait failed (deadline,
// close), which the read that follows then reports; err is send's. send always runs, also
// when the wait could not even start (a deadline already past, shutdown).
func (c *rawConn) sendAndAwait(send func() error) (readable bool, err error) {
	c.send, c.sendErr, c.sent = send, nil, false
	werr := c.rc.Read(c.awaitFn)
	if !c.sent {
		c.sendErr = send()
	}
	c.send = nil
	return werr == nil && c.sendErr == nil, c.sendErr
}

func (c *rawConn) doAwait(uintptr) bool {
	if c.sent {
		return true // readable
	}
	c.sent = true
	c.sendErr = c.send()
	return c.sendErr != nil
}

func (c *rawConn) doRead(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(c.rp))), uintptr(len(c.rp)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // the netpoller waits for the socket to be readable
		}
		c.rn, c.rerr = int(n), e
		return true
	}
}

func (c *rawConn) doWrite(fd uintptr) bool {
	for len(c.wp) > 0 {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(c.wp))), uintptr(len(c.wp)))
		switch {
		case e == 0 && n == 0:
			c.werr = syscall.EIO // a stream socket does not do this; never spin on it
			return true
		case e == 0:
			c.wn += int(n)
			c.wp = c.wp[n:]
		case e == syscall.EINTR:
		case e == syscall.EAGAIN:
			return false // the netpoller waits for room in the socket's buffer
		default:
			c.werr = e
			return true
		}
	}
	return true
}

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rp, c.rn, c.rerr = p, 0, 0
	err := c.rc.Read(c.readFn)
	c.rp = nil
	switch {
	case err != nil: // closed, or past the read deadline
		return 0, renameOp(err, "read")
	case c.rerr != 0:
		return 0, c.opError("read", c.rerr)
	}
	rawReadDone(p[:c.rn])
	if c.rn == 0 {
		return 0, io.EOF
	}
	return c.rn, nil
}

func (c *rawConn) Write(p []byte) (int, error) {
	c.wp, c.wn, c.werr = p, 0, 0
	rawWriteStart()
	err := c.rc.Write(c.writeFn)
	c.wp = nil
	rawWriteDone(p[:c.wn])
	switch {
	case err != nil:
		return c.wn, renameOp(err, "write")
	case c.werr != 0:
		return c.wn, c.opError("write", c.werr)
	}
	return c.wn, nil
}

// renameOp words an error of the RawConn ("raw-read") as package net's Read would.
func renameOp(err error, op string) error {
	var oe *net.OpError
	if errors.As(err, &oe) { // RawConn returns it unwrapped
		e := *oe
		e.Op = op
		return &e
	}
	return err
}

// opError words a failed call as package net does.
func (c *rawConn) opError(op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError(op, errno)}
}

// CloseWrite half-closes a TCP connection (net/http does, before closing after an error).
func (c *rawConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
