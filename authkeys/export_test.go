package authkeys

import "github.com/bastion-dev/bastion/sshd"

// ParseVersion exposes parse to the external tests, which use the real
// decoder from entrypoint (an import authkeys itself must not have).
func ParseVersion(decode func(name, value string) ([]byte, error), variable string, content []byte) ([]sshd.AuthorizedKey, *RejectError) {
	return parse(decode, variable, reading{content: content})
}
