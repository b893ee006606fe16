package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BastionOptions says how to run the binary.
type BastionOptions struct {
	// Env is added to a minimal environment. BASTION_SSH_ADDR and the host
	// key are filled in unless given.
	Env map[string]string
	// Namespaced runs the binary as PID 1 of a new PID namespace with its
	// own mount namespace: unshare --pid --fork --mount-proc --mount.
	Namespaced bool
	// Hosts are extra /etc/hosts lines (bind-mounted inside the mount
	// namespace; implies Namespaced).
	Hosts []string
	// Tmpfs are directories given a fresh tmpfs inside the mount namespace
	// (implies Namespaced): the agent's real paths.
	Tmpfs []string
	// Binds maps a path inside the mount namespace to a host directory
	// (implies Namespaced): the agent's real paths backed by test dirs, so
	// state is visible from the test and survives a restart.
	Binds map[string]string
	// Init runs the bastion under this init inside the namespace (for
	// example tini -s --), so the bastion is not PID 1 (implies Namespaced).
	Init []string
	// PathPrefix is put in front of PATH (where the fake agent lives).
	PathPrefix string
	// NoWait skips waiting for "bastion started".
	NoWait bool
}

// Bastion is a running bastion binary.
type Bastion struct {
	*Proc
	Port    int
	Addr    string
	HostKey Key
	// Pid is the bastion's own PID as seen from the test (inside a
	// namespace it is PID 1 there; unshare is its parent).
	Pid int
}

// StartBastion starts the real binary and waits for it to listen.
func StartBastion(t testing.TB, dir string, o BastionOptions) *Bastion {
	t.Helper()
	bin, _ := Build(t)
	env := map[string]string{}
	for k, v := range o.Env {
		env[k] = v
	}
	b := &Bastion{}
	// Port 0 and the address from the "bastion started" line: a port
	// picked in advance can be taken by a parallel test before the bind.
	if _, ok := env["BASTION_SSH_ADDR"]; !ok {
		env["BASTION_SSH_ADDR"] = "127.0.0.1:0"
	} else if _, p, err := splitPort(env["BASTION_SSH_ADDR"]); err == nil {
		b.Port = p
		b.Addr = "127.0.0.1:" + strconv.Itoa(p)
	}
	if _, ok := env["SSH_PRIVATE_HOST_KEY_BASE64ENCODED"]; !ok {
		b.HostKey = Keygen(t, dir, fmt.Sprintf("bastion_host_%d", time.Now().UnixNano()))
		env["SSH_PRIVATE_HOST_KEY_BASE64ENCODED"] = B64(b.HostKey.PEM(t))
		env["SSH_PUBLIC_HOST_KEY_BASE64ENCODED"] = B64(b.HostKey.Pub)
	}
	envList := BaseEnv(env)
	if o.PathPrefix != "" {
		for i, kv := range envList {
			if strings.HasPrefix(kv, "PATH=") {
				envList[i] = "PATH=" + o.PathPrefix + ":" + strings.TrimPrefix(kv, "PATH=")
			}
		}
	}

	var cmd *exec.Cmd
	if o.Namespaced || len(o.Hosts) > 0 || len(o.Tmpfs) > 0 || len(o.Binds) > 0 || len(o.Init) > 0 {
		RequireRoot(t)
		RequireTools(t, "unshare")
		script := namespaceScript(t, dir, o)
		cmd = exec.Command("unshare", "--pid", "--fork", "--mount-proc", "--mount", "--propagation", "private",
			"/bin/sh", "-c", script, "sh", bin)
	} else {
		cmd = exec.Command(bin)
	}
	cmd.Env = envList
	b.Proc = Start(t, cmd)
	b.Pid = cmd.Process.Pid
	if cmd.Path != bin {
		b.Pid = childOf(t, cmd.Process.Pid)
		if len(o.Init) > 0 {
			b.Pid = childNamed(t, b.Pid, filepath.Base(bin))
		}
	}
	if !o.NoWait {
		b.WaitStarted(t)
	}
	return b
}

// takeAddr records the listen address the bastion logged.
func (b *Bastion) takeAddr() {
	if b.Port != 0 {
		return
	}
	if l := b.Log.Find("bastion started", nil); len(l) > 0 {
		if _, p, err := splitPort(fmt.Sprint(l[0]["ssh_addr"])); err == nil {
			b.Port = p
			b.Addr = "127.0.0.1:" + strconv.Itoa(p)
		}
	}
}

// WaitStarted waits for the "bastion started" line.
func (b *Bastion) WaitStarted(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for len(b.Log.Find("bastion started", nil)) == 0 {
		select {
		case <-b.Done():
			t.Fatalf("bastion exited before starting:\n%s", b.Log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("bastion did not start:\n%s", b.Log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.takeAddr()
}

// Terminate sends SIGTERM to the bastion itself (PID 1 of its namespace).
func (b *Bastion) Terminate() { syscall.Kill(b.Pid, syscall.SIGTERM) }

// Kill sends sig to the bastion itself.
func (b *Bastion) Kill(sig syscall.Signal) { syscall.Kill(b.Pid, sig) }

func namespaceScript(t testing.TB, dir string, o BastionOptions) string {
	var s strings.Builder
	s.WriteString("set -e\n")
	if len(o.Hosts) > 0 {
		hosts := filepath.Join(dir, fmt.Sprintf("hosts-%d", time.Now().UnixNano()))
		content := "127.0.0.1 localhost\n::1 localhost ip6-localhost\n" + strings.Join(o.Hosts, "\n") + "\n"
		if err := os.WriteFile(hosts, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&s, "mount --bind %q /etc/hosts\n", hosts)
	}
	for _, d := range o.Tmpfs {
		fmt.Fprintf(&s, "mkdir -p %q && mount -t tmpfs tmpfs %q\n", d, d)
	}
	for inside, host := range o.Binds {
		fmt.Fprintf(&s, "mkdir -p %q && mount --bind %q %q\n", inside, host, inside)
	}
	init := ""
	for _, a := range o.Init {
		init += fmt.Sprintf("%q ", a)
	}
	s.WriteString("exec " + init + "\"$1\"\n")
	return s.String()
}

// childOf finds the single child of pid (unshare's forked child).
func childOf(t testing.TB, pid int) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				n, _ := strconv.Atoi(f[0])
				return n
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no child of %d", pid)
	return 0
}

// childNamed waits for a child of pid whose command is name (the setup
// script's mkdir and mount children come and go first).
func childNamed(t testing.TB, pid int, name string) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		for _, f := range strings.Fields(string(b)) {
			comm, _ := os.ReadFile("/proc/" + f + "/comm")
			if strings.TrimSpace(string(comm)) == name {
				n, _ := strconv.Atoi(f)
				return n
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no child %q of %d", name, pid)
	return 0
}

func splitPort(addr string) (string, int, error) {
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		return "", 0, fmt.Errorf("no port")
	}
	p, err := strconv.Atoi(addr[i+1:])
	return addr[:i], p, err
}
