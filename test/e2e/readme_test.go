package e2e

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/test/harness"
)

// readmeRunCommand is the first command the README gives: the local run.
func readmeRunCommand(t *testing.T) string {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join(harness.ModuleRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "```sh\n")
	if !ok {
		t.Fatal("README.md has no ```sh block")
	}
	block, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("README.md: first ```sh block is not closed")
	}
	cmd := strings.TrimSpace(block)
	if cmd == "" || strings.Contains(cmd, "\n") {
		t.Fatalf("README.md: the first block should be one command line, got %q", cmd)
	}
	return cmd
}

// TestReadmeLocalRun runs the README's first command exactly as written, in
// a network namespace of its own (so its fixed port 2222 is free) with a
// fresh HOME (so it generates the user's key), and uses the running bastion
// with the OpenSSH client and that key.
func TestReadmeLocalRun(t *testing.T) {
	t.Parallel()
	harness.RequireRoot(t)
	harness.RequireTools(t, "go", "ssh", "ssh-keygen", "unshare", "nsenter", "ip")
	command := readmeRunCommand(t)
	home := t.TempDir()

	// The Go caches are passed through so `go run` builds offline and fast.
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home}
	goenv, err := exec.Command("go", "env", "GOCACHE", "GOMODCACHE", "GOPATH", "GOFLAGS", "GOTOOLCHAIN").Output()
	if err != nil {
		t.Fatalf("go env: %v", err)
	}
	for i, name := range []string{"GOCACHE", "GOMODCACHE", "GOPATH", "GOFLAGS", "GOTOOLCHAIN"} {
		env = append(env, name+"="+strings.Split(string(goenv), "\n")[i])
	}
	// The bastion's namespace is linked to a peer namespace, another host:
	// its own address is denied like any address of the bastion's host, the
	// peer's is reachable.
	peer, link := peerNetns(t, "10.99.0.1/24", "10.99.0.2/24")
	script := "set -e; " + link + command
	cmd := exec.Command("unshare", "--net", "--fork", "--", "sh", "-c", script)
	cmd.Dir = harness.ModuleRoot(t)
	cmd.Env = env
	p := harness.Start(t, cmd)

	deadline := time.Now().Add(3 * time.Minute) // a cold `go run` compiles
	for len(p.Log.Find("bastion started", nil)) == 0 {
		select {
		case <-p.Done():
			t.Fatalf("README command exited before the bastion started:\n%s", p.Log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("bastion did not start from the README command:\n%s", p.Log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	started := p.Log.Find("bastion started", nil)[0]
	if got := fmt.Sprint(started["ssh_addr"]); got != "127.0.0.1:2222" {
		t.Errorf("ssh_addr = %q, want 127.0.0.1:2222 as the README says", got)
	}
	if !strings.Contains(p.Log.String(), "using an ephemeral ed25519 key") {
		t.Errorf("no warning about the ephemeral host key:\n%s", p.Log.String())
	}
	key := filepath.Join(home, ".ssh", "id_ed25519")
	if _, err := os.Stat(key); err != nil {
		t.Fatalf("the README command did not create the user key: %v", err)
	}

	ln := listenInNetnsPath(t, "/var/run/netns/"+peer, "10.99.0.2:0")
	harness.ServeListener(t, ln, harness.Echo)
	own := listenInNetns(t, p.Cmd.Process.Pid, "0.0.0.0:0")
	harness.ServeListener(t, own, harness.Echo)

	ssh := func(identity, dest string) (string, string, error) {
		c := exec.Command("nsenter", fmt.Sprintf("--net=/proc/%d/ns/net", p.Cmd.Process.Pid), "--",
			"ssh", "-F", "none", "-i", identity, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
			"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
			"-p", "2222", "-W", dest, "me@127.0.0.1")
		c.Env = env
		c.Stdin = strings.NewReader("hello through the README bastion\n")
		var out, errb bytes.Buffer
		c.Stdout, c.Stderr = &out, &errb
		err := c.Run()
		return out.String(), errb.String(), err
	}

	if out, stderr, err := ssh(key, ln.Addr().String()); err != nil || out != "hello through the README bastion\n" {
		t.Errorf("ssh -W %s with the README's key: out %q, err %v\n%s", ln.Addr(), out, err, stderr)
	}
	if _, stderr, err := ssh(key, "127.0.0.1:2222"); err == nil || !strings.Contains(stderr, "administratively prohibited") {
		t.Errorf("loopback through the README bastion: err %v, want administratively prohibited\n%s", err, stderr)
	}
	ownAddr := fmt.Sprintf("10.99.0.1:%d", own.Addr().(*net.TCPAddr).Port)
	if _, stderr, err := ssh(key, ownAddr); err == nil || !strings.Contains(stderr, "administratively prohibited") {
		t.Errorf("the bastion's own address %s: err %v, want administratively prohibited\n%s", ownAddr, err, stderr)
	}
	other := harness.Keygen(t, t.TempDir(), "stranger")
	if _, stderr, err := ssh(other.Path, ln.Addr().String()); err == nil || !strings.Contains(stderr, "Permission denied") {
		t.Errorf("a key that is not in ~/.ssh: err %v, want Permission denied\n%s", err, stderr)
	}

	// Ctrl-C in the terminal: SIGINT to the whole foreground group.
	syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGINT)
	if code := p.Wait(40 * time.Second); code == -1 {
		t.Fatalf("README bastion did not stop on Ctrl-C:\n%s", p.Log.String())
	}
	if len(p.Log.Find("bastion exiting", map[string]string{"code": "0"})) != 1 {
		t.Errorf("want one \"bastion exiting\" line with code 0 after Ctrl-C:\n%s", p.Log.String())
	}
}
