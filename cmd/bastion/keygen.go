package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"strings"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// keygen prints a new ed25519 host key as the values of
// SSH_PRIVATE_HOST_KEY_BASE64ENCODED and SSH_PUBLIC_HOST_KEY_BASE64ENCODED,
// ready to paste into Secrets Manager. Every other line is a comment, so
// the output is an environment file too (docker run --env-file, or
// "set -a; . FILE" in a shell).
func keygen(w, errw io.Writer, args []string) int {
	host := "bastion"
	if len(args) > 1 {
		fmt.Fprintln(errw, "usage: bastion keygen [HOST]")
		return exitUsage
	}
	if len(args) == 1 {
		host = args[0]
		// A mistyped option is not a host name.
		if strings.HasPrefix(host, "-") || strings.ContainsAny(host, " \t,") || host == "" {
			fmt.Fprintf(errw, "bastion keygen: %q is not a host name (usage: bastion keygen [HOST])\n", host)
			return exitUsage
		}
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		fmt.Fprintf(errw, "bastion keygen: %v\n", err)
		return 1
	}
	block, err := gossh.MarshalPrivateKey(priv, "bastion host key")
	if err != nil {
		fmt.Fprintf(errw, "bastion keygen: %v\n", err)
		return 1
	}
	sshPub, err := gossh.NewPublicKey(pub)
	if err != nil {
		fmt.Fprintf(errw, "bastion keygen: %v\n", err)
		return 1
	}
	authLine := strings.TrimSpace(string(gossh.MarshalAuthorizedKey(sshPub)))
	fmt.Fprintf(w, "# bastion host key, fingerprint %s\n", gossh.FingerprintSHA256(sshPub))
	fmt.Fprintf(w, "SSH_PRIVATE_HOST_KEY_BASE64ENCODED=%s\n", base64.StdEncoding.EncodeToString(pem.EncodeToMemory(block)))
	fmt.Fprintf(w, "SSH_PUBLIC_HOST_KEY_BASE64ENCODED=%s\n", base64.StdEncoding.EncodeToString([]byte(authLine+"\n")))
	fmt.Fprintf(w, "# known_hosts line for clients (with HostKeyAlias %s):\n", host)
	fmt.Fprintf(w, "# %s\n", knownhosts.Line([]string{host}, sshPub))
	return 0
}
