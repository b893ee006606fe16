package e2e

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
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
	env := append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + home}, harness.GoEnv(t)...)
	// The bastion's namespace is linked to a peer namespace, another host:
	// its own address is denied like any address of the bastion's host, the
	// peer's is reachable.
	peer, link := peerNetns(t, "10.99.0.1/24", "10.99.0.2/24")
	script := "set -e; " + link + command
	cmd := exec.Command("unshare", "--net", "--fork", "--", "sh", "-c", script)
	cmd.Dir = harness.ModuleRoot(t)
	cmd.Env = env
	p := harness.Start(t, cmd)

	started := p.WaitLog(t, 3*time.Minute, "bastion started", nil) // a cold `go run` compiles
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

// TestReadmeTryLocally runs "Trying it locally" as written: the keygen
// step, terminal 1 (the bastion) and terminal 2 (ssh -J to this machine's
// sshd on 127.0.0.1:22), in a network namespace of their own and with a
// fresh home directory; then Ctrl-C, terminal 1 again, and terminal 2
// again, which OpenSSH accepts only if the host key did not change.
func TestReadmeTryLocally(t *testing.T) {
	t.Parallel()
	harness.RequireRoot(t)
	harness.RequireTools(t, "go", "ssh", "ssh-keygen", "/usr/sbin/sshd", "unshare", "ip")
	blocks := harness.ReadmeBlocks(t, "## Trying it locally")
	if len(blocks) != 3 {
		t.Fatalf("Trying it locally: want 3 ```sh blocks (keygen, terminal 1, terminal 2), got %d", len(blocks))
	}
	keygenStep, terminal1, terminal2 := blocks[0], blocks[1], blocks[2]

	// A user with a key and a home of their own. OpenSSH finds ~ through
	// getpwuid, not $HOME, so each step runs in a mount namespace where
	// this user's home directory is the test's; the real one is bound
	// aside so that the Go caches in it stay usable.
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	home, realHome := filepath.Join(dir, "home"), filepath.Join(dir, "realhome")
	for _, d := range []string{filepath.Join(home, ".ssh"), realHome} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	me := harness.Keygen(t, filepath.Join(home, ".ssh"), "id_ed25519")
	os.WriteFile(filepath.Join(home, ".ssh", "config"), []byte("Host *\n  BatchMode yes\n  StrictHostKeyChecking accept-new\n"+
		"  GlobalKnownHostsFile /dev/null\n  ConnectTimeout 10\n"), 0o600)
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + u.HomeDir}
	for _, kv := range harness.GoEnv(t) {
		name, value, _ := strings.Cut(kv, "=")
		if rest, ok := strings.CutPrefix(value, u.HomeDir+"/"); ok {
			value = filepath.Join(realHome, rest)
		}
		env = append(env, name+"="+value)
	}

	// The machine: a network namespace with loopback, and the OpenSSH
	// server the section asks for on 127.0.0.1:22, taking the user's key.
	ns := newNetns(t)
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	targetDir := filepath.Join(dir, "target")
	os.MkdirAll(targetDir, 0o700)
	targetKey := harness.Keygen(t, targetDir, "host_ed25519")
	authorized := filepath.Join(targetDir, "authorized_keys")
	os.WriteFile(authorized, []byte(me.Pub+"\n"), 0o600)
	sshdConfig := filepath.Join(targetDir, "sshd_config")
	os.WriteFile(sshdConfig, []byte(fmt.Sprintf("Port 22\nListenAddress 127.0.0.1\nHostKey %s\nAuthorizedKeysFile %s\nPidFile none\n"+
		"UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n",
		targetKey.Path, authorized)), 0o600)
	sshd := harness.Start(t, exec.Command("ip", "netns", "exec", ns, "/usr/sbin/sshd", "-D", "-e", "-f", sshdConfig))
	if !harness.WaitSSHDListening(t, sshd, 22) {
		t.Fatalf("sshd on 127.0.0.1:22 exited:\n%s", sshd.Log.String())
	}

	// step runs a README block as the user, on that machine.
	step := func(block string) *exec.Cmd {
		script := `set -e; mount --bind "$0" "$1"; mount --bind "$2" "$0"; exec sh -c "$3"`
		cmd := exec.Command("ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private", "--",
			"sh", "-c", script, u.HomeDir, realHome, home, block)
		cmd.Dir = harness.ModuleRoot(t)
		cmd.Env = env
		return cmd
	}

	// Once: the permanent host key, private to the user.
	if out, err := step(keygenStep).CombinedOutput(); err != nil {
		t.Fatalf("keygen step: %v\n%s", err, out)
	}
	hostKeyFile := filepath.Join(home, ".ssh", "bastion_host_key.env")
	fi, err := os.Stat(hostKeyFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("keygen step left %s with %v (%v), want mode 0600", hostKeyFile, fi, err)
	}
	raw, _ := os.ReadFile(hostKeyFile)
	first, _, _ := strings.Cut(string(raw), "\n")
	_, fingerprint, ok := strings.Cut(first, "fingerprint ")
	if !ok || !strings.HasPrefix(fingerprint, "SHA256:") {
		t.Fatalf("host key file starts with %q, want its fingerprint", first)
	}

	startBastion := func() *harness.Proc {
		t.Helper()
		p := harness.Start(t, step(terminal1))
		started := p.WaitLog(t, 3*time.Minute, "bastion started", nil) // a cold `go run` compiles
		if started["ssh_addr"] != "127.0.0.1:2222" || started["host_key"] != fingerprint || started["host_key_ephemeral"] != false {
			t.Fatalf("bastion started with %v, want 127.0.0.1:2222 and the permanent key %s", started, fingerprint)
		}
		return p
	}
	jump := func(what string) {
		t.Helper()
		cmd := step(terminal2)
		cmd.Stdin = strings.NewReader("echo logged-in-as-$(id -un)-through-the-bastion\nexit\n")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "logged-in-as-"+u.Username+"-through-the-bastion") {
			t.Fatalf("%s: terminal 2 (%q): %v\n%s", what, strings.TrimSpace(terminal2), err, out)
		}
	}
	stop := func(p *harness.Proc) {
		t.Helper()
		syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGINT) // Ctrl-C
		if code := p.Wait(40 * time.Second); code == -1 {
			t.Fatalf("terminal 1 did not stop on Ctrl-C:\n%s", p.Log.String())
		}
		if len(p.Log.Find("bastion exiting", map[string]string{"code": "0"})) != 1 {
			t.Fatalf("want one \"bastion exiting\" line with code 0 after Ctrl-C:\n%s", p.Log.String())
		}
	}

	first1 := startBastion()
	jump("first start")
	first1.Log.WaitFor(t, 10*time.Second, "tunnel", map[string]string{"requested": "127.0.0.1:22", "dialed": "127.0.0.1:22"})
	// The bastion's key is now known (Debian's ssh_config hashes names).
	known := filepath.Join(home, ".ssh", "known_hosts")
	if out, err := exec.Command("ssh-keygen", "-F", "[127.0.0.1]:2222", "-f", known).CombinedOutput(); err != nil ||
		!strings.Contains(string(out), strings.Fields(harness.HostKeyPub(t, raw))[1]) {
		t.Fatalf("known_hosts after the first jump has no entry for the bastion with its key: %v\n%s", err, out)
	}
	stop(first1)

	// Restarted: the same key, so OpenSSH (StrictHostKeyChecking
	// accept-new, the entry above) goes through without a word.
	second := startBastion()
	jump("after a restart")
	stop(second)
}
