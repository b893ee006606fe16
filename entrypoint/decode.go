package entrypoint

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"

	gossh "golang.org/x/crypto/ssh"
)

var encodings = []*base64.Encoding{
	base64.StdEncoding, base64.RawStdEncoding,
	base64.URLEncoding, base64.RawURLEncoding,
}

// decodeText turns a key variable's value into key text. Plain text is
// taken as it is when isPlain recognises it (that is unambiguous: PEM armour
// and "type base64" lines are not base64 themselves). Otherwise the value is
// base64, standard or URL-safe, padded or not, with any line wrapping or
// surrounding white space. With strict, what it decodes to must be
// recognised too; otherwise the caller's parser reports the bad line.
func decodeText(name, value string, isPlain func([]byte) bool, strict bool) ([]byte, error) {
	trimmed := []byte(strings.TrimSpace(value))
	if isPlain(trimmed) {
		return trimmed, nil
	}
	compact := strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\n' || r == '\r' {
			return -1
		}
		return r
	}, value)
	for _, enc := range encodings {
		out, err := enc.DecodeString(compact)
		if err != nil {
			continue
		}
		out = bytes.TrimSpace(out)
		if strict && !isPlain(out) {
			return nil, fmt.Errorf("entrypoint: %s: decodes as base64 but not to the expected key format", name)
		}
		return out, nil
	}
	return nil, fmt.Errorf("entrypoint: %s: neither base64 (standard or URL-safe) nor key text", name)
}

// DecodeKeyText decodes a key value the way the key variables are decoded:
// the text itself when isKey recognises it, else base64 (standard or
// URL-safe, padded or not, wrapped) of text that isKey recognises. Errors
// name name, never the value. For subcommands reading the same values
// (bastion ssh-config's host key).
func DecodeKeyText(name, value string, isKey func([]byte) bool) ([]byte, error) {
	return decodeText(name, value, isKey, true)
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
// of it. A bad line is left to sshd.ParseAuthorizedKeys, which names it.
// Errors name name, never the value. cmd/bastion hands it to authkeys, so
// the live sources read like the variable.
func DecodeAuthorizedKeys(name, value string) ([]byte, error) {
	return decodeText(name, value, isAuthorizedKeysText, false)
}
