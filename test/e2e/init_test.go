package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/internal/procfs"
	"github.com/bastion-dev/bastion/test/harness"
)

// nsProcs lists processes in the PID namespace of pid (host view) with
// their state and parent.
func nsProcs(t *testing.T, pid int) []procfs.Stat {
	t.Helper()
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	if err != nil {
		t.Fatalf("read pid ns of %d (process gone?): %v", pid, err)
	}
	all, err := procfs.All()
	if err != nil {
		t.Fatal(err)
	}
	var out []procfs.Stat
	for _, p := range all {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", p.PID)); err == nil && l == ns {
			out = append(out, p)
		}
	}
	return out
}

// TestPID1ReapsOrphans: processes orphaned inside the bastion's PID
// namespace are re-parented to it (it is PID 1) and reaped: no zombie left.
func TestPID1ReapsOrphans(t *testing.T) {
	t.Parallel()
	harness.RequireTools(t, "nsenter")
	dir := t.TempDir()
	user := harness.Keygen(t, dir, "user")
	b := harness.StartBastion(t, dir, harness.BastionOptions{Namespaced: true, Env: map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64(user.Pub),
	}})
	if l := b.Log.WaitFor(t, 5*time.Second, "bastion started", nil); fmt.Sprint(l["pid"]) != "1" {
		t.Fatalf("bastion is not PID 1 in its namespace: %v", l["pid"])
	}
	// 100 double-forked orphans: a third plain, a third in their own
	// process group, a third in their own session.
	// Output to /dev/null: a pipe held by the sleepers would keep
	// CombinedOutput waiting until they exit.
	script := `exec >/dev/null 2>&1; for i in $(seq 34); do (sleep 3 &); (setsid sleep 3 &); (sh -c 'set -m; sleep 3 &' &); done`
	cmd := exec.Command("nsenter", "-t", strconv.Itoa(b.Pid), "-p", "-m", "--", "sh", "-c", script)
	if err := cmd.Start(); err != nil {
		t.Fatalf("nsenter: %v", err)
	}
	spawned := make(chan error, 1)
	go func() { spawned <- cmd.Wait() }()
	// Watch from the first spawn (under load the loop can outlast the
	// first orphans) until every sleeper is gone: each must have been
	// adopted by bastion (PID 1) and reaped, leaving no zombie.
	adopted := map[int]bool{}
	deadline := time.Now().Add(30 * time.Second)
	done := false
	for {
		select {
		case err := <-spawned:
			if err != nil {
				t.Fatalf("nsenter: %v", err)
			}
			done = true
		default:
		}
		var zombies, sleepers int
		for _, p := range nsProcs(t, b.Pid) {
			if p.Comm == "sleep" {
				sleepers++
				if p.PPID == b.Pid {
					adopted[p.PID] = true
				}
			}
			if p.State == 'Z' && p.PID != b.Pid {
				zombies++
			}
		}
		if done && sleepers == 0 && zombies == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d zombies, %d sleepers left after the orphans' lifetime", zombies, sleepers)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(adopted) < 100 {
		t.Fatalf("only %d orphans were seen re-parented to bastion", len(adopted))
	}
	t.Logf("%d orphans adopted and reaped, no zombie left", len(adopted))
	b.Terminate()
	if code := b.Wait(10 * time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, b.Log.String())
	}
}

