package ssm

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/bastion-dev/bastion/internal/pipes"
)

// Process is a child started through a Starter. Its owner (the supervisor)
// reaps it; the lifecycle never calls exec.Cmd.Wait.
type Process interface {
	// Pid is the child's process id; with Setpgid it is also its process
	// group id.
	Pid() int
	// Done is closed once the child has been reaped.
	Done() <-chan struct{}
	// ExitCode is valid after Done: the exit status, or 128+signal.
	ExitCode() int
	// Signal sends sig to the child.
	Signal(sig syscall.Signal) error
	// Stop sends SIGTERM to the child's process group, waits for the child
	// until ctx is done, then sends SIGKILL; killed reports the latter.
	Stop(ctx context.Context) (killed bool, err error)
}

// Starter starts cmd as a supervised child. It decides the child's
// environment (secrets scrubbed) when cmd.Env is nil; it must not log
// cmd.Args, which carry the activation code during registration.
type Starter interface {
	Start(cmd *exec.Cmd) (Process, error)
}

// Lines of the agent's output that the lifecycle recognises
// (core/agent_parser.go).
const (
	registeredMarker = "Successfully registered the instance with AWS SSM using Managed instance-id: "
	regFailedMarker  = "Registration failed due to "
)

// drainDelay is how long output is still read after the child has been
// reaped: the pipe's write end may be held by workers that outlive it, so
// EOF is never waited for unconditionally.
const drainDelay = 500 * time.Millisecond

// startLogged starts cmd in its own process group with stdout and stderr on
// a pipe owned here. Each output line becomes one log record (field
// "agent"), with redact (if not empty) masked, and is passed to onLine (if
// not nil) from the reading goroutine. The returned channel is closed when
// reading has stopped: at EOF, or l.drainDelay after the child was reaped.
func (l *Lifecycle) startLogged(cmd *exec.Cmd, step, redact string, onLine func(string)) (Process, <-chan struct{}, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	cmd.Stdin = nil
	cmd.Stdout = w
	cmd.Stderr = w
	ownProcessGroup(cmd)
	p, err := l.start.Start(cmd)
	w.Close() // the child has its own copy
	if err != nil {
		r.Close()
		return nil, nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer r.Close()
		emit := func(line string) { l.agentLine(step, line, redact, onLine) }
		br := bufio.NewReaderSize(r, 64<<10)
		for {
			chunk, err := br.ReadSlice('\n')
			if err == nil || errors.Is(err, bufio.ErrBufferFull) {
				// An overlong line is logged in pieces.
				emit(string(chunk))
				continue
			}
			rest := string(chunk) // all that was buffered
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// The child was reaped, so everything it wrote is already in
				// the pipe: take that without waiting for the writers it
				// left behind.
				rest += string(pipes.ReadBuffered(r, pipes.DrainLimit))
			}
			for _, line := range strings.SplitAfter(rest, "\n") {
				emit(line)
			}
			return
		}
	}()
	go func() {
		select {
		case <-p.Done():
		case <-done:
			return
		}
		t := time.NewTimer(l.drainDelay)
		defer t.Stop()
		select {
		case <-t.C:
			r.SetReadDeadline(time.Unix(1, 0)) // unblocks the reader
		case <-done:
		}
	}()
	return p, done, nil
}

// agentLine logs one line of the agent's output at a level guessed from
// its seelog level word.
func (l *Lifecycle) agentLine(step, line, redact string, onLine func(string)) {
	line = strings.TrimRight(line, "\r\n")
	if redact != "" {
		line = strings.ReplaceAll(line, redact, "[redacted]")
	}
	if strings.TrimSpace(line) == "" {
		return
	}
	level := slog.LevelInfo
	switch {
	case strings.Contains(line, " ERROR ") || strings.Contains(line, " CRITICAL "):
		level = slog.LevelError
	case strings.Contains(line, " WARN "):
		level = slog.LevelWarn
	case strings.Contains(line, " DEBUG "):
		level = slog.LevelDebug
	}
	l.log.Log(context.Background(), level, "agent output", "step", step, "agent", line)
	if onLine != nil {
		onLine(line)
	}
}
