// Package harness runs the real bastion binary and real peers (the OpenSSH
// client and server, TCP services) for end-to-end tests. Product code never
// imports it.
package harness

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/internal/logtest"
)

// RequireTools fails the test loudly when a peer it needs is missing:
// a skipped end-to-end test would pass silently.
func RequireTools(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("required tool %q not found on PATH (install it: .ci/run does): %v", n, err)
		}
	}
}

// RequireRoot fails unless the test runs as root (namespaces, sshd).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("this test needs root (PID/mount namespaces, sshd); run the suite as root as .ci/run does")
	}
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// ModuleRoot is the repository root.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// Build builds the bastion binary (and the fake agent with its stand-in
// session worker, side by side as the agent package installs them) once
// per test process, statically, as the contract's build command does.
func Build(t testing.TB) (bastion, fakeAgentDir string) {
	t.Helper()
	buildOnce.Do(func() {
		root := ModuleRoot(t)
		buildDir, buildErr = os.MkdirTemp("", "bastion-e2e-")
		if buildErr != nil {
			return
		}
		builds := []struct{ out, pkg string }{
			{filepath.Join(buildDir, "agent", "amazon-ssm-agent"), "./test/fakeagent"},
			{filepath.Join(buildDir, "agent", "ssm-session-worker"), "./test/fakesessionworker"},
		}
		if os.Getenv("BASTION_E2E_BINARY") == "" { // else that build stands in for this one
			builds = append(builds, struct{ out, pkg string }{filepath.Join(buildDir, "bastion"), "./cmd/bastion"})
		}
		for _, b := range builds {
			cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	if other := os.Getenv("BASTION_E2E_BINARY"); other != "" {
		// Another build of the binary (an older commit, to see a new test
		// fail on the code before its fix), with this tree's fakes.
		return other, filepath.Join(buildDir, "agent")
	}
	return filepath.Join(buildDir, "bastion"), filepath.Join(buildDir, "agent")
}

// tools are helper programs the tests build once per test process.
var (
	toolsMu  sync.Mutex
	toolsDir string
	tools    = map[string]*tool{}
)

type tool struct {
	once sync.Once
	path string
	err  error
}

// BuildTool builds a helper program once per test process, under a
// directory Cleanup removes: build returns the command that writes it to
// out (run from the module root). The test fails with build's output if it
// fails.
func BuildTool(t testing.TB, name string, build func(out string) *exec.Cmd) string {
	t.Helper()
	toolsMu.Lock()
	if toolsDir == "" {
		dir, err := os.MkdirTemp("", "bastion-tools-")
		if err != nil {
			toolsMu.Unlock()
			t.Fatal(err)
		}
		toolsDir = dir
	}
	tl := tools[name]
	if tl == nil {
		tl = &tool{path: filepath.Join(toolsDir, name)}
		tools[name] = tl
	}
	toolsMu.Unlock()
	tl.once.Do(func() {
		cmd := build(tl.path)
		cmd.Dir = ModuleRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			tl.err = fmt.Errorf("build %s: %v\n%s", name, err, out)
		}
	})
	if tl.err != nil {
		t.Fatal(tl.err)
	}
	return tl.path
}

// Cleanup removes the build directories; call from TestMain.
func Cleanup() {
	for _, dir := range []string{buildDir, toolsDir} {
		if dir != "" {
			os.RemoveAll(dir)
		}
	}
}

// Proc is a started process with its combined output.
type Proc struct {
	Cmd *exec.Cmd
	// Log is the process's output (stdout and stderr): bastion's JSON log.
	Log  *logtest.Buffer
	done chan struct{}
	err  error
}

// WaitLog waits up to timeout for a log record with msg and match and
// returns the first; the test fails if the process exits first or the
// time runs out, with the process's output.
func (p *Proc) WaitLog(t testing.TB, timeout time.Duration, msg string, match map[string]string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if found := p.Log.Find(msg, match); len(found) > 0 {
			return found[0]
		}
		select {
		case <-p.done:
			// Its output is all in by now (Wait copies it before
			// returning): the line may have come just before the exit.
			if found := p.Log.Find(msg, match); len(found) > 0 {
				return found[0]
			}
			t.Fatalf("%s exited before logging %q %v:\n%s", p.Cmd.Path, msg, match, p.Log.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s logged no %q %v within %v:\n%s", p.Cmd.Path, msg, match, timeout, p.Log.String())
		}
	}
}

// Start starts cmd with output captured (unless already redirected); it is killed (its process group)
// at test end if still running.
func Start(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	p := &Proc{Cmd: cmd, Log: &logtest.Buffer{}, done: make(chan struct{})}
	// Output the caller already took (StdoutPipe) stays with the caller.
	if cmd.Stdout == nil {
		cmd.Stdout = p.Log
	}
	if cmd.Stderr == nil {
		cmd.Stderr = p.Log
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	// Pdeathsig fires when the forking thread ends, not the process: a test
	// must never let a goroutine exit while locked to its thread.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		if t.Failed() {
			// What the process said, and whether it was still running, is
			// usually what explains a failure seen from outside it.
			state := "still running"
			select {
			case <-p.done:
				state = "exited: " + p.Cmd.ProcessState.String()
			default:
			}
			out := p.Log.String()
			if len(out) > 16<<10 {
				out = "…" + out[len(out)-16<<10:]
			}
			t.Logf("%s (pid %d) %s; its output:\n%s", filepath.Base(cmd.Path), cmd.Process.Pid, state, out)
		}
		select {
		case <-p.done:
		default:
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	})
	return p
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) { p.Cmd.Process.Signal(sig) }

// Wait waits up to timeout for exit and returns the exit code (-1 on
// timeout, 128+n when killed by signal n).
func (p *Proc) Wait(timeout time.Duration) int {
	select {
	case <-p.done:
	case <-time.After(timeout):
		return -1
	}
	ws, ok := p.Cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return p.Cmd.ProcessState.ExitCode()
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// FreePort returns a TCP port free on 127.0.0.1 at the time of the call.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// BaseEnv is the minimal environment the binary gets: the test process's
// own variables never leak in.
func BaseEnv(extra map[string]string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=/root"}
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	return env
}