// TestSIGTERMDrain: as PID 1, SIGTERM (which would kill an unprepared Go
// program with status 2) starts the drain: new connections are refused at
// once, an open tunnel keeps working until the grace ends and is then cut,
// and the process exits 0 inside the budget.
func TestSIGTERMDrain(t *testing.T) {
	t.Parallel()
	echo := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	eport := echo.Addr().(*net.TCPAddr).Port
	s := newJump(t, func(int) string { return fmt.Sprintf("127.0.0.1:%d", eport) }, "", harness.BastionOptions{
		Namespaced: true,
		Env:        map[string]string{"BASTION_DRAIN_TIMEOUT": "3s", "BASTION_STOP_TIMEOUT": "10s"},
	})
	p, roundTrip := echoTunnel(t, s.config, eport)
	if err := roundTrip("before"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	b := s.bastion
	b.Terminate()
	b.Log.WaitFor(t, 2*time.Second, "sshd draining", nil)
	if c, err := net.DialTimeout("tcp", b.Addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("new connection accepted during drain")
	}
	time.Sleep(time.Second)
	if err := roundTrip("during drain"); err != nil {
		t.Fatalf("open tunnel stopped working during the grace: %v", err)
	}
	if code := b.Wait(12 * time.Second); code != 0 {
		t.Fatalf("exit %d:\n%s", code, b.Log.String())
	}
	took := time.Since(start)
	if took < 3*time.Second || took > 10*time.Second {
		t.Fatalf("stopped after %v; want the 3s grace and within the 10s budget", took)
	}
	if p.Wait(5*time.Second) == -1 {
		t.Fatalf("tunnel client still running after the grace")
	}
	sum := b.Log.WaitFor(t, time.Second, "sshd stopped", nil)
	if fmt.Sprint(sum["cut"]) != "1" {
		t.Fatalf("drain summary %v", sum)
	}
	b.Log.WaitFor(t, time.Second, "tunnel", map[string]string{"close_reason": "shutdown grace ended"})
	t.Logf("SIGTERM with an open tunnel: exit 0 after %v (grace 3s)", took.Round(time.Millisecond))
}

// TestRepeatedSignals: repeated SIGTERM does not restart the shutdown; a
// third SIGINT forces exit 130 while a drain is still waiting.
func TestRepeatedSignals(t *testing.T) {
	t.Parallel()
	echo := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	eport := echo.Addr().(*net.TCPAddr).Port
	for _, tc := range []struct {
		name  string
		sig   syscall.Signal
		want  int
		max   time.Duration
		lines map[string]int // the supervisor's line for each signal
	}{
		{"SIGTERM x3 drains once and exits 0", syscall.SIGTERM, 0, 8 * time.Second, map[string]int{
			msgShutdownRequested: 1, msgAlreadyShuttingDown: 2, msgForcing: 0}},
		{"SIGINT x3 forces exit 130", syscall.SIGINT, 130, 2 * time.Second, map[string]int{
			msgShutdownRequested: 1, msgAlreadyShuttingDown: 1, msgForcing: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newJump(t, func(int) string { return fmt.Sprintf("127.0.0.1:%d", eport) }, "", harness.BastionOptions{
				Namespaced: true,
				Env:        map[string]string{"BASTION_DRAIN_TIMEOUT": "4s", "BASTION_STOP_TIMEOUT": "10s"},
			})
			// Hold a tunnel so the drain waits its whole grace: an echo
			// through it proves it is open.
			_, roundTrip := echoTunnel(t, s.config, eport)
			if err := roundTrip("open"); err != nil {
				t.Fatal(err)
			}
			b := s.bastion
			start := time.Now()
			for i := 1; i <= 3; i++ {
				b.Kill(tc.sig)
				if i < 3 {
					// Pending signals of one number merge into one: send
					// the next only once this one was taken.
					waitSignalsTaken(t, b, i)
				}
			}
			code := b.Wait(12 * time.Second)
			if code != tc.want || time.Since(start) > tc.max {
				t.Fatalf("exit %d after %v, want %d within %v:\n%s", code, time.Since(start), tc.want, tc.max, b.Log.String())
			}
			if n := len(b.Log.Find("sshd draining", nil)); n != 1 {
				t.Fatalf("drain started %d times", n)
			}
			for msg, want := range tc.lines {
				if n := len(b.Log.Find(msg, nil)); n != want {
					t.Fatalf("%d %q lines, want %d:\n%s", n, msg, want, b.Log.String())
				}
			}
		})
	}
}

// The supervisor's log line for each SIGTERM or SIGINT it takes.
const (
	msgShutdownRequested   = "supervisor: shutdown requested"
	msgAlreadyShuttingDown = "supervisor: already shutting down"
	msgForcing             = "supervisor: third SIGINT, forcing exit"
)

// waitSignalsTaken waits until the supervisor has logged n shutdown signals.
func waitSignalsTaken(t *testing.T, b *harness.Bastion, n int) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("the bastion to log %d signals taken", n), 5*time.Second, func() bool {
		got := 0
		for _, msg := range []string{msgShutdownRequested, msgAlreadyShuttingDown, msgForcing} {
			got += len(b.Log.Find(msg, nil))
		}
		return got >= n
	})
}

