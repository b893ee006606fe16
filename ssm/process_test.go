package ssm

import (
	"context"
	"io"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/internal/logtest"
)

// testCode stands for an activation code in tests that run a shell as the
// agent.
const testCode = "SECRETCODE0123456789abcdef"

// shellStarter runs script with /bin/sh in place of the agent, keeping the
// pipe and process attributes the lifecycle set. Only tests call Wait.
type shellStarter struct {
	t      *testing.T
	script string
	mu     sync.Mutex
	pgids  []int
}

type shellProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	code int
}

func (s *shellStarter) Start(cmd *exec.Cmd) (Process, error) {
	cmd.Path = "/bin/sh"
	cmd.Args = append([]string{"sh", "-c", s.script}, cmd.Args...) // $0 = agent, $@ = its flags
	cmd.Err = nil
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	pid := cmd.Process.Pid
	s.t.Cleanup(func() { syscall.Kill(-pid, syscall.SIGKILL) })
	pgid, err := syscall.Getpgid(pid)
	if err != nil {
		s.t.Error(err)
	}
	s.mu.Lock()
	s.pgids = append(s.pgids, pgid-pid)
	s.mu.Unlock()
	p := &shellProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		p.code = cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	return p, nil
}

func (p *shellProc) Pid() int                        { return p.cmd.Process.Pid }
func (p *shellProc) Done() <-chan struct{}           { return p.done }
func (p *shellProc) ExitCode() int                   { <-p.done; return p.code }
func (p *shellProc) Signal(sig syscall.Signal) error { return syscall.Kill(p.Pid(), sig) }
func (p *shellProc) Stop(ctx context.Context) (bool, error) {
	syscall.Kill(-p.Pid(), syscall.SIGTERM)
	select {
	case <-p.done:
		return false, nil
	case <-ctx.Done():
		syscall.Kill(-p.Pid(), syscall.SIGKILL)
		<-p.done
		return true, nil
	}
}

// TestStartLoggedRealProcess runs a real child whose grandchild keeps the
// output pipe open: reading must stop shortly after the child is reaped,
// each line must be one record, and the redacted string must not appear.
func TestStartLoggedRealProcess(t *testing.T) {
	log, logs := logtest.New(slog.LevelInfo)
	st := &shellStarter{t: t, script: `echo "2025-01-02 03:04:05.0000 INFO first"
echo "2025-01-02 03:04:05.0000 ERROR code=` + testCode + `" >&2
printf 'no newline at end'
(sleep 30 &)
exit 3`}
	l := New(Config{}, Clients{}, st, log)
	l.drainDelay = 50 * time.Millisecond
	var lines []string
	p, out, err := l.startLogged(exec.Command("/nonexistent/amazon-ssm-agent"), "register", testCode, func(s string) { lines = append(lines, s) })
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-out:
	case <-time.After(5 * time.Second):
		t.Fatal("output reading did not stop after the child was reaped")
	}
	if p.ExitCode() != 3 {
		t.Errorf("exit code %d", p.ExitCode())
	}
	want := []string{
		"2025-01-02 03:04:05.0000 INFO first",
		"2025-01-02 03:04:05.0000 ERROR code=[redacted]",
		"no newline at end",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("lines = %q, want %q", lines, want)
	}
	if strings.Contains(logs.String(), testCode) {
		t.Errorf("code logged")
	}
	recs := logs.Records()
	if len(recs) != 3 || recs[1]["level"] != "ERROR" || recs[0]["agent"] != want[0] || recs[0]["step"] != "register" {
		t.Errorf("records = %v", recs)
	}
	if len(st.pgids) != 1 || st.pgids[0] != 0 {
		t.Errorf("child not in its own process group: pgid-pid %v", st.pgids)
	}
}

// TestRegisterRealProcess drives register with a shell script that plays
// the agent: it writes the registration file and prints the success line.
func TestRegisterRealProcess(t *testing.T) {
	h := newHarness(t, nil)
	h.l.start = &shellStarter{t: t, script: `
set -e
case " $* " in *" -y "*) ;; *) echo "Registration failed due to EOF"; exit 1;; esac
mkdir -p "$ROOT/var/lib/amazon/ssm"
printf '{"ManagedInstanceID":"mi-0123456789abcdef0","Region":"us-east-1"}' > "$ROOT/var/lib/amazon/ssm/registration"
echo "2025-01-02 03:04:05.0000 INFO Successfully registered the instance with AWS SSM using Managed instance-id: mi-0123456789abcdef0"
`}
	t.Setenv("ROOT", h.root)
	h.l.agentPath = h.agent
	id, err := h.l.register(context.Background(), &activation{id: "act-1", code: testCode})
	if err != nil || id != "mi-0123456789abcdef0" {
		t.Fatalf("register = %q, %v\n%s", id, err, h.logs)
	}
}

// TestStartLoggedKeepsOutputOfExitedChild: what the child wrote before it
// exited is read even when reading is cut at once (drainDelay 0) and a
// grandchild keeps the pipe open, so EOF never comes. Reading it depends on
// nothing being scheduled in time: this once lost the agent's "Successfully
// registered" line under load.
func TestStartLoggedKeepsOutputOfExitedChild(t *testing.T) {
	const lines = 300
	for run := 0; run < 20; run++ {
		st := &shellStarter{t: t, script: `i=0; while [ $i -lt ` + strconv.Itoa(lines) + ` ]; do echo "2025-01-02 03:04:05.0000 INFO line $i"; i=$((i+1)); done
(sleep 30 &)
printf 'last, no newline'`}
		l := New(Config{}, Clients{}, st, slog.New(slog.NewJSONHandler(io.Discard, nil)))
		l.drainDelay = 0
		var got []string
		_, out, err := l.startLogged(exec.Command("/nonexistent/amazon-ssm-agent"), "register", "", func(s string) { got = append(got, s) })
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-out:
		case <-time.After(10 * time.Second):
			t.Fatal("output reading did not stop after the child was reaped")
		}
		if len(got) != lines+1 || got[0] != "2025-01-02 03:04:05.0000 INFO line 0" || got[lines] != "last, no newline" {
			t.Fatalf("run %d: %d lines, first %q, last %q", run, len(got), first(got), last(got))
		}
		for i := 0; i < lines; i++ {
			if want := "2025-01-02 03:04:05.0000 INFO line " + strconv.Itoa(i); got[i] != want {
				t.Fatalf("run %d: line %d = %q, want %q", run, i, got[i], want)
			}
		}
	}
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

func last(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[len(s)-1]
}
