package procfs

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

func TestParseHexAddrPort(t *testing.T) {
	tests := []struct {
		in, want string
		bad      bool
	}{
		{in: "0100007F:0016", want: "127.0.0.1:22"},
		{in: "00000000:0000", want: "0.0.0.0:0"},
		{in: "0202A8C0:1F90", want: "192.168.2.2:8080"},
		{in: "00000000000000000000000001000000:9098", want: "[::1]:37016"},
		{in: "0000000000000000FFFF00000100007F:0016", want: "127.0.0.1:22"}, // ::ffff:127.0.0.1
		{in: "B80D0120000000000000000001000000:01BB", want: "[2001:db8::1]:443"},
		{in: "0100007F", bad: true},
		{in: "0100007:0016", bad: true},
		{in: "0100007F:FFFFF", bad: true},
		{in: "zz00007F:0016", bad: true},
		{in: "0100007F00:0016", bad: true},
	}
	for _, tt := range tests {
		got, err := parseHexAddrPort(tt.in)
		if tt.bad {
			if err == nil {
				t.Errorf("parseHexAddrPort(%q) = %v, want error", tt.in, got)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("parseHexAddrPort(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
		// And back: the spelling the table scan looks for.
		if back := hexAddrPort(got, len(tt.in) > len("0100007F:0016")); back != tt.in {
			t.Errorf("hexAddrPort(%v) = %q, want %q", got, back, tt.in)
		}
	}
}

func TestLocalField(t *testing.T) {
	for line, want := range map[string]string{
		"   0: 0100007F:A5E9 0100007F:0016 01": "0100007F:A5E9",
		"0: 0100007F:A5E9":                     "0100007F:A5E9",
		"  sl  local_address rem_address":      "local_address",
		"   0:":                                "",
		"":                                     "",
	} {
		if got := string(localField([]byte(line))); got != want {
			t.Errorf("localField(%q) = %q, want %q", line, got, want)
		}
	}
}

func TestParseTCPRow(t *testing.T) {
	row, err := parseTCPRow("   0: 0100007F:A5E9 0100007F:0016 01 00000000:00000000 00:00000000 00000000  1000        0 200527 2 00000000467c10e5 100 0 0 10 0")
	if err != nil {
		t.Fatal(err)
	}
	if row.local.String() != "127.0.0.1:42473" || row.remote.String() != "127.0.0.1:22" || row.uid != 1000 || row.inode != 200527 {
		t.Errorf("row = %+v", row)
	}
	for _, bad := range []string{"", "0: 0100007F:A5E9", "0: x y 01 0:0 0:0 0 uid 0 inode"} {
		if _, err := parseTCPRow(bad); err == nil {
			t.Errorf("parseTCPRow(%q): no error", bad)
		}
	}
}

// TestTCPPeerFindsTheDialer: a child process dials a listener of this test;
// the accepted connection's peer is found to be that child, with its exe,
// argv and uid.
func TestTCPPeerFindsTheDialer(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "tcp6" {
				addr = "[::1]:0"
			}
			ln, err := net.Listen(network, addr)
			if err != nil {
				t.Fatalf("no %s loopback: %v", network, err)
			}
			defer ln.Close()
			// bash's /dev/tcp holds the socket open while it reads stdin.
			port := ln.Addr().(*net.TCPAddr).Port
			host := "127.0.0.1"
			if network == "tcp6" {
				host = "::1"
			}
			cmd := exec.Command("bash", "-c", `exec 3<>/dev/tcp/$0/$1; read line; echo done`, host, itoa(port), "extra-arg")
			stdin, _ := cmd.StdinPipe()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { stdin.Close(); cmd.Wait() }() // once more is harmless
			c, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
			local := c.LocalAddr().(*net.TCPAddr).AddrPort()
			p, err := TCPPeer("/proc", remote, local)
			if err != nil {
				t.Fatal(err)
			}
			bash, _ := exec.LookPath("bash")
			real, _ := os.Readlink("/proc/" + itoa(cmd.Process.Pid) + "/exe")
			if p.PID != cmd.Process.Pid || p.Exe != real || !strings.HasSuffix(bash, "bash") {
				t.Errorf("peer = %+v, want pid %d exe %s", p, cmd.Process.Pid, real)
			}
			if len(p.Argv) != 6 || p.Argv[len(p.Argv)-1] != "extra-arg" {
				t.Errorf("argv = %q", p.Argv)
			}
			if p.UID != os.Geteuid() || p.EUID != os.Geteuid() {
				t.Errorf("uid %d euid %d, want %d", p.UID, p.EUID, os.Geteuid())
			}
			// Looking only among processes of other names finds none;
			// among bash's, the same one.
			if _, err := TCPPeer("/proc", remote, local, "no-such-comm"); err != ErrNoOwner {
				t.Errorf("among other names: err %v, want ErrNoOwner", err)
			}
			if q, err := TCPPeer("/proc", remote, local, "no-such-comm", "bash"); err != nil || q.PID != p.PID {
				t.Errorf("among bash's: %+v, %v", q, err)
			}
			// The same endpoints the other way round are not a socket.
			if _, err := TCPPeer("/proc", local, netip.AddrPortFrom(remote.Addr(), remote.Port()+1)); err != ErrNoSocket {
				t.Errorf("bogus endpoints: err %v, want ErrNoSocket", err)
			}
			// A connection this process made to itself names no peer.
			selfDial, err := net.Dial(network, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer selfDial.Close()
			self, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer self.Close()
			if q, err := TCPPeer("/proc", self.RemoteAddr().(*net.TCPAddr).AddrPort(), self.LocalAddr().(*net.TCPAddr).AddrPort()); err != ErrNoOwner {
				t.Errorf("own connection: %+v, %v; want ErrNoOwner", q, err)
			}
			// Once the dialer is gone, its end belongs to no process.
			stdin.Close()
			if err := cmd.Wait(); err != nil {
				t.Fatal(err)
			}
			if q, err := TCPPeer("/proc", remote, local); err != ErrNoOwner && err != ErrNoSocket {
				t.Errorf("dialer gone: %+v, %v; want ErrNoOwner or ErrNoSocket", q, err)
			}
		})
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
