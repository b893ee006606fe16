// Package sktest makes FIDO security-key signatures in software, for tests:
// a real authenticator cannot be told to leave out the touch or to claim a
// user verification, so tests that check how a server treats those flags
// build the signature themselves. It is imported only by tests.
package sktest

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"strings"

	gossh "golang.org/x/crypto/ssh"
)

// Signature flags an authenticator sets (OpenSSH PROTOCOL.u2f).
const (
	UserPresence     byte = 0x01
	UserVerification byte = 0x04
)

// Application is what ssh-keygen -t ed25519-sk uses by default.
const Application = "ssh:"

// Signer is an sk-ssh-ed25519@openssh.com key whose signatures carry Flags.
type Signer struct {
	Flags   byte
	priv    ed25519.PrivateKey
	pub     gossh.PublicKey
	counter uint32
}

// New makes a fresh key that signs with flags.
func New(flags byte) (*Signer, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	wire := gossh.Marshal(struct {
		Name        string
		Key         []byte
		Application string
	}{gossh.KeyAlgoSKED25519, pub, Application})
	pk, err := gossh.ParsePublicKey(wire)
	if err != nil {
		return nil, err
	}
	return &Signer{Flags: flags, priv: priv, pub: pk}, nil
}

// PublicKey is the sk-ssh-ed25519@openssh.com public key.
func (s *Signer) PublicKey() gossh.PublicKey { return s.pub }

// AuthorizedKey is the key as an authorized_keys line, without options.
func (s *Signer) AuthorizedKey() string {
	return strings.TrimSpace(string(gossh.MarshalAuthorizedKey(s.pub)))
}

// Sign signs data the way an authenticator does: over the application's
// hash, the flags, a counter and the data's hash.
func (s *Signer) Sign(_ io.Reader, data []byte) (*gossh.Signature, error) {
	s.counter++
	app := sha256.Sum256([]byte(Application))
	msg := sha256.Sum256(data)
	signed := make([]byte, 0, 32+1+4+32)
	signed = append(signed, app[:]...)
	signed = append(signed, s.Flags)
	signed = binary.BigEndian.AppendUint32(signed, s.counter)
	signed = append(signed, msg[:]...)
	return &gossh.Signature{
		Format: gossh.KeyAlgoSKED25519,
		Blob:   ed25519.Sign(s.priv, signed),
		Rest: gossh.Marshal(struct {
			Flags   byte
			Counter uint32
		}{s.Flags, s.counter}),
	}, nil
}
