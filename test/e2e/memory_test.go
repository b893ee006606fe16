package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/test/harness"
)

// memoryCgroup makes a memory cgroup limited to limit bytes (no swap) for
// this test, under the test's own cgroup, v1 or v2, and returns the path of
// its cgroup.procs. Processes left in it are killed at cleanup.
func memoryCgroup(t *testing.T, limit int64) string {
	t.Helper()
	harness.RequireRoot(t)
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("bastion-e2e-%d-%d", os.Getpid(), netnsSeq.Add(1))
	var dir string
	// In order: cgroup v1 refuses a memsw limit below the memory limit, so
	// the memory limit goes first.
	var files [][2]string
	for _, line := range strings.Split(strings.TrimSpace(string(self)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		switch {
		case f[1] == "memory" || strings.Contains(","+f[1]+",", ",memory,"):
			dir = filepath.Join("/sys/fs/cgroup/memory", f[2], name)
			files = [][2]string{{"memory.limit_in_bytes", fmt.Sprint(limit)}, {"memory.memsw.limit_in_bytes", fmt.Sprint(limit)}}
		case f[0] == "0" && f[1] == "" && dir == "":
			if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
				dir = filepath.Join("/sys/fs/cgroup", f[2], name)
				files = [][2]string{{"memory.max", fmt.Sprint(limit)}, {"memory.swap.max", "0"}}
			}
		}
	}
	if dir == "" {
		t.Fatalf("no memory cgroup controller found in /proc/self/cgroup:\n%s", self)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("make memory cgroup: %v", err)
	}
	t.Cleanup(func() {
		for i := 0; i < 50; i++ {
			b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			pids := strings.Fields(string(b))
			if len(pids) == 0 {
				break
			}
			for _, p := range pids {
				n, _ := strconv.Atoi(p)
				syscall.Kill(n, syscall.SIGKILL)
			}
			time.Sleep(20 * time.Millisecond)
		}
		os.Remove(dir)
	})
	for _, fv := range files {
		f, v := fv[0], fv[1]
		path := filepath.Join(dir, f)
		if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
			if f == "memory.memsw.limit_in_bytes" && os.IsNotExist(err) {
				continue // swap accounting off: nothing to limit
			}
			t.Fatalf("write %s: %v", path, err)
		}
	}
	return filepath.Join(dir, "cgroup.procs")
}

func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("bastion %d has exited (killed by the OOM killer?): %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("bastion %d has exited (killed by the OOM killer?)", pid)
	return 0
}

// sinkNeverReads accepts connections and never reads them, with a small
// receive buffer so that what a tunnel carries stays in the bastion.
func sinkNeverReads(t *testing.T) net.Listener {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		c.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return err
	}}
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	return ln
}

func tunnelflood(t *testing.T) string {
	t.Helper()
	return harness.BuildTool(t, "tunnelflood", func(out string) *exec.Cmd {
		cmd := exec.Command("go", "build", "-o", out, "./test/tunnelflood")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		return cmd
	})
}

type flood struct {
	p     *exec.Cmd
	stdin io.WriteCloser
	lines chan map[string]any
}

func startFlood(t *testing.T, b *memBastion, key harness.Key, dest string, conns, tunnels int) *flood {
	t.Helper()
	cmd := exec.Command(tunnelflood(t), "-addr", b.addr, "-key", key.Path, "-hostkey", b.hostKey.Pub, "-dest", dest,
		"-conns", fmt.Sprint(conns), "-tunnels", fmt.Sprint(tunnels))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f := &flood{p: cmd, stdin: stdin, lines: make(chan map[string]any, 4)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				f.lines <- m
			}
		}
		close(f.lines)
	}()
	t.Cleanup(f.stop)
	return f
}

func (f *flood) next(t *testing.T, key string) map[string]any {
	t.Helper()
	select {
	case m, ok := <-f.lines:
		if !ok || m[key] == nil {
			t.Fatalf("tunnelflood: want a %q line, got %v (ok %v)", key, m, ok)
		}
		return m
	case <-time.After(2 * time.Minute):
		t.Fatalf("tunnelflood: no %q line", key)
	}
	return nil
}

func (f *flood) stop() {
	f.stdin.Close()
	f.p.Wait()
}

type memBastion struct {
	*harness.Proc
	pid     int
	addr    string
	hostKey harness.Key
}