// echoTunnel opens `ssh -W` through the bastion of config to the echo
// service on port and returns the client and a line round trip through it.
func echoTunnel(t *testing.T, config string, port int) (*harness.Proc, func(msg string) error) {
	t.Helper()
	cmd := exec.Command("ssh", "-F", config, "-W", fmt.Sprintf("127.0.0.1:%d", port), "bastion")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := harness.Start(t, cmd)
	t.Cleanup(func() { stdin.Close() })
	out := bufio.NewReader(stdout)
	return p, func(msg string) error {
		if _, err := io.WriteString(stdin, msg+"\n"); err != nil {
			return err
		}
		got, err := out.ReadString('\n')
		if err != nil {
			return err
		}
		if got != msg+"\n" {
			return fmt.Errorf("echo %q", got)
		}
		return nil
	}
}

// TestBadConfigAsPID1: a bad variable as PID 1 exits 78 (EX_CONFIG) at once.
func TestBadConfigAsPID1(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// The first test of a process builds the binary: time the bastion only.
	harness.Build(t)
	start := time.Now()
	b := harness.StartBastion(t, dir, harness.BastionOptions{Namespaced: true, NoWait: true, Env: map[string]string{
		"BASTION_ALLOW": "not a network",
	}})
	code := b.Wait(5 * time.Second)
	if code != 78 || time.Since(start) > 3*time.Second {
		t.Fatalf("exit %d after %v:\n%s", code, time.Since(start), b.Log.String())
	}
	if !strings.Contains(b.Log.String(), "ROOT_PUBLIC_SSH_KEY_BASE64ENCODED") && !strings.Contains(b.Log.String(), "BASTION_ALLOW") {
		t.Fatalf("no variable named:\n%s", b.Log.String())
	}
}

// TestSubreaperUnderTini: with tini as PID 1 (ECS initProcessEnabled,
// docker run --init) bastion is not PID 1; as a child subreaper it still
// adopts and reaps what its children orphan, and stops cleanly.
func TestSubreaperUnderTini(t *testing.T) {
	t.Parallel()
	harness.RequireTools(t, "tini")
	e := newSSMEnv(t, nil)
	b := e.startWith(t, map[string]string{"FAKE_AGENT_MODE": "orphans=100"}, []string{"tini", "-s", "--"})
	if l := b.Log.WaitFor(t, 5*time.Second, "bastion started", nil); fmt.Sprint(l["pid"]) == "1" {
		t.Fatalf("bastion is PID 1; want it under tini")
	}
	waitOnline(t, b)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bastion log:\n%s", b.Log.String())
		}
	})
	adopted := map[int]bool{}
	deadline := time.Now().Add(30 * time.Second)
	seen := false
	for {
		var zombies, sleepers int
		for _, p := range nsProcs(t, b.Pid) {
			if p.Comm == "sleep" {
				sleepers++
				seen = true
				if p.PPID == b.Pid {
					adopted[p.PID] = true
				}
			}
			if p.State == 'Z' {
				zombies++
			}
		}
		if seen && sleepers == 0 && zombies == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d zombies, %d sleepers left (adopted %d)", zombies, sleepers, len(adopted))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(adopted) < 100 {
		t.Fatalf("only %d orphans re-parented to bastion (subreaper); want 100", len(adopted))
	}
	b.Terminate()
	if code := b.Wait(25 * time.Second); code != 0 {
		t.Fatalf("exit %d under tini:\n%s", code, b.Log.String())
	}
	e.assertNoLeaks(t)
	t.Logf("under tini: %d orphans adopted by bastion (subreaper) and reaped; stop exit 0", len(adopted))
}
