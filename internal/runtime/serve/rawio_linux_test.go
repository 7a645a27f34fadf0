package serve

import (
	"net"
	"testing"
	"time"
)

// A wait that cannot start (its deadline already past, or shutdown's) still sends: the
// answer is never dropped with no error.
func TestSendAndAwaitSendsWhenTheWaitCannotStart(t *testing.T) {
	rc, _ := rawPair(t)
	_ = rc.SetReadDeadline(time.Now().Add(-time.Second))
	sent := false
	readable, err := rc.sendAndAwait(func() error { sent = true; return nil })
	if !sent || readable || err != nil {
		t.Fatalf("sent %v, readable %v, err %v; want sent, not readable, no error", sent, readable, err)
	}
}

// rawPair returns a loopback TCP connection made raw, and its other end; both are closed
// when the test ends.
func rawPair(t *testing.T) (*rawConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	rc, ok := withRawIO(a).(*rawConn)
	if !ok {
		t.Fatal("a TCP connection is not made raw")
	}
	return rc, b
}
