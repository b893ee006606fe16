package entrypoint

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-dev/bastion/sshd"
)

var encodings = []*base64.Encoding{
	base64.StdEncoding, base64.RawStdEncoding,
	base64.URLEncoding, base64.RawURLEncoding,
}

// keyFormat is what a key variable holds: how its text is recognised, and
// whether it is public (a private key there is a mistake to name) or
// private (a public key there is one).
type keyFormat struct {
	recognise func([]byte) bool
	public    bool
	// list: an authorized_keys file, whose parser numbers its lines. Its
	// text comes back as written (or as the base64 decodes), leading blank
	// lines kept, so that a line number is the line the user sees; and a
	// value that is neither base64 nor recognised is read as text, so that
	// the error names its bad line.
	list bool
}

var (
	authorizedKeys = keyFormat{recognise: isAuthorizedKeysText, public: true, list: true}
	publicKey      = keyFormat{recognise: isAuthorizedKeysText, public: true}
	privateKey     = keyFormat{recognise: isPEMText}
)

// decodeText turns a key variable's value into key text. Plain text is
// taken as it is when the format recognises it (that is unambiguous: PEM
// armour and "type base64" lines are not base64 themselves). Otherwise the
// value is base64, standard or URL-safe, padded or not, with any line
// wrapping or surrounding white space. With strict, what it decodes to
// must be recognised too; otherwise the caller's parser reports the bad
// line. A file path, or a key of the wrong kind, is named as such: those
// are the usual mistakes, and "not base64" does not say what to do.
func decodeText(name, value string, f keyFormat, strict bool) ([]byte, error) {
	trimmed := []byte(strings.TrimSpace(value))
	if looksLikePath(string(trimmed)) {
		return nil, fmt.Errorf("entrypoint: %s: looks like a file path: pass the file's contents (e.g. %s=\"$(cat FILE)\")", name, name)
	}
	if err := wrongKind(name, f, trimmed); err != nil {
		return nil, err
	}
	text, written := trimmed, []byte(value)
	if !f.recognise(trimmed) {
		decoded, ok := decodeBase64(value)
		if !ok {
			var le *sshd.LineError
			if _, err := sshd.ParseAuthorizedKeys(written); f.list && errors.As(err, &le) {
				return nil, fmt.Errorf("entrypoint: %s: neither base64 (standard or URL-safe) nor key text; read as text, %w", name, le)
			}
			return nil, fmt.Errorf("entrypoint: %s: neither base64 (standard or URL-safe) nor key text", name)
		}
		written, text = decoded, bytes.TrimSpace(decoded)
		if err := wrongKind(name, f, text); err != nil {
			return nil, err
		}
	}
	if strict && !f.recognise(text) {
		return nil, fmt.Errorf("entrypoint: %s: decodes as base64 but not to the expected key format", name)
	}
	if f.list {
		return written, nil
	}
	return text, nil
}

// decodeBase64 tries each encoding on value without its white space, and
// returns what it decodes to, untrimmed.
func decodeBase64(value string) ([]byte, bool) {
	compact := strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\n' || r == '\r' {
			return -1
		}
		return r
	}, value)
	for _, enc := range encodings {
		if out, err := enc.DecodeString(compact); err == nil {
			return out, true
		}
	}
	return nil, false
}

// privateKeyMarkers are in every private key file ssh-keygen, OpenSSL and
// PuTTYgen write.
var privateKeyMarkers = [][]byte{[]byte("PRIVATE KEY-----"), []byte("PuTTY-User-Key-File-")}

// wrongKind names a private key given where public keys belong, and a
// public key given where the private host key belongs, without a word of
// the key itself.
func wrongKind(name string, f keyFormat, text []byte) error {
	if f.public {
		for _, m := range privateKeyMarkers {
			if bytes.Contains(text, m) {
				return fmt.Errorf("entrypoint: %s: holds a private key, where public keys belong: give the public key (the .pub file, or ssh-keygen -y -f KEY) and keep the private one secret", name)
			}
		}
		return nil
	}
	if _, _, _, _, err := gossh.ParseAuthorizedKey(text); err == nil && !isPEMText(text) {
		return fmt.Errorf("entrypoint: %s: holds a public key, where the private host key belongs (PEM or OpenSSH text, as bastion keygen prints it)", name)
	}
	return nil
}

// looksLikePath recognises a file name given instead of the file's
// contents. It never mistakes key text or base64 for one: a path starts
// with "/", "~", "./", "../", "$" or a drive letter, none of which key
// text or the base64 of key text starts with, or (without blanks) ends in
// a key file's name; "." is not a base64 character.
func looksLikePath(s string) bool {
	if s == "" || strings.ContainsAny(s, "\r\n") {
		return false
	}
	for _, p := range []string{"/", "~", "./", "../", "$"} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	if len(s) > 2 && s[1] == ':' && (s[2] == '\\' || s[2] == '/') && (s[0]|0x20 >= 'a' && s[0]|0x20 <= 'z') {
		return true // C:\Users\me\.ssh\id_ed25519.pub
	}
	if strings.ContainsAny(s, " \t") {
		return false
	}
	base := s[strings.LastIndexAny(s, `/\`)+1:]
	return strings.HasSuffix(base, ".pub") || strings.HasSuffix(base, ".pem") ||
		base == "authorized_keys" || strings.HasPrefix(base, "id_") && strings.Contains(s, ".")
}

// DecodeKeyText decodes a public key value the way the key variables are
// decoded: the text itself when isKey recognises it, else base64
// (standard or URL-safe, padded or not, wrapped) of text that isKey
// recognises. Errors name name, never the value. For subcommands reading
// the same values (bastion ssh-config's host key).
func DecodeKeyText(name, value string, isKey func([]byte) bool) ([]byte, error) {
	return decodeText(name, value, keyFormat{recognise: isKey, public: true}, true)
}

// isPEMText recognises PEM armour, which covers "OPENSSH PRIVATE KEY".
func isPEMText(b []byte) bool {
	return bytes.HasPrefix(b, []byte("-----BEGIN "))
}

// isAuthorizedKeysText recognises authorized_keys text by its first
// meaningful line. A bad later line is then reported by the parser with its
// line number rather than as "not base64".
func isAuthorizedKeysText(b []byte) bool {
	for _, line := range bytes.Split(b, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		_, _, _, _, err := gossh.ParseAuthorizedKey(line)
		return err == nil
	}
	// Only blank lines and comments: text, with no key in it.
	return len(b) > 0 && bytes.Contains(b, []byte("#"))
}

// DecodeAuthorizedKeys decodes an authorized_keys value exactly as
// ROOT_PUBLIC_SSH_KEY_BASE64ENCODED is decoded: the text itself, or base64
// of it. A bad line is left to sshd.ParseAuthorizedKeys, which names it:
// the text comes back as written (blank lines kept), so its line numbers
// are the user's; a value that is neither text nor base64 has its bad line
// named in the error (a *sshd.LineError inside). Errors name name, never
// the value. cmd/bastion hands it to authkeys, so the live sources read
// like the variable.
func DecodeAuthorizedKeys(name, value string) ([]byte, error) {
	return decodeText(name, value, authorizedKeys, false)
}
