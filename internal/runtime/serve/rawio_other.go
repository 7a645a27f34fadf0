//go:build !linux

package serve

import "net"

// withRawIO returns c: raw system calls are used on Linux only (see rawio_linux.go).
func withRawIO(c net.Conn) net.Conn { return c }
