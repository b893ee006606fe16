package sshd

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// startSlowEcho echoes each connection through a 4 KiB receive buffer in
// 512-byte reads, so that bastion's writes to it fill the socket and meet
// EAGAIN and short writes.
func startSlowEcho(t *testing.T) *echoServer {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			// Inherited by accepted sockets; set before listen so the
			// window is small from the handshake on.
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	e := &echoServer{addr: ln.Addr().String(), port: ln.Addr().(*net.TCPAddr).Port}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.CopyBuffer(c, struct{ io.Reader }{c}, make([]byte, 512))
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return e
}

// TestForwardSlowTarget sends 16 MiB each way through a target that reads
// slowly: every byte arrives, in order, both ways, and the audit line
// counts them.
func TestForwardSlowTarget(t *testing.T) {
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{Policy: loopbackPolicy(t)})
	c := ts.mustDial(t, "root", testSigner(t, "alice_ed25519"))
	e := startSlowEcho(t)
	ch, err := openDirect(c, "127.0.0.1", uint32(e.port))
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	const size = 16 << 20
	payload := make([]byte, size)
	rand.Read(payload)
	werr := make(chan error, 1)
	go func() {
		_, err := ch.Write(payload)
		if err == nil {
			err = ch.CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(ch)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if len(got) != size || !bytes.Equal(got, payload) {
		t.Fatalf("echo: %d bytes, sha256 %x; sent %d, sha256 %x", len(got), sha256.Sum256(got), size, sha256.Sum256(payload))
	}
	ts.log.WaitFor(t, 5*time.Second, "tunnel", map[string]string{"bytes_up": fmt.Sprint(size), "bytes_down": fmt.Sprint(size), "close_reason": "eof both ways"})
}
