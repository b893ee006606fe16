package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bastion-dev/bastion/test/harness"
)

var netnsSeq atomic.Int32

// peerNetns makes a named network namespace for this test (removed at
// cleanup) and returns its name and a shell snippet that, run inside a new
// network namespace, links the two with a veth pair: the new namespace
// gets localCIDR on veth0 and the peer peerCIDR on veth1. The peer stands
// for another host of the VPC.
func peerNetns(t *testing.T, localCIDR, peerCIDR string) (name, script string) {
	t.Helper()
	name = newNetns(t)
	script = fmt.Sprintf("ip link set lo up; ip link add veth0 type veth peer name veth1 netns %[1]s; "+
		"ip addr add %[2]s dev veth0; ip link set veth0 up; "+
		"ip -n %[1]s addr add %[3]s dev veth1; ip -n %[1]s link set veth1 up; ", name, localCIDR, peerCIDR)
	return name, script
}

// newNetns makes a named network namespace with loopback up, removed at
// cleanup, and returns its name.
func newNetns(t *testing.T) string {
	t.Helper()
	harness.RequireRoot(t)
	harness.RequireTools(t, "ip")
	name := fmt.Sprintf("bastion-e2e-%d-%d", os.Getpid(), netnsSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v %s", err, out)
	}
	return name
}

// listenInNetnsPath opens a TCP listener inside the network namespace at
// path (/proc/PID/ns/net or /var/run/netns/NAME): the socket keeps its
// namespace after the thread that made it went back.
//
// The thread must go back and be unlocked, not be left locked for the
// runtime to discard: the harness starts processes with Pdeathsig, which
// fires when the forking *thread* ends, so a discarded thread would SIGKILL
// whatever other tests had started from it.
func listenInNetnsPath(t *testing.T, path, addr string) net.Listener {
	t.Helper()
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		target, err := os.Open(path)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("setns: %w", err)}
			return
		}
		ln, lerr := net.Listen("tcp", addr)
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Neither unlock (the thread is in the wrong namespace) nor
			// exit (see above): park it for the rest of the test process.
			ch <- result{err: fmt.Errorf("setns back: %w", err)}
			select {}
		}
		runtime.UnlockOSThread()
		ch <- result{ln, lerr}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("listen %s in the namespace %s: %v", addr, path, r.err)
	}
	return r.ln
}

// listenInNetns opens a TCP listener inside the network namespace of pid.
func listenInNetns(t *testing.T, pid int, addr string) net.Listener {
	t.Helper()
	return listenInNetnsPath(t, fmt.Sprintf("/proc/%d/ns/net", pid), addr)
}
