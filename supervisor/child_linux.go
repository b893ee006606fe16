package supervisor

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bastion-dev/bastion/internal/pipes"
)

// killWait is how long Stop waits for the reaper after SIGKILL.
const killWait = 2 * time.Second

// maxLine bounds one copied line; longer lines are passed on in pieces.
const maxLine = 64 << 10

// Child is a process started by Supervisor.Start.
type Child struct {
	s      *Supervisor
	pid    int
	leader bool // leads its own process group: signals go to the group
	done   chan struct{}
	code   int  // valid once done is closed
	reaped bool // guarded by s.reapMu
	proc   *os.Process

	outDone chan struct{}
}

// Start starts cmd as a supervised child, subscribing to its exit before
// cmd.Start so no exit is missed (containerd's Monitor.Start). It changes cmd:
//
//   - Env becomes (cmd.Env, or os.Environ() when nil) minus Options.DropEnv;
//   - SysProcAttr is copied, keeping what the caller set (Setpgid, Setsid…);
//   - a Stdout or Stderr that is not an *os.File is replaced by a pipe whose
//     lines a goroutine owned by the Child writes to the original writer,
//     each line in one Write. exec.Cmd's own copying goroutines would only
//     finish in cmd.Wait, after EOF, which never comes while a worker the
//     child left behind holds the pipe. Ours stop at EOF or OutputDelay
//     after the child is reaped, whichever is first; see OutputDone.
//
// The child starts with fds 0-2 plus cmd.ExtraFiles only (Setup marked
// inherited fds close-on-exec, Go opens its own so), an empty signal mask
// (Setup) and default dispositions (exec resets handled signals; nothing is
// SIG_IGN in this process).
//
// Callers must never call cmd.Wait or use cmd.Process: the Supervisor owns
// wait4, and a late Wait would only see ECHILD. Use Done, ExitCode, Signal
// and Stop. Stdin must be nil (/dev/null) or an *os.File, and commands from
// exec.CommandContext or with a WaitDelay are refused: both only act in Wait.
func (s *Supervisor) Start(cmd *exec.Cmd) (*Child, error) {
	if cmd.Process != nil {
		return nil, errors.New("supervisor: start: command already started")
	}
	if cmd.Cancel != nil || cmd.WaitDelay != 0 {
		return nil, fmt.Errorf("supervisor: start %q: Cancel and WaitDelay need cmd.Wait; use Child.Stop", cmd.Path)
	}
	if cmd.Stdin != nil {
		if _, ok := cmd.Stdin.(*os.File); !ok {
			return nil, fmt.Errorf("supervisor: start %q: stdin must be nil or an *os.File", cmd.Path)
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
		s:       s,
		leader:  attr.Setsid || (attr.Setpgid && attr.Pgid == 0),
		done:    make(chan struct{}),
		outDone: make(chan struct{}),
	}
	copies, err := c.pipeOutput(cmd)
	if err != nil {
		return nil, err
	}

	// Shared hold: reap cannot run between fork and registration, so an exit
	// always finds its Child. It also keeps Go's own wait4 in forkExec (run
	// when exec fails after fork) from racing ours.
	s.reapMu.RLock()
	err = cmd.Start()
	if err == nil {
		c.pid = cmd.Process.Pid
		c.proc = cmd.Process
		s.mu.Lock()
		s.children[c.pid] = c
		s.mu.Unlock()
	}
	s.reapMu.RUnlock()

	for _, p := range copies {
		p.w.Close() // the child has its copy
	}
	if err != nil {
		for _, p := range copies {
			p.r.Close()
		}
		return nil, fmt.Errorf("supervisor: start %q: %w", cmd.Path, err)
	}
	c.copyOutput(copies)
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

// OutputDone is closed when the output copying set up by Start has ended:
// at EOF, or OutputDelay after the child was reaped. It is closed at once
// when the child writes straight to *os.File outputs.
func (c *Child) OutputDone() <-chan struct{} { return c.outDone }

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

// Stop sends SIGTERM and SIGCONT (a stopped process cannot act on TERM), waits
// for the exit until ctx ends, then sends SIGKILL and waits up to 2 s more.
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
	if c.s.waitFor(ctx, c.done) {
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

type pipeCopy struct {
	r, w *os.File
	dst  io.Writer
}

// pipeOutput replaces non-*os.File outputs with pipes. Stdout and Stderr that
// are the same writer share one pipe, as in exec.Cmd, so lines never
// interleave mid-line.
func (c *Child) pipeOutput(cmd *exec.Cmd) ([]pipeCopy, error) {
	var copies []pipeCopy
	isFile := func(w io.Writer) bool {
		_, ok := w.(*os.File)
		return w == nil || ok
	}
	newPipe := func(dst io.Writer) (*os.File, error) {
		r, w, err := os.Pipe()
		if err != nil {
			for _, p := range copies {
				p.r.Close()
				p.w.Close()
			}
			return nil, fmt.Errorf("supervisor: output pipe: %w", err)
		}
		copies = append(copies, pipeCopy{r: r, w: w, dst: dst})
		return w, nil
	}
	origOut := cmd.Stdout
	if !isFile(cmd.Stdout) {
		w, err := newPipe(cmd.Stdout)
		if err != nil {
			return nil, err
		}
		cmd.Stdout = w
	}
	if !isFile(cmd.Stderr) {
		if len(copies) == 1 && sameWriter(cmd.Stderr, origOut) {
			cmd.Stderr = cmd.Stdout
		} else {
			w, err := newPipe(cmd.Stderr)
			if err != nil {
				return nil, err
			}
			cmd.Stderr = w
		}
	}
	return copies, nil
}

// sameWriter compares two writers whose dynamic types may not be comparable.
func sameWriter(a, b io.Writer) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

// copyOutput starts one line copier per pipe and closes outDone when all
// are finished.
func (c *Child) copyOutput(copies []pipeCopy) {
	if len(copies) == 0 {
		close(c.outDone)
		return
	}
	var wg sync.WaitGroup
	for _, p := range copies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.copyLines(p.r, p.dst)
		}()
	}
	go func() {
		wg.Wait()
		close(c.outDone)
	}()
}

// copyLines copies r to dst line by line until EOF, or until OutputDelay after
// the child was reaped: then a read deadline (os.Pipe files are pollable)
// ends the blocking read, what is already in the pipe is copied, and the
// pipe is closed. Later writes by leftover processes get EPIPE, as with
// exec.Cmd.WaitDelay.
func (c *Child) copyLines(r *os.File, dst io.Writer) {
	finished := make(chan struct{})
	defer close(finished)
	defer r.Close()
	go func() {
		select {
		case <-c.done:
		case <-finished:
			return
		}
		t := time.NewTimer(c.s.outputDelay)
		defer t.Stop()
		select {
		case <-t.C:
			_ = r.SetReadDeadline(time.Now())
		case <-finished:
		}
	}()
	write := func(b []byte) {
		if len(b) == 0 {
			return
		}
		if _, werr := dst.Write(b); werr != nil {
			c.s.log.Debug("supervisor: child output dropped", "pid", c.pid, "err", werr)
		}
	}
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, err := br.ReadSlice('\n')
		if err == nil || errors.Is(err, bufio.ErrBufferFull) {
			write(line)
			continue
		}
		rest := append([]byte(nil), line...) // all that was buffered
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The child was reaped, so all it wrote is in the pipe already;
			// take that without waiting for the writers it left behind.
			rest = append(rest, pipes.ReadBuffered(r, pipes.DrainLimit)...)
		}
		for len(rest) > 0 {
			n := bytes.IndexByte(rest, '\n') + 1
			if n == 0 || n > maxLine {
				n = min(len(rest), maxLine)
			}
			write(rest[:n])
			rest = rest[n:]
		}
		return
	}
}
