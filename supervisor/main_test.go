package supervisor

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bastion-dev/bastion/internal/logtest"
	"github.com/bastion-dev/bastion/internal/procfs"
)

// The tests that need a real init re-execute this test binary as PID 1 of a
// new PID namespace (unshare --pid --fork --mount-proc), under tini -s, or as
// a plain child. TestMain then runs the helper named by helperEnv in-process
// and exits; the helper prints "FAIL: …" lines and "METRIC name value" lines
// on stdout and exits non-zero on any failure.
const (
	helperEnv      = "SUPERVISOR_TEST_HELPER"
	launchBlockEnv = "SUPERVISOR_TEST_LAUNCH_BLOCKED"
)

// dropped are the variables every child must lose.
var dropped = []string{
	"SSH_PRIVATE_HOST_KEY_BASE64ENCODED",
	"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED",
	"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
	"AWS_CONTAINER_CREDENTIALS_FULL_URI",
	"AWS_CONTAINER_AUTHORIZATION_TOKEN",
	"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
}

func TestMain(m *testing.M) {
	if os.Getenv(launchBlockEnv) != "" {
		launchBlocked()
	}
	if mode := os.Getenv(helperEnv); mode != "" {
		fn := helpers[mode]
		if fn == nil {
			fmt.Printf("FAIL: unknown helper %q\n", mode)
			os.Exit(1)
		}
		h := &helper{}
		code := fn(h)
		if h.failed() && code == 0 {
			code = 1
		}
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// launchBlocked execs the rest of the command line (after "--") with
// SIGTERM, SIGUSR1 and SIGHUP blocked and SIGINT, SIGHUP and SIGUSR2
// ignored, so the init starts in the worst state a parent could leave it.
func launchBlocked() {
	runtime.LockOSThread()
	signal.Ignore(syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR2)
	var set unix.Sigset_t
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGUSR1, syscall.SIGHUP} {
		set.Val[(sig-1)/64] |= 1 << ((uint(sig) - 1) % 64)
	}
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &set, nil); err != nil {
		fmt.Printf("FAIL: block: %v\n", err)
		os.Exit(1)
	}
	os.Unsetenv(launchBlockEnv)
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	path, err := exec.LookPath(args[0])
	if err == nil {
		err = syscall.Exec(path, args, os.Environ())
	}
	fmt.Printf("FAIL: launch %q: %v\n", args, err)
	os.Exit(1)
}

var helpers = map[string]func(*helper) int{
	"orphans":   helperOrphans,
	"many":      helperMany,
	"childenv":  helperChildEnv,
	"badmarker": helperBadMarker,
	"sigterm":   helperSigterm,
	"sigint":    helperSigint,
	"stop":      helperStop,
	"sweep":     helperSweep,
	"refused":   helperRefused,
}

type helper struct {
	mu    sync.Mutex
	fails int
}

func (h *helper) failf(format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fails++
	fmt.Printf("FAIL: "+format+"\n", args...)
}

func (h *helper) failed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.fails > 0
}

func (h *helper) metric(name string, v any) { fmt.Printf("METRIC %s %v\n", name, v) }

// init does what cmd/bastion's main does: Setup, New, Run.
func (h *helper) init() *Supervisor {
	if err := Setup(SetupOptions{}); err != nil {
		h.failf("Setup: %v", err)
	}
	return h.start()
}

func (h *helper) start() *Supervisor {
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s := New(Options{Logger: log, DropEnv: dropped})
	go s.Run(context.Background())
	return s
}

func (h *helper) wait(c *Child, d time.Duration) bool {
	select {
	case <-c.Done():
		return true
	case <-time.After(d):
		h.failf("pid %d not reaped within %v", c.Pid(), d)
		return false
	}
}

// others lists the processes other than us that an init is answerable for:
// all of /proc as PID 1, our descendants otherwise.
func others() []procfs.Stat {
	procs, err := descendants(os.Getpid(), os.Getpid() == 1)
	if err != nil {
		panic(err)
	}
	return procs
}

