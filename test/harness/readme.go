package harness

import (
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// What the tests that run the README's commands as written share.

// ReadmeBlocks returns the ```sh blocks of the README section that
// starts with heading, in order.
func ReadmeBlocks(t testing.TB, heading string) []string {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join(ModuleRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("README.md has no section %q", heading)
	}
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	var blocks []string
	for {
		_, rest, ok := strings.Cut(section, "```sh\n")
		if !ok {
			return blocks
		}
		block, after, ok := strings.Cut(rest, "```")
		if !ok {
			t.Fatalf("README.md %q: a ```sh block is not closed", heading)
		}
		blocks = append(blocks, block)
		section = after
	}
}

// GoEnv is the Go toolchain's environment for `go run` under another HOME:
// the caches stay where they are, so the README's commands build offline.
func GoEnv(t testing.TB) []string {
	t.Helper()
	names := []string{"GOCACHE", "GOMODCACHE", "GOPATH", "GOFLAGS", "GOTOOLCHAIN"}
	out, err := exec.Command("go", append([]string{"env"}, names...)...).Output()
	if err != nil {
		t.Fatalf("go env: %v", err)
	}
	values := strings.Split(string(out), "\n")
	var env []string
	for i, name := range names {
		env = append(env, name+"="+values[i])
	}
	return env
}

// HostKeyPub is the public key line of a bastion keygen environment file.
func HostKeyPub(t testing.TB, envFile []byte) string {
	t.Helper()
	for _, line := range strings.Split(string(envFile), "\n") {
		if v, ok := strings.CutPrefix(line, "SSH_PUBLIC_HOST_KEY_BASE64ENCODED="); ok {
			pub, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				t.Fatal(err)
			}
			return strings.TrimSpace(string(pub))
		}
	}
	t.Fatal("no SSH_PUBLIC_HOST_KEY_BASE64ENCODED in the host key file")
	return ""
}
