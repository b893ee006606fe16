package procfs

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ErrNoSocket means no TCP socket of this network namespace has that pair
// of endpoints (the peer went away, or is in another namespace).
var ErrNoSocket = errors.New("procfs: no such TCP socket")

// ErrNoOwner means the socket exists but no process visible here holds it.
var ErrNoOwner = errors.New("procfs: no process holds the socket")

// Peer is the process at the other end of a loopback TCP connection.
type Peer struct {
	PID  int
	UID  int      // the socket's owner, as the kernel records it
	Exe  string   // /proc/PID/exe: the executable, not what argv[0] claims
	Argv []string // /proc/PID/cmdline
	EUID int      // from /proc/PID/status
}

// TCPPeer finds the process holding the socket whose local address is
// local and remote address is remote: for a connection this process
// accepted, pass the accepted connection's remote address as local and its
// local address as remote. Both /proc/net/tcp and /proc/net/tcp6 are
// searched (a dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d).
//
// Only processes whose command name (/proc/PID/comm) is one of comms are
// looked at, when comms is not empty: the search reads the descriptors of
// every candidate, and a caller that only cares about a few programs
// should not pay for the whole machine on every connection. This process
// is never looked at: the other end of a connection it accepted is someone
// else's (or, for a connection it made to itself, not a peer to name), and
// its own descriptors are the most numerous on a busy server.
func TCPPeer(root string, local, remote netip.AddrPort, comms ...string) (Peer, error) {
	inode, uid, err := findSocket(root, local, remote)
	if err != nil {
		return Peer{}, err
	}
	pid, err := socketHolder(root, inode, comms)
	if err != nil {
		return Peer{}, err
	}
	p := Peer{PID: pid, UID: uid, EUID: -1}
	dir := filepath.Join(root, strconv.Itoa(pid))
	if p.Exe, err = os.Readlink(filepath.Join(dir, "exe")); err != nil {
		return Peer{}, fmt.Errorf("procfs: exe of %d: %w", pid, err)
	}
	cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil {
		return Peer{}, fmt.Errorf("procfs: cmdline of %d: %w", pid, err)
	}
	p.Argv = strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return Peer{}, fmt.Errorf("procfs: status of %d: %w", pid, err)
	}
	p.EUID = statusUID(status, 1)
	return p, nil
}

// statusUID returns field i of the Uid: line of /proc/PID/status (0 real,
// 1 effective, 2 saved, 3 filesystem), or -1.
func statusUID(status []byte, i int) int {
	for _, line := range bytes.Split(status, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("Uid:")); ok {
			f := strings.Fields(string(rest))
			if i < len(f) {
				if n, err := strconv.Atoi(f[i]); err == nil {
					return n
				}
			}
		}
	}
	return -1
}

// findSocket returns the inode and owner uid of the TCP socket with the
// given endpoints.
func findSocket(root string, local, remote netip.AddrPort) (inode uint64, uid int, err error) {
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	for _, table := range []string{"net/tcp", "net/tcp6"} {
		v6 := table == "net/tcp6"
		if !v6 && !local.Addr().Is4() {
			continue
		}
		f, err := os.Open(filepath.Join(root, table))
		if err != nil {
			continue // no IPv6 in this kernel
		}
		inode, uid, found, err := scanTCPTable(f, hexAddrPort(local, v6), local, remote)
		f.Close()
		if err != nil {
			return 0, 0, fmt.Errorf("procfs: %s: %w", table, err)
		}
		if found {
			return inode, uid, nil
		}
	}
	return 0, 0, ErrNoSocket
}

// scanTCPTable reads a /proc/net/tcp{,6} table for the row with the given
// endpoints. Rows in TIME_WAIT have inode 0 and are skipped. Only a row
// whose local field reads localText (the table's spelling of local) is
// parsed: the table holds every socket of the namespace, and this runs on
// each loopback connection.
func scanTCPTable(f *os.File, localText string, local, remote netip.AddrPort) (inode uint64, uid int, found bool, err error) {
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		if string(localField(sc.Bytes())) != localText { // compared without a copy
			continue
		}
		row, err := parseTCPRow(sc.Text())
		if err != nil {
			return 0, 0, false, err
		}
		if row.inode != 0 && row.local == local && row.remote == remote {
			return row.inode, row.uid, true, nil
		}
	}
	return 0, 0, false, sc.Err()
}