// waitProcs polls others() until ok accepts it or d passes.
func waitProcs(d time.Duration, ok func([]procfs.Stat) bool) ([]procfs.Stat, bool) {
	end := time.Now().Add(d)
	for {
		p := others()
		if ok(p) {
			return p, true
		}
		if time.Now().After(end) {
			return p, false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func describe(procs []procfs.Stat) string {
	var b strings.Builder
	for _, p := range procs {
		fmt.Fprintf(&b, "[pid %d ppid %d state %c %s] ", p.PID, p.PPID, p.State, p.Comm)
	}
	return b.String()
}

func sh(script string) *exec.Cmd { return exec.Command("/bin/sh", "-c", script) }

// statusMask reads a hex mask line (SigBlk, SigIgn…) of /proc/<pid>/status.
func statusMask(pid int, field string) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// waitIgnores waits until pid ignores sig (a shell has run its trap).
func waitIgnores(pid int, sig syscall.Signal) bool {
	for range 500 {
		if m, err := statusMask(pid, "SigIgn"); err == nil && m&(1<<(uint(sig)-1)) != 0 {
			return true
		}
		time.Sleep(2 * time.Millisecond)
	}
	return false
}

// --- the parent side ---

type wrapper []string

var (
	asPID1    = wrapper{"unshare", "--pid", "--fork", "--mount-proc"}
	underTini = wrapper{"tini", "-s", "--"}
	plain     = wrapper{}
)

type run struct {
	code           int
	stdout, stderr string
	log            *logtest.Buffer // stderr: the supervisor's JSON log
	elapsed        time.Duration
}

// metric returns the last value printed for name (a re-executed helper
// prints twice).
func (r run) metric(name string) string {
	v := ""
	for _, line := range strings.Split(r.stdout, "\n") {
		if m, ok := strings.CutPrefix(line, "METRIC "+name+" "); ok {
			v = m
		}
	}
	return v
}

func helperCmd(t *testing.T, mode string, w wrapper, extraEnv ...string) *exec.Cmd {
	t.Helper()
	for _, tool := range w[:min(len(w), 1)] {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required for this test (apt-get install -y tini util-linux): %v", tool, err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{}, w...), self, "-test.run=^$")
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(append(os.Environ(), helperEnv+"="+mode), extraEnv...)
	return cmd
}

// runHelper runs a helper to completion and fails the test on FAIL lines or
// an unexpected exit code.
func runHelper(t *testing.T, mode string, w wrapper, wantCode int, extraEnv ...string) run {
	t.Helper()
	cmd := helperCmd(t, mode, w, extraEnv...)
	var out bytes.Buffer
	errb := &logtest.Buffer{}
	cmd.Stdout, cmd.Stderr = &out, errb
	start := time.Now()
	err := cmd.Run()
	r := run{stdout: out.String(), stderr: errb.String(), log: errb, elapsed: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run helper %s: %v", mode, err)
	}
	check(t, r, wantCode)
	return r
}

func check(t *testing.T, r run, wantCode int) {
	t.Helper()
	if r.code != wantCode || strings.Contains(r.stdout, "FAIL:") {
		t.Fatalf("helper exited %d (want %d) after %v\nstdout:\n%s\nstderr (tail):\n%s",
			r.code, wantCode, r.elapsed, r.stdout, tail(r.stderr, 4000))
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// initPid finds the PID-1 helper's pid in our namespace: unshare's child.
// Callers look only after the helper printed READY, and it then runs until
// they signal it, so it cannot be gone before the look.
func initPid(t *testing.T, unsharePid int) int {
	t.Helper()
	for range 500 {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", unsharePid, unsharePid))
		if f := strings.Fields(string(b)); len(f) > 0 {
			pid, err := strconv.Atoi(f[0])
			if err == nil {
				return pid
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no child of unshare %d", unsharePid)
	return 0
}

// lines delivers stdout lines of a running helper.
func lines(r io.Reader) <-chan string {
	ch := make(chan string, 16)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			ch <- sc.Text()
		}
	}()
	return ch
}

func expectLine(t *testing.T, ch <-chan string, want string, seen *[]string) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-ch:
			if !ok {
				t.Fatalf("helper ended before %q; output: %q", want, *seen)
			}
			*seen = append(*seen, l)
			if l == want {
				return
			}
		case <-timeout:
			t.Fatalf("no %q from helper; output: %q", want, *seen)
		}
	}
}
