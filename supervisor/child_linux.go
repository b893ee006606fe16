package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// killWait is how long Stop waits for the reaper after SIGKILL.
const killWait = 2 * time.Second

// Child is a process started by Supervisor.Start.
type Child struct {
	s      *Supervisor
	pid    int
	leader bool // leads its own process group: signals go to the group
	done   chan struct{}
	code   int  // valid once done is closed
	reaped bool // guarded by s.reapMu
	proc   *os.Process
}

// Start starts cmd as a supervised child, subscribing to its exit before
// cmd.Start so no exit is missed (containerd's Monitor.Start). It changes cmd:
//
//   - Env becomes (cmd.Env, or os.Environ() when nil) minus Options.DropEnv;
//   - SysProcAttr is copied, keeping what the caller set (Setpgid, Setsid…).
//
// The child starts with fds 0-2 plus cmd.ExtraFiles only (Setup marked
// inherited fds close-on-exec, Go opens its own so), an empty signal mask
// (Setup) and default dispositions (exec resets handled signals; nothing is
// SIG_IGN in this process).
//
// Callers must never call cmd.Wait or use cmd.Process: the Supervisor owns
// wait4, and a late Wait would only see ECHILD. Use Done, ExitCode, Signal
// and Stop. Stdin, Stdout and Stderr must be nil (/dev/null) or *os.File:
// for any other reader or writer exec.Cmd copies through goroutines that
// only finish in Wait (a caller that wants the output by line, as the SSM
// lifecycle does, passes a pipe's write end and reads the other). Commands
// from exec.CommandContext or with a WaitDelay are refused too: both only
// act in Wait.
func (s *Supervisor) Start(cmd *exec.Cmd) (*Child, error) {
	if cmd.Process != nil {
		return nil, errors.New("supervisor: start: command already started")
	}
	if cmd.Cancel != nil || cmd.WaitDelay != 0 {
		return nil, fmt.Errorf("supervisor: start %q: Cancel and WaitDelay need cmd.Wait; use Child.Stop", cmd.Path)
	}
	for _, std := range []struct {
		name string
		v    any
	}{{"stdin", cmd.Stdin}, {"stdout", cmd.Stdout}, {"stderr", cmd.Stderr}} {
		if _, ok := std.v.(*os.File); !ok && std.v != nil {
			return nil, fmt.Errorf("supervisor: start %q: %s must be nil or an *os.File", cmd.Path, std.name)
		}
	}
	env := cmd.Env
	if env == nil {
		env = os.Environ()
	}
	cmd.Env = s.filterEnv(env)
	attr := &syscall.SysProcAttr{}
	if cmd.SysProcAttr != nil {
		*attr = *cmd.SysProcAttr
	}
	cmd.SysProcAttr = attr

	c := &Child{
		s:      s,
		leader: attr.Setsid || (attr.Setpgid && attr.Pgid == 0),
		done:   make(chan struct{}),
	}

	// Shared hold: reap cannot run between fork and registration, so an exit
	// always finds its Child. It also keeps Go's own wait4 in forkExec (run
	// when exec fails after fork) from racing ours.
	s.reapMu.RLock()
	err := cmd.Start()
	if err == nil {
		c.pid = cmd.Process.Pid
		c.proc = cmd.Process
		s.mu.Lock()
		s.children[c.pid] = c
		s.mu.Unlock()
	}
	s.reapMu.RUnlock()
	if err != nil {
		return nil, fmt.Errorf("supervisor: start %q: %w", cmd.Path, err)
	}
	s.log.Debug("supervisor: started", "pid", c.pid, "path", cmd.Path, "pgroup_leader", c.leader)
	return c, nil
}

func (s *Supervisor) filterEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !s.drop[name] {
			out = append(out, kv)
		}
	}
	return out
}

// exited records the exit status; called by reap with reapMu held.
func (c *Child) exited(code int) {
	c.code = code
	c.reaped = true
	close(c.done)
	// Free the pidfd now rather than at GC; nothing may use cmd.Process.
	_ = c.proc.Release()
}

// Pid returns the child's process id.
func (c *Child) Pid() int { return c.pid }

// Done is closed when the supervisor has reaped the child.
func (c *Child) Done() <-chan struct{} { return c.done }

// ExitCode is the exit status, or 128+signal if the child was killed by a
// signal. It is -1 until Done is closed.
func (c *Child) ExitCode() int {
	select {
	case <-c.done:
		return c.code
	default:
		return -1
	}
}

// Signal sends sig to the child's process group when it leads its own group
// (Setpgid or Setsid), else to the child. A child that is already gone (ESRCH,
// or reaped and not a group leader) is not an error.
func (c *Child) Signal(sig syscall.Signal) error {
	c.s.reapMu.RLock()
	defer c.s.reapMu.RUnlock()
	target := c.pid
	if c.leader {
		// The group id cannot be handed out again while any member lives,
		// so this reaches the leftovers even after the leader was reaped;
		// once all are gone it is ESRCH unless the pids have wrapped around
		// (pid_max forks) in between.
		target = -c.pid
	} else if c.reaped {
		return nil // the pid may belong to someone else now
	}
	if err := unix.Kill(target, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("supervisor: signal %v to %d: %w", sig, target, err)
	}
	return nil
}

// killLead is the most Stop keeps between its SIGKILL and ctx's deadline.
const killLead = 100 * time.Millisecond

// Stop sends SIGTERM and SIGCONT (a stopped process cannot act on TERM), waits
// for the exit until shortly before ctx's deadline (a tenth of the time
// left, at most killLead), then sends SIGKILL and waits up to 2 s more.
// killed reports whether SIGKILL was needed.
func (c *Child) Stop(ctx context.Context) (killed bool, err error) {
	select {
	case <-c.done:
		return false, nil
	default:
	}
	if err := c.Signal(syscall.SIGTERM); err != nil {
		return false, err
	}
	if err := c.Signal(syscall.SIGCONT); err != nil {
		return false, err
	}
	// SIGKILL goes a little before ctx's deadline, so that the kill and
	// the reap also fit in it: the caller's next step starts on time.
	termCtx := ctx
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		termCtx, cancel = context.WithDeadline(ctx, dl.Add(-min(time.Until(dl)/10, killLead)))
		defer cancel()
	}
	if c.s.waitFor(termCtx, c.done) {
		return false, nil
	}
	c.s.log.Warn("supervisor: child ignored SIGTERM, killing", "pid", c.pid)
	if err := c.Signal(syscall.SIGKILL); err != nil {
		return true, err
	}
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killWait)
	defer cancel()
	if !c.s.waitFor(kctx, c.done) {
		return true, fmt.Errorf("supervisor: pid %d not reaped %v after SIGKILL", c.pid, killWait)
	}
	return true, nil
}
