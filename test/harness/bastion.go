package harness

import (
	"bufio"
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
	// namespace it is PID 1 there; unshare is its parent). Read /proc with
	// it only while the bastion runs; signals go through Terminate and Kill.
	Pid int
	// signal reaches the bastion and nothing else: once it has exited its
	// PID can name another process (pid_max is 32768 here, and the suite
	// forks that many in minutes).
	signal func(syscall.Signal) error
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

	if !o.Namespaced && len(o.Hosts) == 0 && len(o.Tmpfs) == 0 && len(o.Binds) == 0 && len(o.Init) == 0 {
		cmd := exec.Command(bin)
		cmd.Env = envList
		b.Proc = Start(t, cmd)
		b.Pid = cmd.Process.Pid
		// os.Process signals through a pidfd and not after Wait.
		b.signal = func(sig syscall.Signal) error { return cmd.Process.Signal(sig) }
	} else {
		b.Proc, b.Pid, b.signal = startNamespaced(t, dir, bin, envList, o)
	}
	if !o.NoWait {
		b.WaitStarted(t)
	}
	return b
}

// WaitStarted waits for the "bastion started" line and records the listen
// address it gives.
func (b *Bastion) WaitStarted(t testing.TB) {
	t.Helper()
	started := b.WaitLog(t, 60*time.Second, "bastion started", nil)
	if b.Port != 0 {
		return
	}
	if _, p, err := splitPort(fmt.Sprint(started["ssh_addr"])); err == nil {
		b.Port = p
		b.Addr = "127.0.0.1:" + strconv.Itoa(p)
	}
}

// Terminate sends SIGTERM to the bastion itself (PID 1 of its namespace).
func (b *Bastion) Terminate() { b.signal(syscall.SIGTERM) }

// Kill sends sig to the bastion itself; once it has exited, to nothing.
func (b *Bastion) Kill(sig syscall.Signal) { b.signal(sig) }

// startNamespaced runs bin as PID 1 of new PID and mount namespaces (or
// under o.Init there) and returns its PID as the test sees it, and a way to
// signal it. The shell that becomes the bastion reports that PID on fd 3 and
// waits on fd 4 until the harness holds a pidfd for it, then execs: the PID
// is known even when the bastion exits at once (a refused config), without
// looking for children of unshare after the fact, and signals never reach a
// process that got the PID later.
func startNamespaced(t testing.TB, dir, bin string, env []string, o BastionOptions) (*Proc, int, func(syscall.Signal) error) {
	t.Helper()
	RequireRoot(t)
	RequireTools(t, "unshare", "mount", "umount")
	// The host's /proc stays reachable here until the report is written: a
	// process reads its own PID in the host's numbering from there.
	hostProc, err := os.MkdirTemp(dir, "hostproc-")
	if err != nil {
		t.Fatal(err)
	}
	report, reportW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer report.Close()
	ackR, ack, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer ack.Close()
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount", "--propagation", "private",
		"/bin/sh", "-c", namespaceScript(t, dir, o), "sh", bin, hostProc)
	cmd.Env = env
	cmd.ExtraFiles = []*os.File{reportW, ackR} // fds 3 and 4
	p := Start(t, cmd)
	reportW.Close()
	ackR.Close()
	report.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := bufio.NewReader(report).ReadString('\n')
	pid, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil || pid <= 0 {
		p.Wait(5 * time.Second)
		t.Fatalf("the namespace script reported no bastion PID (%q, %v):\n%s", line, err, p.Log.String())
	}
	// The shell waits for the ack, so pid is still its own here: Go holds
	// the process by a pidfd from now on, which no later process can take.
	proc, err := os.FindProcess(pid)
	if err != nil {
		t.Fatalf("the bastion (pid %d): %v", pid, err)
	}
	t.Cleanup(func() { proc.Release() }) // a signal after this is an error, never a stranger's
	if _, err := ack.Write([]byte("\n")); err != nil {
		t.Fatalf("ack to the namespace script: %v\n%s", err, p.Log.String())
	}
	return p, pid, func(sig syscall.Signal) error { return proc.Signal(sig) }
}

// namespaceScript sets up the mount namespace ($1 is the bastion, $2 the
// directory where the host's /proc stays mounted until the report) and
// execs the bastion, or o.Init with the bastion, through a shell that
// writes its PID to fd 3 and waits for a line on fd 4 first.
func namespaceScript(t testing.TB, dir string, o BastionOptions) string {
	var s strings.Builder
	s.WriteString("set -e\n")
	// As unshare --mount-proc would, but keeping the host's /proc at $2.
	s.WriteString("mount --bind /proc \"$2\"\n")
	s.WriteString("mount -t proc -o nosuid,noexec,nodev proc /proc\n")
	// The run state `bastion healthcheck` reads (/run/bastion) is each
	// namespaced bastion's own, as a container's is.
	s.WriteString("mkdir -p /run/bastion && mount -t tmpfs -o size=1m tmpfs /run/bastion\n")
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
	// The reporting shell reads /proc/self/stat of the host's /proc with a
	// builtin, so it reads its own: the PID the bastion keeps after exec.
	report := `set -e; read -r pid _ < "$1/self/stat"; umount "$1"; echo "$pid" >&3; read -r _ <&4; exec "$0" 3>&- 4<&-`
	fmt.Fprintf(&s, "exec %s/bin/sh -c '%s' \"$1\" \"$2\"\n", init, report)
	return s.String()
}

func splitPort(addr string) (string, int, error) {
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		return "", 0, fmt.Errorf("no port")
	}
	p, err := strconv.Atoi(addr[i+1:])
	return addr[:i], p, err
}
