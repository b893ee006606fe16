package sshd

import (
	"bytes"
	"errors"
	"net"
	"slices"
	"strings"

	gossh "golang.org/x/crypto/ssh"
)

// Client compatibility. Negotiation takes the client's first choice that
// the server also offers, so offering older algorithms to everyone would
// move modern clients off AES-GCM (OpenSSH lists chacha20-poly1305 and the
// ctr modes before it). Like OpenSSH's compat.c, which keys behaviour on
// the peer's identification string, bastion reads the client's
// identification before it sends its algorithm lists and widens them only
// for the clients that need it. A client that lies about its name gets the
// wider list, which is still free of known weaknesses (ctr and chacha20
// under strict key exchange, SHA-2 MACs); SHA-1 stays refused for everyone.

// legacyClients are identification prefixes of widely used clients that
// implement neither AES-GCM nor the encrypt-then-MAC modes: Dropbear
// (chacha20-poly1305, aes-ctr), paramiko 2.x (aes-ctr/cbc, hmac-sha2) and
// libssh2 1.10 (aes-ctr, hmac-sha2).
var legacyClients = []string{"SSH-2.0-dropbear", "SSH-2.0-paramiko_", "SSH-2.0-libssh2_"}

// LegacyCiphers and LegacyMACs are added to the offer for legacyClients.
var (
	LegacyCiphers = []string{gossh.CipherChaCha20Poly1305, gossh.CipherAES128CTR, gossh.CipherAES192CTR, gossh.CipherAES256CTR}
	LegacyMACs    = []string{gossh.HMACSHA256, gossh.HMACSHA512}
)

// needsLegacyAlgorithms reports whether a client identifying as version
// gets the wider offer.
func needsLegacyAlgorithms(version string) bool {
	for _, p := range legacyClients {
		if strings.HasPrefix(version, p) {
			return true
		}
	}
	return false
}

// algorithmsFor returns the ciphers and MACs offered to a client.
func algorithmsFor(version string) (ciphers, macs []string) {
	if !needsLegacyAlgorithms(version) {
		return Ciphers, MACs
	}
	return union(Ciphers, LegacyCiphers), union(MACs, LegacyMACs)
}

func union(a, b []string) []string {
	out := append([]string(nil), a...)
	for _, s := range b {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// The identification exchange (RFC 4253 section 4.2) done ahead of x/crypto.
const (
	maxIdentLine  = 255  // RFC 4253's limit for the identification line
	maxIdentBytes = 8192 // the line and any lines before it
)

var errNoIdent = errors.New("no SSH identification line")

// readIdent reads from c until a whole line starting with "SSH-" has
// arrived, and returns that line (without CR LF) and everything read, for
// x/crypto to read again.
func readIdent(c net.Conn) (ident string, read []byte, err error) {
	buf := make([]byte, 0, 256)
	chunk := make([]byte, 512)
	lineStart := 0
	for len(buf) < maxIdentBytes {
		n, err := c.Read(chunk)
		buf = append(buf, chunk[:n]...)
		for {
			nl := bytes.IndexByte(buf[lineStart:], '\n')
			if nl < 0 {
				break
			}
			line := bytes.TrimSuffix(buf[lineStart:lineStart+nl], []byte("\r"))
			if bytes.HasPrefix(line, []byte("SSH-")) {
				return string(line), buf, nil
			}
			lineStart += nl + 1
		}
		if len(buf)-lineStart > maxIdentLine {
			return "", buf, errNoIdent
		}
		if err != nil {
			return "", buf, err
		}
	}
	return "", buf, errNoIdent
}

// identConn hands x/crypto a connection whose identification exchange has
// already happened: bastion's own line was sent (x/crypto's identical
// first write is dropped) and the client's bytes read so far are read again.
type identConn struct {
	net.Conn
	replay []byte // read by x/crypto's read loop only
	sent   []byte // bastion's identification, already on the wire; written to by x/crypto's handshake only
}

func (c *identConn) Read(p []byte) (int, error) {
	if len(c.replay) > 0 {
		n := copy(p, c.replay)
		c.replay = c.replay[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *identConn) Write(p []byte) (int, error) {
	if c.sent != nil {
		sent := c.sent
		c.sent = nil
		if bytes.Equal(p, sent) {
			return len(p), nil
		}
	}
	return c.Conn.Write(p)
}