// TestMemoryBoundedUnderTunnelFlood: in a 512 MiB cgroup, clients open
// 600 tunnels into a destination that never reads and fill every one; the
// bastion admits only what its budget can buffer (half of it per key),
// refuses the rest with "resource shortage", stays alive and serving, and
// hands the memory back once the clients leave.
func TestMemoryBoundedUnderTunnelFlood(t *testing.T) {
	t.Parallel()
	bin, _ := harness.Build(t)
	dir := t.TempDir()
	procs := memoryCgroup(t, 512<<20)
	keys := map[string]harness.Key{}
	var authorized strings.Builder
	for _, n := range []string{"alice", "bob", "carol", "dave"} {
		keys[n] = harness.Keygen(t, dir, n, "-t", "ecdsa")
		authorized.WriteString(keys[n].Pub + "\n")
	}
	hostKey := harness.Keygen(t, dir, "host")
	sink := sinkNeverReads(t)
	echo := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	cmd := exec.Command("sh", "-c", `echo $$ > "$1" && exec "$0"`, bin, procs)
	cmd.Env = harness.BaseEnv(map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED":  harness.B64(authorized.String()),
		"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": harness.B64(hostKey.PEM(t)),
		"BASTION_SSH_ADDR":                   "127.0.0.1:0",
		"BASTION_ALLOW":                      "127.0.0.1/32",
	})
	b := &memBastion{Proc: harness.Start(t, cmd), hostKey: hostKey}
	b.pid = cmd.Process.Pid
	started := b.Log.WaitFor(t, 30*time.Second, "bastion started", nil)
	b.addr = fmt.Sprint(started["ssh_addr"])
	budget := b.Log.WaitFor(t, 5*time.Second, "memory budget", map[string]string{"source": "cgroup", "limit_mib": "512"})
	maxTunnels := int(budget["max_tunnels"].(float64))
	perKey := maxTunnels / 2
	if maxTunnels < 100 || maxTunnels > 160 {
		t.Fatalf("max_tunnels %d for 512 MiB", maxTunnels)
	}
	baseline := vmRSS(t, b.pid)

	// alice and bob: 2 connections x 100 tunnels each; carol 1 x 100.
	var floods []*flood
	counts := map[string]map[string]any{}
	for _, spec := range []struct {
		who            string
		conns, tunnels int
	}{{"alice", 2, 100}, {"bob", 2, 100}, {"carol", 1, 100}} {
		f := startFlood(t, b, keys[spec.who], sink.Addr().String(), spec.conns, spec.tunnels)
		counts[spec.who] = f.next(t, "opened")
		floods = append(floods, f)
	}
	for _, f := range floods {
		f.next(t, "filled")
	}
	peak := vmRSS(t, b.pid)
	for _, who := range []string{"alice", "bob"} {
		if got := int(counts[who]["opened"].(float64)); got != perKey {
			t.Errorf("%s opened %d tunnels, want its share %d: %v", who, got, perKey, counts[who])
		}
	}
	if got := int(counts["carol"]["opened"].(float64)); got != maxTunnels-2*perKey {
		t.Errorf("carol opened %d tunnels, want what was left (%d): %v", got, maxTunnels-2*perKey, counts["carol"])
	}
	for who, c := range counts {
		for reason := range c["reasons"].(map[string]any) {
			if reason != "resource shortage" {
				t.Errorf("%s was refused with %q, want \"resource shortage\"", who, reason)
			}
		}
	}
	b.Log.WaitFor(t, 10*time.Second, "tunnel refused", map[string]string{"reason": "this key holds its share of tunnels"})
	b.Log.WaitFor(t, 10*time.Second, "tunnel refused", map[string]string{"reason": "tunnel limit reached (memory budget)"})

	// Alive and serving while full: a new key connects; its tunnel waits
	// for room.
	f := startFlood(t, b, keys["dave"], echo.Addr().String(), 1, 1)
	if c := f.next(t, "opened"); c["opened"].(float64) != 0 {
		t.Errorf("dave got a tunnel while the budget was full: %v", c)
	}
	f.stop()
	peak = max(peak, vmRSS(t, b.pid))
	for _, f := range floods {
		f.stop()
	}
	// Room again, and memory back.
	deadline := time.Now().Add(60 * time.Second)
	var rss int64
	for {
		rss = vmRSS(t, b.pid)
		if rss < 160<<20 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("max_tunnels %d (per key %d); RSS at start %d MiB, full %d MiB, after the clients left %d MiB",
		maxTunnels, perKey, baseline>>20, peak>>20, rss>>20)
	if rss >= 160<<20 {
		t.Errorf("RSS %d MiB 60 s after the clients left, want < 160 MiB", rss>>20)
	}
	f = startFlood(t, b, keys["dave"], echo.Addr().String(), 1, 1)
	if c := f.next(t, "opened"); c["opened"].(float64) != 1 {
		t.Errorf("dave could not open a tunnel after the flood: %v", c)
	}
}
