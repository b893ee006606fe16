package sshd

import (
	"net"
	"net/netip"
	"time"
)

// deadlineFreeConn ignores deadlines: gliderlabs resets them on every read
// and write, which costs a timer update per packet, and bastion enforces its
// handshake deadline and keepalive with timers of its own.
type deadlineFreeConn struct{ net.Conn }

func (deadlineFreeConn) SetDeadline(time.Time) error      { return nil }
func (deadlineFreeConn) SetReadDeadline(time.Time) error  { return nil }
func (deadlineFreeConn) SetWriteDeadline(time.Time) error { return nil }

// readBufConn serves reads from a pooled buffer that one non-blocking read
// of up to 128 KiB fills. x/crypto reads each packet through a 4 KiB
// bufio.Reader: two or three read calls per 32 KiB packet without it. The
// buffer goes back to the pool once drained, so an idle connection holds
// none. Only the transport's read loop reads. Writes (x/crypto serialises
// them) go through the same socket's raw writes.
type readBufConn struct {
	deadlineFreeConn
	sk      *socket
	pending []byte
}

func (c *readBufConn) Write(p []byte) (int, error) { return c.sk.Write(p) }

func (c *readBufConn) Read(p []byte) (int, error) {
	if len(c.pending) == 0 {
		buf, err := c.sk.read()
		if err != nil {
			return 0, err
		}
		c.pending = buf
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	if len(c.pending) == 0 {
		c.sk.release()
	}
	return n, nil
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