// localField is a row's second field ("sl local rem ..."); nil for a row
// too short to have one.
func localField(line []byte) []byte {
	f := 0
	for i := 0; i < len(line); {
		for i < len(line) && line[i] == ' ' {
			i++
		}
		start := i
		for i < len(line) && line[i] != ' ' {
			i++
		}
		if f == 1 {
			return line[start:i]
		}
		f++
	}
	return nil
}

type tcpRow struct {
	local, remote netip.AddrPort
	uid           int
	inode         uint64
}

// parseTCPRow parses one row: "sl local rem st tx:rx tr:when retr uid
// timeout inode ...". Addresses are the kernel's words in host byte order.
func parseTCPRow(line string) (tcpRow, error) {
	f := strings.Fields(line)
	if len(f) < 10 {
		return tcpRow{}, fmt.Errorf("short row %q", line)
	}
	local, err := parseHexAddrPort(f[1])
	if err != nil {
		return tcpRow{}, err
	}
	remote, err := parseHexAddrPort(f[2])
	if err != nil {
		return tcpRow{}, err
	}
	uid, err := strconv.Atoi(f[7])
	if err != nil {
		return tcpRow{}, fmt.Errorf("uid %q", f[7])
	}
	inode, err := strconv.ParseUint(f[9], 10, 64)
	if err != nil {
		return tcpRow{}, fmt.Errorf("inode %q", f[9])
	}
	return tcpRow{local: local, remote: remote, uid: uid, inode: inode}, nil
}

// hexAddrPort spells ap as the table does (parseHexAddrPort reads it):
// each 32-bit word of the address in host byte order (little-endian on
// the machines bastion runs on), in upper-case hex, then the port. In the
// tcp6 table an IPv4 address appears IPv4-mapped.
func hexAddrPort(ap netip.AddrPort, v6 bool) string {
	var raw []byte
	if v6 {
		a := ap.Addr().As16()
		raw = a[:]
	} else {
		a := ap.Addr().As4()
		raw = a[:]
	}
	words := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.LittleEndian.PutUint32(words[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	return fmt.Sprintf("%X:%04X", words, ap.Port())
}

// parseHexAddrPort reads "0100007F:0016" or the 32-digit IPv6 form: the
// address as 32-bit words in host byte order (little-endian on the
// machines bastion runs on), the port in big-endian hex. IPv4-mapped
// addresses are unmapped.
func parseHexAddrPort(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("address %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q", s)
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("address %q", s)
	}
	var ip netip.Addr
	if len(raw) == 4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], binary.LittleEndian.Uint32(raw))
		ip = netip.AddrFrom4(b)
	} else {
		var b [16]byte
		for i := 0; i < 16; i += 4 {
			binary.BigEndian.PutUint32(b[i:], binary.LittleEndian.Uint32(raw[i:]))
		}
		ip = netip.AddrFrom16(b).Unmap()
	}
	return netip.AddrPortFrom(ip, uint16(port)), nil
}

// socketHolder finds a process with a descriptor on socket inode, among
// the processes named one of comms (all, when comms is empty).
func socketHolder(root string, inode uint64, comms []string) (int, error) {
	want := "socket:[" + strconv.FormatUint(inode, 10) + "]"
	procs, err := pids(root)
	if err != nil {
		return 0, err
	}
	self := os.Getpid()
	for _, pid := range procs {
		if pid == self {
			continue
		}
		dir := filepath.Join(root, strconv.Itoa(pid))
		if len(comms) > 0 {
			comm, err := os.ReadFile(filepath.Join(dir, "comm"))
			if err != nil || !slices.Contains(comms, strings.TrimSuffix(string(comm), "\n")) {
				continue
			}
		}
		fdDir := filepath.Join(dir, "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue // gone, or not ours to read
		}
		for _, fd := range fds {
			if link, err := os.Readlink(filepath.Join(fdDir, fd.Name())); err == nil && link == want {
				return pid, nil
			}
		}
	}
	return 0, ErrNoOwner
}
